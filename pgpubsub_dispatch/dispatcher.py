"""The :class:`Dispatcher`: the public API, and the callers' side of the command queue.

Every public method runs on the caller's thread. It checks its arguments, then either records
the change (the dispatcher is not running), or queues a command, wakes the dispatcher thread
and waits on the command's future. A call made on the dispatcher thread itself (from a handler
or a lifecycle-signal receiver) runs in place instead (``Loop.run_in_place``), so handlers can
``notify``, ``listen``, ``unsubscribe`` or ``stop`` without deadlocking.

The rest lives in rooms of its own, each saying which thread runs it: ``_options`` (checked
configuration), ``_control`` (state, queue and wake-up shared with the thread), ``_routing``
(channels and handlers), ``_commands`` (what each command does), ``_session`` (the connection),
``_loop`` (the dispatcher thread), ``_delivery`` (calling handlers), ``_stats`` (counters).

PostgreSQL documentation relied on: NOTIFY, LISTEN, UNLISTEN (delivery at commit, session scope,
folding of identical notifications in one transaction), ``pg_listening_channels()`` (System
Information Functions) and libpq's asynchronous command processing and keepalive parameters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal, TypeVar, overload

import blinker

from . import _fork, _timeouts
from ._adapters import Decode, adapt
from ._commands import (
    Command,
    Listen,
    Notify,
    QueueUsage,
    Subscribe,
    Unlisten,
    Unsubscribe,
)
from ._control import Control, State
from ._loop import Loop
from ._names import check_channel
from ._options import Options
from ._routing import Handler, Routes
from ._stats import Counters, DispatcherStats
from ._waiting import Waker
from .errors import DispatcherStopped, NotConnected
from .gapless._commands import GaplessNotify, batched
from .gapless._config import Config, config_from
from .gapless._sequencer import Sequencer
from .notification import DecodedNotification, Notification
from .streams import NotificationStream

__all__ = ["Dispatcher", "DispatcherStats"]

log = logging.getLogger("pgpubsub_dispatch")

H = TypeVar("H", bound=Callable[[Notification], object])
"""A handler: called with a :class:`Notification` (``async def`` handlers too)."""

D = TypeVar("D", bound=Callable[[DecodedNotification[Any]], object])
"""A handler subscribed with ``decode=``: called with a :class:`DecodedNotification`."""

_IDLE, _STARTING, _RUNNING = State.IDLE, State.STARTING, State.RUNNING
_FORKED, _INHERITED = State.FORKED, State.INHERITED

_FORKED_MESSAGE = (
    "this Dispatcher was started in a parent process and inherited through fork() with an "
    "executor, whose threads stayed in the parent: create a new Dispatcher in the child"
)


class Dispatcher:
    """Route PostgreSQL notifications to per-channel blinker signals, from one thread.

    ``Dispatcher(dsn=None, /, *, reconnect=True, ..., **connect_kwargs)`` takes the arguments
    of :func:`psycopg2.connect`: a libpq connection string or URI, keyword parameters, or both
    (keywords win); with neither, libpq reads its environment (``PGHOST``, ``PGDATABASE``, ...).
    Multi-host strings (``host=a,b port=5432,5433 target_session_attrs=read-write``) work: each
    reconnection tries the hosts in order. TCP keepalives are switched on unless the DSN or
    keywords set them (``keepalives_idle=10``, ``keepalives_interval=5``, ``keepalives_count=3``,
    ``tcp_user_timeout=30000`` ms). Nothing connects until :meth:`start`.

    Every method may be called from any thread, including from a handler (it then runs in
    place on the dispatcher thread).

    :param dsn: libpq connection string or URI, or ``None``.
    :param reconnect: reconnect when the connection is lost (default). When ``False``, a lost
        connection stops the dispatcher (``disconnected`` is sent with the error).
    :param backoff_min: seconds before the first reconnection attempt (default 0.1); each
        failure doubles the delay; every pause is randomly between half and all of it.
    :param backoff_max: the longest delay between attempts, in seconds (default 30).
    :param heartbeat_interval: every this many seconds, busy or idle, the dispatcher checks
        its session with one query of ``pg_listening_channels()`` and
        ``pg_notification_queue_usage()`` (default 10); ``None`` disables it.
    :param heartbeat_timeout: seconds that check may take before the connection is declared
        dead and replaced (default 5). A command of the caller's that makes no progress for
        ``heartbeat_interval + heartbeat_timeout`` seconds is also taken as a dead connection.
    :param executor: a :class:`concurrent.futures.Executor` to run handlers on, off the
        dispatcher thread, so a slow handler never delays receipt. Each channel's
        notifications are still handled one at a time, in arrival order; different channels
        run in parallel. ``None`` (default) runs handlers on the dispatcher thread. The
        executor stays the caller's to shut down.
    :param max_pending: with an ``executor``, the most notifications waiting for it (default
        10,000). When reached, the dispatcher applies backpressure: it stops reading
        notifications from the server (which keeps them in its queue) until handlers catch up,
        so it holds at most ``max_pending`` notifications plus one read of the socket. Nothing
        is dropped. Meanwhile nothing runs on the listening session: ``notify`` and
        ``queue_usage`` use a second connection (opened on first need), ``unlisten`` and
        ``unsubscribe`` take effect at once, ``listen`` and ``subscribe`` wait for
        backpressure to end, and the heartbeat waits too. A handler on the executor never
        waits for the listening session (its channel changes return at once).
    :param queue_warning: the fraction of the server's notification queue in use
        (``pg_notification_queue_usage()``, checked by each heartbeat) above which a warning
        is logged (default 0.5).
    :param gapless: gap-free channels (see :mod:`pgpubsub_dispatch.gapless`): a list of channel
        names, or a :class:`gapless.Config <pgpubsub_dispatch.gapless.Config>` (start
        positions, schema, reader name, retention window). On them ``notify`` writes through
        the log, and handlers get each notification exactly once, in commit order, across
        reconnections. ``None`` (default): none, at no cost to plain channels.
    :param connect_kwargs: libpq parameters (``host``, ``dbname``, ``user``, ``connect_timeout``,
        ...) as for :func:`psycopg2.connect`. ``connect_timeout`` (default 10) bounds each
        connection attempt.
    :raises TypeError: if ``dsn`` is not a ``str`` or ``None``, or a keyword is one the
        dispatcher sets itself (``async_``, ``connection_factory``).
    :raises ValueError: if an interval is not a positive number of seconds, or
        ``backoff_min > backoff_max``.
    """

    def __init__(
        self,
        dsn: str | None = None,
        /,
        *,
        reconnect: bool = True,
        backoff_min: float = 0.1,
        backoff_max: float = 30.0,
        heartbeat_interval: float | None = 10.0,
        heartbeat_timeout: float = 5.0,
        executor: Executor | None = None,
        max_pending: int = 10_000,
        queue_warning: float = 0.5,
        gapless: Iterable[str] | Config | None = None,
        **connect_kwargs: Any,
    ) -> None:
        self._options = Options.build(
            dsn,
            connect_kwargs,
            reconnect=reconnect,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            executor=executor,
            max_pending=max_pending,
            queue_warning=queue_warning,
        )
        # Thread contracts: see _control (lifecycle, queue), _routing (channels, handlers),
        # _stats (counters), _loop (everything the dispatcher thread owns). The set of open
        # streams is guarded by _control.lock.
        self._control = Control()
        self._routes = Routes()
        self._counters = Counters()
        self._loop = Loop(
            self, self._options, self._control, self._routes, self._counters, self._close_streams
        )
        self._streams: set[NotificationStream] = set()
        self._gapless = config_from(gapless)
        self._sequencer = (
            None
            if self._gapless is None
            else Sequencer(
                self, self._gapless, self._control, self._routes, self._loop.delivery.pending
            )
        )
        self._loop.delivery.sequencer = self._sequencer
        _fork.track(self)

    # ------------------------------------------------------------------ public, any thread

    def __repr__(self) -> str:
        return f"<Dispatcher {self._control.state.value} channels={sorted(self.channels)!r}>"

    def __enter__(self) -> Dispatcher:
        """Start the dispatcher (see :meth:`start`) and return it."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the dispatcher (see :meth:`stop`)."""
        self.stop()

    @property
    def running(self) -> bool:
        """``True`` between a successful :meth:`start` and :meth:`stop`, reconnecting included.

        ``False`` after a lost connection when ``reconnect=False``. In a child process that
        inherited a running dispatcher through ``fork()``, ``True``: its first use starts the
        child's own session.
        """
        return self._control.state in (State.RUNNING, State.INHERITED)

    @property
    def connected(self) -> bool:
        """``True`` while a server session is up (``False`` while reconnecting)."""
        return self._control.backend_pid is not None

    @property
    def backend_pid(self) -> int | None:
        """The ``int`` pid of the current server session, or ``None`` when not connected."""
        return self._control.backend_pid

    @property
    def channels(self) -> frozenset[str]:
        """The ``frozenset[str]`` of channels listened to (or to be, at the next connection)."""
        return self._routes.wanted

    def stats(self) -> DispatcherStats:
        """Return a :class:`DispatcherStats` snapshot of the counters; cheap, any thread."""
        counters, delivery = self._counters, self._loop.delivery
        return DispatcherStats(
            received=counters.received,
            dispatched=counters.dispatched,
            dropped=counters.dropped,
            handler_errors=counters.handler_errors,
            reconnects=counters.reconnects,
            last_error=counters.last_error,
            backend_pid=self._control.backend_pid,
            queue_usage=counters.queue_usage,
            held=len(self._loop.held),
            pending=delivery.waiting_for_executor,
            backpressure=delivery.backpressure,
            handler_dropped=counters.handler_dropped,
            deaf=counters.deaf,
            pooler=counters.pooler,
            gapless_stale=0 if self._sequencer is None else self._sequencer.stale,
        )

    def start(self, timeout: float | None = None) -> Dispatcher:
        """Connect, LISTEN every recorded channel, and return once notifications flow.

        A notification committed by anyone after this returns is delivered. ``connected`` is
        sent (on the dispatcher thread) before it returns. The first connection is not
        retried: if it fails, the error is raised here.

        In a child process that inherited a running dispatcher through ``fork()``, it starts
        the child's own session (as the first use of any method would).

        :param timeout: seconds to allow for connecting and LISTENing; ``None`` allows the
            ``connect_timeout`` connection parameter when given, else 10 seconds per attempt.
        :returns: ``self``, so that ``bus = Dispatcher(dsn).start()`` works.

        :raises RuntimeError: if the dispatcher is already running or starting (a dispatcher
            still stopping, after ``stop()`` from a handler, is waited for first).
        :raises DispatcherStopped: in a child process that inherited it through ``fork()``
            with an ``executor``, or if ``stop()`` is called while starting.
        :raises psycopg2.OperationalError: if the connection attempt fails (then no thread is
            left running); any ``psycopg2.Error`` if a LISTEN fails, or the first read of a
            gap-free channel (e.g. its log is not installed: then it is stopped again).
        :raises DeafSession: if a notification sent from another session does not arrive (a
            pooler in transaction mode: LISTEN needs session pooling); nothing is left running.
        :raises InvalidChannelName: if a recorded channel cannot be represented in the
            database encoding.
        :raises TimeoutError: if ``timeout`` passes first.
        """
        deadline = _timeouts.deadline(_timeouts.check_timeout(timeout))
        self._join_stopping_thread(deadline)
        self._launch(deadline, inherited_only=False)
        return self

    def _launch(self, deadline: float | None, *, inherited_only: bool) -> None:
        """Start the thread and wait until it listens (``start()``, or a child's first use).

        With ``inherited_only``, only a dispatcher inherited through fork() is started (and
        another thread that started it first is not an error); one that fails to start stays
        inherited, so the next use tries again.
        """
        control = self._control
        with control.lock:
            if control.state is State.FORKED:
                raise DispatcherStopped(_FORKED_MESSAGE)
            if inherited_only and control.state is not State.INHERITED:
                return
            if control.state not in (State.IDLE, State.INHERITED):
                raise RuntimeError(f"the dispatcher is {control.state.value}; stop() it first")
            control.state = State.STARTING
            control.stop_requested = False
            control.queue.clear()
            control.waker = Waker()
            started: Future[None] = Future()
            thread = threading.Thread(
                target=self._loop.main,
                args=(started, deadline),
                name=f"pgpubsub-dispatch-{id(self):x}",
                daemon=True,
            )
            control.thread = thread
            thread.start()
        try:
            started.result()
        except BaseException:
            if not started.done():  # interrupted here (KeyboardInterrupt): end the attempt
                self._request_stop()
            thread.join()
            if inherited_only:
                with control.lock:
                    if control.state is State.IDLE:
                        control.state = State.INHERITED
            raise
        self._gapless_ready(self.channels, deadline, raise_failure=True)

    def stop(self, timeout: float | None = None) -> None:
        """UNLISTEN, close the connection and end the thread; return when it has ended.

        Idempotent, safe before :meth:`start`, from several threads at once, and from a handler
        (then it only asks the thread to stop after the handler returns, and returns at once).
        Calls waiting on the queue fail with :class:`DispatcherStopped`. Handlers, signals and
        channels are kept: a later :meth:`start` listens to the same channels again.

        :param timeout: seconds to wait for the thread to end; ``None`` (or infinity) waits as
            long as it takes (a handler that never returns then blocks it). When it passes, a
            warning is logged and the thread, a daemon, ends on its own.
        :raises ValueError: if ``timeout`` is negative or NaN (nothing is done).
        :raises TypeError: if ``timeout`` is not a number.
        """
        timeout = _timeouts.check_timeout(timeout)
        thread = self._request_stop()
        if thread is None:
            return  # never started, already stopped, or inherited through fork()
        if threading.get_ident() == thread.ident:
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("stop(): the dispatcher thread did not end within %s s", timeout)

    def listen(self, channel: str, timeout: float | None = None) -> None:
        """LISTEN to ``channel``; idempotent.

        On a running dispatcher, returns once the LISTEN has committed, so a notification
        committed after it returns is delivered. Before :meth:`start`, records the channel.
        While reconnecting, records it and returns at once: the LISTEN is made on reconnect.

        :param channel: exact, case-sensitive channel name (at most 63 bytes in UTF-8).
        :param timeout: seconds to wait for the server; ``None`` waits as long as it takes.
        :raises InvalidChannelName: before anything is sent, if the name is not acceptable.
        :raises psycopg2.Error: what the server raised (e.g. on a hot standby: LISTEN cannot
            run during recovery); the channel is then not recorded.
        :raises TimeoutError: if ``timeout`` passes first (the LISTEN may still take effect).
        :raises DispatcherStopped: if the dispatcher stops before serving the call.
        """
        self._submit(Listen(channel), timeout)
        self._gapless_ready([channel], _timeouts.deadline(timeout), raise_failure=False)

    def unlisten(self, channel: str, timeout: float | None = None) -> None:
        """UNLISTEN ``channel``; a channel not listened to is a no-op.

        Once it returns, no handler is called for ``channel``, not even for a notification
        received before. Handlers stay connected to the channel's signal and are called again
        after a later :meth:`listen` or :meth:`subscribe` of the channel.

        :param channel: exact channel name.
        :param timeout: seconds to wait for the server; ``None`` waits as long as it takes.
        :raises InvalidChannelName: if the name is not acceptable.
        :raises psycopg2.Error: what the server raised.
        :raises TimeoutError: if ``timeout`` passes first.
        :raises DispatcherStopped: if the dispatcher stops before serving the call.
        """
        self._submit(Unlisten(channel), timeout)

    def notify(self, channel: str, payload: str = "", timeout: float | None = None) -> int | None:
        """Send a notification and return once it has committed.

        On a gap-free channel it runs ``pgpubsub_notify(channel, payload)`` instead (a row of
        the log and its NOTIFY, in one transaction), takes payloads up to 16 MiB, and returns
        the notification's position; its handlers here have run when this returns unless a
        read of the log was needed first (a payload too big for the NOTIFY, or a catch-up in
        progress): then they run right after.

        Runs ``SELECT pg_notify(channel, payload)`` on the dispatcher's connection in a
        transaction of its own, so two identical calls deliver two notifications (the server
        folds identical notifications only within one transaction). Listeners, this dispatcher
        included, receive it; its own copy carries its own ``backend_pid`` and, when this
        dispatcher listens to ``channel``, its handlers have run when this returns, unless
        they run on an ``executor``, or this is called by a handler on the dispatcher thread
        (they run after that handler returns: handlers never nest), or ``stop()`` is called
        meanwhile (delivery ends). To notify inside your own transaction (sent only if it
        commits), use the module-level :func:`pgpubsub_dispatch.notify` on your connection.

        :param channel: exact, case-sensitive channel name (at most 63 bytes in UTF-8).
        :param payload: text without NUL, shorter than 8000 bytes in the database encoding;
            on a gap-free channel, up to 16 MiB (16,777,216 bytes) in UTF-8.
        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises InvalidChannelName: if the channel name is not acceptable.
        :raises TypeError: if ``payload`` is not a ``str``.
        :raises PayloadTooLarge: if ``payload`` is 8000 bytes or more in the database encoding
            (on a gap-free channel: over 16 MiB in UTF-8).
        :raises ValueError: if ``payload`` contains NUL or a lone surrogate (not UTF-8).
        :raises DispatcherStopped: if the dispatcher is not running, or stops first.
        :raises NotConnected: if the dispatcher is reconnecting and ``timeout`` passes before
            a session is up (the notification was not sent).
        :raises psycopg2.OperationalError: if the connection is lost while the notification is
            on its way (it may or may not have been committed).
        :raises psycopg2.Error: what the server raised (e.g. ``too many notifications in the
            NOTIFY queue``, SQLSTATE 54000; on gap-free channels ``DeadlockDetected`` when
            transactions notify them in different orders); the dispatcher keeps running.
        :raises TimeoutError: if ``timeout`` passes first (it may still be sent).
        :returns: the position on a gap-free channel (``int``), else ``None``.
        """
        if self._gapless is None:  # kept short: notify() from many threads is bound by the GIL
            self._submit_all((Notify(channel, payload, self._routes.database_encoding),), timeout)
            return None  # a plain notify has no result; a failure was raised
        command = self._notify_command(channel, payload)
        self._submit_all((command,), timeout)
        position: int | None = command.future.result(0)
        return position

    def notify_many(
        self, notifications: Iterable[tuple[str, str]], timeout: float | None = None
    ) -> None:
        """Send many notifications, in order, in as few transactions as the server allows.

        Every pair is validated before anything is sent. Pairs go out in list order, in shared
        transactions (possibly with other threads' notifies), except that two identical pairs
        never share one, so each is delivered. Returns once all have committed. Consecutive
        pairs of gap-free channels share one transaction (up to 1000 pairs or 8 MiB), which
        takes their channels' counter rows in list order: list channels in the same order as
        your other senders do, or concurrent transactions can deadlock (see the README's
        "Gap-free channels").

        :param notifications: ``(channel, payload)`` pairs, e.g. ``[("orders", "1"), ...]``;
            each payload shorter than 8000 bytes in the database encoding, or up to 16 MiB
            (16,777,216 bytes) in UTF-8 on a gap-free channel.
        :param timeout: seconds to wait for all of them; ``None`` waits as long as it takes.
        :raises InvalidChannelName, TypeError, PayloadTooLarge, ValueError: for the first bad
            pair, before anything is sent.
        :raises DispatcherStopped, NotConnected, TimeoutError, psycopg2.Error: as
            :meth:`notify`, for the first pair that failed (others may have been sent).
        """
        make = self._notify_command
        commands = [_notify_item(index, item, make) for index, item in enumerate(notifications)]
        if commands:
            self._submit_all(batched(commands) if self._gapless else commands, timeout)

    def notify_json(self, channel: str, obj: Any, timeout: float | None = None) -> int | None:
        """Send ``obj`` encoded as compact JSON (see :meth:`notify`).

        Encoded with :func:`json.dumps` (``separators=(",", ":")``, ``ensure_ascii=False``,
        ``allow_nan=False``); the size limit applies to the encoded text. Read it back with
        ``json.loads(notification.payload)``.

        :param channel: exact, case-sensitive channel name.
        :param obj: any JSON-serialisable object.
        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises TypeError: if ``obj`` is not JSON-serialisable.
        :raises ValueError: if it holds NaN or infinity.
        :raises PayloadTooLarge: if its text is 8000 bytes or more in the database encoding (on
            a gap-free channel: over 16 MiB, 16,777,216 bytes, in UTF-8).
        :raises DispatcherStopped, NotConnected, TimeoutError, psycopg2.Error: as
            :meth:`notify`.
        :returns: the position on a gap-free channel (``int``), else ``None``.
        """
        payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return self.notify(channel, payload, timeout)

    def stream(
        self, *channels: str, maxsize: int = 1000, overflow: str = "drop_oldest"
    ) -> NotificationStream:
        """Return a :class:`NotificationStream` of ``channels`` for one consumer.

        ``with bus.stream("chat") as stream:`` subscribes on enter and unsubscribes on exit;
        inside, ``for notification in stream`` (or ``stream.get(timeout=...)``) in a thread,
        or ``async for notification in stream`` in any asyncio event loop. When ``maxsize``
        notifications wait, the oldest is dropped and counted in ``stream.dropped``
        (``overflow="drop_newest"`` drops the new one instead), so a slow consumer never
        stalls the dispatcher.

        :param channels: one or more exact channel names.
        :param maxsize: the most notifications kept waiting (default 1000).
        :param overflow: ``"drop_oldest"`` (default) or ``"drop_newest"``.
        :returns: a stream, not yet subscribed: use it in a ``with`` block (or ``open()``).
        :raises InvalidChannelName: if a channel name is not acceptable.
        :raises ValueError: without channels, ``maxsize`` < 1, or an unknown ``overflow``.
        """
        return NotificationStream(self, channels, maxsize=maxsize, overflow=overflow)

    def queue_usage(self, timeout: float | None = None) -> float:
        """Return how full the server's notification queue is, from 0.0 to 1.0.

        ``pg_notification_queue_usage()`` (PostgreSQL's System Information Functions): the
        queue is shared by the whole server, 8 GB by default; when it is full, every commit
        that notifies fails. A session that listens but stays in a long transaction keeps it
        from emptying. The heartbeat also checks it and logs a warning above
        ``queue_warning``.

        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :returns: the used fraction (``float``).
        :raises DispatcherStopped: if the dispatcher is not running.
        :raises NotConnected, TimeoutError, psycopg2.Error: as :meth:`notify`.
        """
        command = QueueUsage()
        self._submit(command, timeout)
        return float(command.future.result(0))

    @overload
    def subscribe(
        self,
        channel: str,
        handler: H,
        timeout: float | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        decode: None = None,
    ) -> H: ...

    @overload
    def subscribe(
        self,
        channel: str,
        handler: D,
        timeout: float | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        decode: Callable[[str], object] | Literal["json"],
    ) -> D: ...

    def subscribe(
        self,
        channel: str,
        handler: Callable[[Any], object],
        timeout: float | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        decode: Decode | None = None,
    ) -> Callable[[Any], object]:
        """Connect ``handler`` to ``channel`` (strong reference) and LISTEN to it.

        Handlers of a channel are called in subscription order, one at a time, on the
        dispatcher thread, with the notification as their one positional argument. Subscribing
        the same handler twice to a channel keeps it once (with what the first call gave it).

        An ``async def`` handler (a coroutine function) runs on an asyncio event loop: ``loop``,
        else the loop running in the calling thread. Its calls for this channel run one after
        another, in arrival order, never concurrently; the dispatcher only hands them to the
        loop (``call_soon_threadsafe``) and never waits for it. Up to 10,000 notifications wait
        for a slow loop, then the oldest are dropped (``stats().handler_dropped``); once the loop
        is closed, they are all dropped. Its exceptions are sent as ``handler_error`` from the
        loop's thread.

        With ``decode`` (a callable taking the payload ``str``, or ``"json"`` for
        :func:`json.loads`), the handler gets a :class:`DecodedNotification` whose ``value`` is
        the decoded payload; a payload that does not decode is sent as ``handler_error`` with
        the raw notification, and the handler is not called for it.

        :param channel: exact, case-sensitive channel name.
        :param handler: a callable taking one positional argument, or a coroutine function.
        :param timeout: seconds to wait for the LISTEN; ``None`` waits as long as it takes.
        :param loop: the :class:`asyncio.AbstractEventLoop` to run a coroutine handler on.
        :param decode: ``None`` (default: the raw notification), ``"json"``, or a callable.
        :returns: ``handler``, unchanged.
        :raises InvalidChannelName: if the name is not acceptable.
        :raises TypeError: if ``handler`` is not callable; for a coroutine handler without a
            loop (none given, none running in this thread); for ``loop`` with a handler that
            is not a coroutine function; for a ``decode`` that is not callable.
        :raises ValueError: if ``loop`` is closed, or ``decode`` is a string but not ``"json"``.
        :raises psycopg2.Error: if the LISTEN fails; the handler is then not connected.
        :raises TimeoutError: if ``timeout`` passes first.
        :raises DispatcherStopped: if the dispatcher stops before serving the call.
        """
        check_channel(channel)
        adapted = adapt(
            channel,
            handler,
            loop=loop,
            decode=decode,
            report=self._loop.delivery.report,
            table=lambda: self._routes.table,
            on_drop=self._counters.count_handler_dropped,
        )
        self._submit(Subscribe(channel, adapted), timeout)
        self._gapless_ready([channel], _timeouts.deadline(timeout), raise_failure=False)
        return handler

    def unsubscribe(self, channel: str, handler: Handler, timeout: float | None = None) -> None:
        """Disconnect ``handler`` from ``channel``; UNLISTEN when nothing else wants it.

        The channel stays listened to while it has other handlers or was listened to
        explicitly with :meth:`listen`. Once this returns, ``handler`` is not called again for
        ``channel``. A handler that is not connected is a no-op.

        :param channel: exact channel name.
        :param handler: the callable given to :meth:`subscribe`.
        :param timeout: seconds to wait for the UNLISTEN; ``None`` waits as long as it takes.
        :raises InvalidChannelName: if the name is not acceptable.
        :raises TimeoutError: if ``timeout`` passes first.
        :raises DispatcherStopped: if the dispatcher stops before serving the call.
        """
        self._submit(Unsubscribe(channel, handler), timeout)

    @overload
    def on(
        self,
        channel: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        decode: None = None,
    ) -> Callable[[H], H]: ...

    @overload
    def on(
        self,
        channel: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        decode: Callable[[str], object] | Literal["json"],
    ) -> Callable[[D], D]: ...

    def on(
        self,
        channel: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        decode: Decode | None = None,
    ) -> Callable[[Any], Any]:
        """Decorator form of :meth:`subscribe`: ``@bus.on("orders")``.

        :param channel: exact, case-sensitive channel name, checked at once.
        :param loop: as :meth:`subscribe` (for ``async def`` handlers).
        :param decode: as :meth:`subscribe` (``"json"`` or a callable).
        :returns: a decorator that subscribes the function and returns it unchanged.
        :raises InvalidChannelName: if the name is not acceptable (at decoration time).
        :raises TypeError, ValueError: as :meth:`subscribe` (at decoration time).
        """
        check_channel(channel)

        subscribe: Callable[..., Any] = self.subscribe

        def decorator(handler: Any) -> Any:
            return subscribe(channel, handler, loop=loop, decode=decode)

        return decorator

    def signal(self, channel: str) -> blinker.Signal:
        """Return the blinker signal of ``channel``, for blinker-native code.

        The signal is sent with the notification as sender. Connecting to it directly does not
        LISTEN: call :meth:`listen` too.

        :param channel: exact, case-sensitive channel name.
        :returns: the channel's :class:`blinker.Signal`: the same one as long as the channel
            has receivers or is listened to (a channel left with neither is forgotten, so
            that short-lived channels use no memory).
        :raises InvalidChannelName: if the name is not acceptable.
        """
        check_channel(channel)
        return self._routes.signal(channel)

    def position(self, channel: str) -> int | None:
        """The last position of gap-free ``channel`` handed to its handlers; any thread.

        Positions count 1, 2, 3, ... per channel in commit order. ``None`` until the
        dispatcher has first read the channel (with no ``since`` position given).

        :param channel: one of the dispatcher's gap-free channels.
        :returns: an ``int``, or ``None``.
        :raises ValueError: if ``channel`` is not one of them.
        """
        if self._sequencer is None:
            raise ValueError(f"{channel!r} is not a gap-free channel of this dispatcher")
        return self._sequencer.position(channel)

    # ------------------------------------------------------------ callers' threads, private

    def _gapless_ready(
        self, channels: Iterable[str], deadline: float | None, *, raise_failure: bool
    ) -> None:
        """Wait for the first read of gap-free ``channels`` (see ``Sequencer.wait_known``), so
        that a notification committed after start/listen/subscribe returns is delivered.
        In ``start()`` a failed read stops the dispatcher and is raised."""
        sequencer = self._sequencer
        if sequencer is None or self._control.on_loop_thread() or not self.running:
            return
        try:
            sequencer.wait_known(channels, deadline, raise_failure=raise_failure)
        except BaseException:
            if raise_failure:
                self.stop()
            raise

    def _notify_command(self, channel: str, payload: str) -> Command:
        """The command for ``notify(channel, payload)``: through the log if gap-free."""
        config = self._gapless
        if config is not None and isinstance(channel, str) and channel in config.channels:
            return GaplessNotify(channel, payload, config.schema)
        return Notify(channel, payload, self._routes.database_encoding)

    def _join_stopping_thread(self, deadline: float | None) -> None:
        """Let a thread that is stopping (say, stop() from a handler) end before a restart."""
        control = self._control
        thread = control.thread
        if (
            control.state is State.STOPPING
            and thread is not None
            and thread.ident != threading.get_ident()
        ):
            thread.join(_timeouts.remaining(deadline))

    def _request_stop(self) -> threading.Thread | None:
        """Ask the thread to stop; return it, or ``None`` when there is none to stop."""
        control = self._control
        with control.lock:
            thread = control.thread
            if control.state is State.INHERITED:
                control.state = State.IDLE  # stopped before its first use in this child
            if control.state in (State.IDLE, State.FORKED) or thread is None:
                return None
            if control.state is not State.STOPPING:
                control.state = State.STOPPING
                control.stop_requested = True
                self._routes.interrupt()  # a delivery run ends after its current handler call
                if control.waker is not None:
                    control.waker.wake_now()
            return thread

    def _submit(self, command: Command, timeout: float | None) -> None:
        """Have the dispatcher thread run ``command``; record it instead when not running."""
        self._submit_all((command,), timeout)

    def _submit_all(self, commands: Sequence[Command], timeout: float | None) -> None:
        """Queue ``commands`` together, in order, and wait for all; raise the first failure."""
        # notify() from many threads is bound by the GIL: every step of this path is paid per
        # call, one thread at a time (so no call to check a None timeout, and states compared
        # with module constants: an Enum member's lookup takes about 0.25 µs on Python 3.11).
        deadline = None
        if timeout is not None:
            timeout = _timeouts.check_timeout(timeout)
            deadline = _timeouts.deadline(timeout)
        control = self._control
        if control.on_loop_thread():
            for command in commands:
                self._loop.run_in_place(command, deadline)
            return
        if control.state is _INHERITED:  # the first use in a child process
            self._launch(deadline, inherited_only=True)
        if self._loop.delivery.in_executor_task():  # never waits for the listening session
            for command in commands:
                command.from_handler = True
        lock = control.lock
        lock.acquire()  # not ``with``, which costs about 0.45 µs more on Python 3.11
        try:
            state = control.state
            if state is not _RUNNING and state is not _STARTING:
                self._not_running(commands, state)  # records them, or raises
                return
            control.queue.extend(commands)
            waker = control.waker
        finally:
            lock.release()
        if waker is not None:
            # Outside the lock: a write to the wake-up socket lets other threads run, and they
            # would queue up on the lock meanwhile (32 threads: 14,000 -> 19,000 notifies/s).
            # A waker closed since then (stopped) ignores it; stopping fails what was queued.
            waker.wake()
        if len(commands) == 1:  # notify(), listen(), ...: no first error to pick
            self._wait_for(commands[0], deadline, timeout)
            return
        first_error: BaseException | None = None
        for command in commands:
            try:
                self._wait_for(command, deadline, timeout)
            except BaseException as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _not_running(self, commands: Sequence[Command], state: State) -> None:
        """Record ``commands`` on a dispatcher that is not running, or raise why they cannot
        be (caller holds the control lock).

        :raises DispatcherStopped: if it is stopping, or is a child's copy that cannot run.
        """
        if state is _IDLE:
            for command in commands:
                command.record(self._routes)
            return
        if state is _FORKED:
            raise DispatcherStopped(_FORKED_MESSAGE)
        if state is _INHERITED:  # another thread's start in this child failed
            raise DispatcherStopped("the dispatcher is not running (its start failed)")
        raise DispatcherStopped("the dispatcher is stopping")

    def _wait_for(self, command: Command, deadline: float | None, timeout: float | None) -> None:
        try:
            command.future.result(None if deadline is None else _timeouts.remaining(deadline))
        except FutureTimeout:
            if command.future.done() and not command.future.cancelled():
                command.future.result(0)  # the command's own error (may be a TimeoutError)
                return
            taken_back = command.future.cancel()  # if the thread has not taken it, it never will
            control = self._control
            if taken_back and control.backend_pid is None and control.state is State.RUNNING:
                raise NotConnected(
                    f"{command.name} not sent: no connection to the server within {timeout} s "
                    f"(reconnecting; last error: {self._counters.last_error})"
                ) from control.last_exception
            raise TimeoutError(f"{command.name} did not complete within {timeout} s") from None
        except CancelledError:
            raise DispatcherStopped("the dispatcher stopped before serving the call") from None

    # ------------------------------------------------ the streams' protocol (see streams.py)

    def _stream_opened(self, stream: NotificationStream) -> None:
        with self._control.lock:
            self._streams.add(stream)

    def _stream_closed(self, stream: NotificationStream) -> None:
        with self._control.lock:
            self._streams.discard(stream)

    def _unsubscribe_soon(self, channel: str, handler: Handler) -> None:
        """Unsubscribe without waiting: after what is queued, or at once when not running."""
        command = Unsubscribe(channel, handler)
        control = self._control
        if control.on_loop_thread():
            command.record(self._routes)
            return
        with control.lock:
            if control.state in (State.IDLE, State.STOPPING, State.FORKED, State.INHERITED):
                command.record(self._routes)
                return
            control.queue.append(command)
            control.wake()

    def _on_dispatcher_thread(self) -> bool:
        return self._control.on_loop_thread()

    def _close_streams(self) -> None:
        """Dispatcher thread, once stopped: end every open stream, so no reader waits."""
        with self._control.lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()  # its readers stop waiting; a restart does not revive it

    # ------------------------------------------------------------ fork

    def _forget_after_fork(self) -> None:
        """In a child process: drop what the parent's thread owned, touching none of it.

        A dispatcher that was running becomes ``INHERITED``: its first use starts a session
        of the child's own, with the same handlers and channels (``FORKED``, dead, when it has
        an executor, whose threads did not follow). The parent's socket is pointed at
        /dev/null in the child, never closed; every lock is new.
        """
        control = self._control
        was_running = control.state in (State.STARTING, State.RUNNING)
        revive = State.INHERITED if self._options.executor is None else State.FORKED
        control.after_fork(revive if was_running else State.IDLE)
        self._routes.after_fork()
        self._counters.after_fork()
        loop = self._loop
        session, loop.session = loop.session, None
        if session is not None:
            _fork.neutralise(session.conn)
        side = loop.side.forget()
        if side is not None:
            _fork.neutralise(side)
        loop.held.clear()
        loop.delivery.after_fork()
        streams, self._streams = self._streams, set()
        for stream in streams:  # the parent's readers: none of them is in this process
            for channel in stream._abandon_after_fork():
                self._routes.unsubscribe(channel, stream._put)


def _notify_item(index: int, item: Any, make: Callable[[str, str], Command]) -> Command:
    """The ``index``-th item of ``notify_many``, checked; errors name its index."""
    if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
        raise TypeError(f"notify_many() takes (channel, payload) pairs; item {index} is {item!r}")
    try:
        return make(item[0], item[1])
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"notify_many() item {index}: {exc}") from None
