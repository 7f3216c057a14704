"""The :class:`Dispatcher`: one thread, one connection, a blinker signal per channel.

Threads, and which code runs on which:

- *Callers' threads* run the public methods. They validate arguments, then either record the
  change (dispatcher not running), or put a command on the queue, wake the dispatcher thread and
  wait on the command's future. Only ``_submit`` and the methods above it in this file run there.
- The *dispatcher thread* runs every method whose name starts with ``_loop_``. It alone touches
  the psycopg2 connection, which is in asynchronous mode (``async_=True``): queries are sent,
  then ``poll()`` is called each time one ``select()``-style wait reports the socket ready, so no
  statement ever blocks the thread and every wait has a deadline. After every ``poll()`` the
  thread moves ``connection.notifies`` to its own pending queue, and whenever no query is in
  flight it calls the handlers of each pending notification.

A call made on the dispatcher thread itself (from a handler or a lifecycle-signal receiver)
runs in place instead of waiting on the queue, so handlers can ``notify``, ``listen``,
``unsubscribe`` or ``stop`` without deadlocking.

When the connection is lost, the thread reconnects with exponential backoff, LISTENs every
channel again in one round trip, and sends ``reconnected`` before dispatching anything. Between
a loss and a reconnect, ``listen``/``unlisten``/``subscribe``/``unsubscribe`` are recorded and
applied on reconnect, and ``notify`` waits for the connection (up to its timeout).

PostgreSQL documentation relied on: NOTIFY, LISTEN, UNLISTEN (delivery at commit, session scope,
folding of identical notifications in one transaction), ``pg_listening_channels()`` (System
Information Functions) and libpq's asynchronous command processing and keepalive parameters.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import blinker
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from . import _fork, signals
from ._commands import (
    Command,
    Handler,
    Heartbeat,
    Listen,
    Notify,
    NotifyBatch,
    QueueUsage,
    Subscribe,
    Unlisten,
    Unsubscribe,
)
from ._connection import attempt_timeout, describe_target, host_alternatives, with_liveness
from ._executor import ChannelWork
from ._names import check_channel
from ._secrets import Secrets
from ._text import plural
from ._waiting import Waker, wait
from .errors import DispatcherStopped, NotConnected
from .streams import NotificationStream

__all__ = ["Dispatcher", "DispatcherStats"]

log = logging.getLogger("pgpubsub_dispatch")

H = TypeVar("H", bound=Handler)

_POLL_OK = psycopg2.extensions.POLL_OK
_POLL_READ = psycopg2.extensions.POLL_READ
_POLL_WRITE = psycopg2.extensions.POLL_WRITE

_UNLISTEN_ON_STOP_SECONDS = 1.0
"""How long ``stop()`` lets ``UNLISTEN *`` take before closing the connection anyway."""

_STOP_GRACE_SECONDS = 5.0
"""How long ``stop()`` lets a command already sent finish before failing it."""

_MAX_BATCH = 1000
"""Most notifies sent in one transaction when callers queue them faster than they commit."""

_RESERVED_KWARGS = frozenset({"async", "async_", "connection_factory"})


class _State(enum.Enum):
    IDLE = "idle"  # never started, or stopped: calls record their changes
    STARTING = "starting"  # thread connecting: calls queue up
    RUNNING = "running"  # connected, or reconnecting
    STOPPING = "stopping"  # calls fail with DispatcherStopped
    FORKED = "inherited through fork()"  # a child's copy: every call fails


class _ConnectionLost(Exception):
    """Raised on the dispatcher thread when the session is gone; ``reason`` says why."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class DispatcherStats:
    """A snapshot of a dispatcher's counters, from :meth:`Dispatcher.stats`.

    Counters cover the dispatcher's whole life (all starts), in notifications unless noted.

    Attributes:
        received: notifications read from the server.
        dispatched: notifications handed to the handlers of a listened channel.
        dropped: notifications discarded because their channel had no route (no handlers, or
            unlistened before they were dispatched).
        handler_errors: exceptions raised by handlers.
        reconnects: successful reconnections.
        last_error: text of the last connection error, or ``None``.
        backend_pid: pid of the current server session, ``None`` when not connected.
        connected: whether a session is up right now.
        queue_usage: the server's notification queue use (0.0 to 1.0) at the last heartbeat,
            ``None`` before the first.
    """

    received: int
    dispatched: int
    dropped: int
    handler_errors: int
    reconnects: int
    last_error: str | None
    backend_pid: int | None
    connected: bool
    queue_usage: float | None


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
        while commands (``notify``, ``listen``, ...) are still served. Nothing is dropped.
    :param queue_warning: the fraction of the server's notification queue in use
        (``pg_notification_queue_usage()``, checked by each heartbeat) above which a warning
        is logged (default 0.5).
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
        **connect_kwargs: Any,
    ) -> None:
        if "dsn" in connect_kwargs:  # psycopg2.connect(dsn=...) works: so does this
            if dsn is not None:
                raise TypeError("dsn given both by position and by keyword")
            dsn = connect_kwargs.pop("dsn")
        if dsn is not None and not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str or None, not {type(dsn).__name__}")
        reserved = _RESERVED_KWARGS.intersection(connect_kwargs)
        if reserved:
            raise TypeError(f"the dispatcher sets {', '.join(sorted(reserved))} itself")
        for name, value in [
            ("backoff_min", backoff_min),
            ("backoff_max", backoff_max),
            ("heartbeat_timeout", heartbeat_timeout),
            ("heartbeat_interval", 1.0 if heartbeat_interval is None else heartbeat_interval),
        ]:
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, not {executor!r}")
        if not isinstance(queue_warning, (int, float)) or not 0 < queue_warning <= 1:
            raise ValueError(f"queue_warning must be a fraction in (0, 1], not {queue_warning!r}")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, not {max_pending!r}")
        if backoff_min > backoff_max:
            raise ValueError(f"backoff_min ({backoff_min}) exceeds backoff_max ({backoff_max})")
        self._dsn = dsn
        self._connect_kwargs = with_liveness(dsn, dict(connect_kwargs))
        self._target = describe_target(dsn, connect_kwargs)
        self._secrets = Secrets(dsn, connect_kwargs)  # masked in errors raised and logged
        self._attempt_seconds = attempt_timeout(dsn, connect_kwargs)
        self._alternatives = host_alternatives(dsn, self._connect_kwargs)
        self._reconnect = bool(reconnect)
        self._backoff = (float(backoff_min), float(backoff_max))
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = float(heartbeat_timeout)
        self._queue_warning = float(queue_warning)
        self._queue_usage: float | None = None
        self._work = (
            None
            if executor is None
            else ChannelWork(executor, max_pending, self._handle_on_executor, self._wake_for_room)
        )

        # Shared between threads; every transition happens under _lock.
        self._lock = threading.RLock()
        self._state = _State.IDLE
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self._queue: collections.deque[Command] = collections.deque()
        self._waker: Waker | None = None

        # Channel bookkeeping. While IDLE, callers change these under _lock; otherwise only
        # the dispatcher thread does. `_channels` is an immutable snapshot for any reader.
        self._signals: dict[str, blinker.Signal] = {}
        self._wanted: set[str] = set()  # to be listened to (explicitly, or by a subscription)
        self._explicit: set[str] = set()  # listened to with listen(), not only subscribe()
        self._channels: frozenset[str] | None = frozenset()  # None: rebuild from _wanted
        self._backend_pid: int | None = None

        # Dispatcher thread only.
        self._conn: psycopg2.extensions.connection | None = None
        self._routes: dict[str, blinker.Signal] = {}  # channels LISTENed on this session
        self._pending: collections.deque[Any] = collections.deque()
        self._held: collections.deque[Command] = collections.deque()  # waiting for a session
        self._inflight: Command | None = None
        self._inflight_deadline: float | None = None
        self._cursor: psycopg2.extensions.cursor | None = None
        self._inflight_wait = _POLL_OK
        self._next_heartbeat = 0.0  # monotonic time the next heartbeat is due
        self._dispatching = False
        self._routing_version = 0  # bumped by every change of routes or handlers
        self._stop_requested = False
        self._lost: _ConnectionLost | None = None  # noticed inside a handler's in-place call
        self._halt = False  # stop requested, or connection lost: stop dispatching

        # Counters, written by the dispatcher thread only (see stats()).
        self._received = self._dispatched = self._dropped = 0
        self._handler_errors = self._reconnects = 0
        self._last_error: str | None = None
        self._last_exception: BaseException | None = None
        self._streams: weakref.WeakSet[NotificationStream] = weakref.WeakSet()  # open ones
        _fork.track(self)

    # ------------------------------------------------------------------ public, any thread

    def __repr__(self) -> str:
        return f"<Dispatcher {self._state.value} channels={sorted(self.channels)!r}>"

    def __enter__(self) -> Dispatcher:
        """Start the dispatcher (see :meth:`start`) and return it."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the dispatcher (see :meth:`stop`)."""
        self.stop()

    @property
    def running(self) -> bool:
        """``True`` between a successful :meth:`start` and :meth:`stop`, reconnecting included.

        ``False`` after a lost connection when ``reconnect=False``.
        """
        return self._state is _State.RUNNING

    @property
    def connected(self) -> bool:
        """``True`` while a server session is up (``False`` while reconnecting)."""
        return self._backend_pid is not None

    @property
    def backend_pid(self) -> int | None:
        """The ``int`` pid of the current server session, or ``None`` when not connected."""
        return self._backend_pid

    @property
    def channels(self) -> frozenset[str]:
        """The ``frozenset[str]`` of channels listened to (or to be, at the next connection)."""
        channels = self._channels
        if channels is None:
            # A C-level copy: no other thread runs while it is made.
            channels = self._channels = frozenset(self._wanted)
        return channels

    def stats(self) -> DispatcherStats:
        """Return a :class:`DispatcherStats` snapshot of the counters; cheap, any thread."""
        return DispatcherStats(
            received=self._received,
            dispatched=self._dispatched,
            dropped=self._dropped,
            handler_errors=self._handler_errors,
            reconnects=self._reconnects,
            last_error=self._last_error,
            backend_pid=self._backend_pid,
            connected=self._backend_pid is not None,
            queue_usage=self._queue_usage,
        )

    def start(self, timeout: float | None = None) -> Dispatcher:
        """Connect, LISTEN every recorded channel, and return once notifications flow.

        A notification committed by anyone after this returns is delivered. ``connected`` is
        sent (on the dispatcher thread) before it returns. The first connection is not
        retried: if it fails, the error is raised here.

        :param timeout: seconds to allow for connecting and LISTENing; ``None`` allows the
            ``connect_timeout`` connection parameter when given, else 10 seconds per attempt.
        :returns: ``self``, so that ``bus = Dispatcher(dsn).start()`` works.
        :raises RuntimeError: if the dispatcher is already running or starting (a dispatcher
            still stopping, after ``stop()`` from a handler, is waited for first).
        :raises DispatcherStopped: in a child process that inherited it through ``fork()``,
            or if ``stop()`` is called while starting.
        :raises psycopg2.OperationalError: if the connection attempt fails (then no thread is
            left running); any ``psycopg2.Error`` if a LISTEN fails.
        :raises TimeoutError: if ``timeout`` passes first.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        deadline = _deadline(timeout)
        self._join_stopping_thread(deadline)
        with self._lock:
            if self._state is _State.FORKED:
                raise DispatcherStopped(self._forked_message())
            if self._state is not _State.IDLE:
                raise RuntimeError(f"the dispatcher is {self._state.value}; stop() it first")
            self._state = _State.STARTING
            self._stop_requested = self._halt = False
            self._queue = collections.deque()
            self._waker = Waker()
            started: Future[None] = Future()
            thread = threading.Thread(
                target=self._loop_main,
                args=(started, deadline),
                name=f"pgpubsub-dispatch-{id(self):x}",
                daemon=True,
            )
            self._thread = thread
            thread.start()
        try:
            started.result()
        except BaseException:
            if not started.done():  # interrupted here (KeyboardInterrupt): end the attempt
                self._request_stop()
            thread.join()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """UNLISTEN, close the connection and end the thread; return when it has ended.

        Idempotent, safe before :meth:`start`, from several threads at once, and from a handler
        (then it only asks the thread to stop after the handler returns, and returns at once).
        Calls waiting on the queue fail with :class:`DispatcherStopped`. Handlers, signals and
        channels are kept: a later :meth:`start` listens to the same channels again.

        :param timeout: seconds to wait for the thread to end; ``None`` waits as long as it
            takes (a handler that never returns then blocks it). When it passes, a warning is
            logged and the thread, a daemon, ends on its own.
        """
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

    def notify(self, channel: str, payload: str = "", timeout: float | None = None) -> None:
        """Send a notification and return once it has committed.

        Runs ``SELECT pg_notify(channel, payload)`` on the dispatcher's connection in a
        transaction of its own, so two identical calls deliver two notifications (the server
        folds identical notifications only within one transaction). Listeners, this dispatcher
        included, receive it; its own copy carries its own ``backend_pid`` and, when this
        dispatcher listens to ``channel``, its handlers have run when this returns (unless they
        run on an ``executor``). To notify inside your own transaction (sent only if it
        commits), use the module-level :func:`pgpubsub_dispatch.notify` on your connection.

        :param channel: exact, case-sensitive channel name (at most 63 bytes in UTF-8).
        :param payload: text shorter than 8000 bytes in UTF-8, without NUL.
        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises InvalidChannelName: if the channel name is not acceptable.
        :raises TypeError: if ``payload`` is not a ``str``.
        :raises PayloadTooLarge: if ``payload`` is 8000 bytes or more in UTF-8.
        :raises ValueError: if ``payload`` contains NUL.
        :raises DispatcherStopped: if the dispatcher is not running, or stops first.
        :raises NotConnected: if the dispatcher is reconnecting and ``timeout`` passes before
            a session is up (the notification was not sent).
        :raises psycopg2.OperationalError: if the connection is lost while the notification is
            on its way (it may or may not have been committed).
        :raises psycopg2.Error: what the server raised (e.g. ``too many notifications in the
            NOTIFY queue``, SQLSTATE 54000); the dispatcher keeps running.
        :raises TimeoutError: if ``timeout`` passes first (it may still be sent).
        """
        self._submit(Notify(channel, payload), timeout)

    def notify_many(
        self, notifications: Iterable[tuple[str, str]], timeout: float | None = None
    ) -> None:
        """Send many notifications, in order, in as few transactions as the server allows.

        Every pair is validated before anything is sent. Pairs go out in shared transactions
        (possibly with other threads' notifies), except that two identical pairs never share
        one, so each is delivered. Returns once all have committed.

        :param notifications: ``(channel, payload)`` pairs, e.g. ``[("orders", "1"), ...]``.
        :param timeout: seconds to wait for all of them; ``None`` waits as long as it takes.
        :raises InvalidChannelName, TypeError, PayloadTooLarge, ValueError: for the first bad
            pair, before anything is sent.
        :raises DispatcherStopped, NotConnected, TimeoutError, psycopg2.Error: as
            :meth:`notify`, for the first pair that failed (others may have been sent).
        """
        commands = [Notify(*_pair(item)) for item in notifications]
        if commands:
            self._submit_all(commands, timeout)

    def notify_json(self, channel: str, obj: Any, timeout: float | None = None) -> None:
        """Send ``obj`` encoded as compact JSON (see :meth:`notify`).

        Encoded with :func:`json.dumps` (``separators=(",", ":")``, ``ensure_ascii=False``,
        ``allow_nan=False``); the size limit applies to the encoded text. Read it back with
        ``json.loads(notification.payload)``.

        :param channel: exact, case-sensitive channel name.
        :param obj: any JSON-serialisable object.
        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises TypeError: if ``obj`` is not JSON-serialisable.
        :raises ValueError: if it holds NaN or infinity.
        :raises PayloadTooLarge: if its encoding is 8000 bytes or more in UTF-8.
        :raises DispatcherStopped, NotConnected, TimeoutError, psycopg2.Error: as
            :meth:`notify`.
        """
        payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        self.notify(channel, payload, timeout)

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

    def subscribe(self, channel: str, handler: H, timeout: float | None = None) -> H:
        """Connect ``handler`` to ``channel`` (strong reference) and LISTEN to it.

        Handlers of a channel are called in subscription order, one at a time, on the
        dispatcher thread, with the notification as their one positional argument. Subscribing
        the same handler twice to a channel calls it once.

        :param channel: exact, case-sensitive channel name.
        :param handler: a callable taking one positional argument.
        :param timeout: seconds to wait for the LISTEN; ``None`` waits as long as it takes.
        :returns: ``handler``, unchanged.
        :raises InvalidChannelName: if the name is not acceptable.
        :raises TypeError: if ``handler`` is not callable.
        :raises psycopg2.Error: if the LISTEN fails; the handler is then not connected.
        :raises TimeoutError: if ``timeout`` passes first.
        :raises DispatcherStopped: if the dispatcher stops before serving the call.
        """
        self._submit(Subscribe(channel, handler), timeout)
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

    def on(self, channel: str) -> Callable[[H], H]:
        """Decorator form of :meth:`subscribe`: ``@bus.on("orders")``.

        :param channel: exact, case-sensitive channel name, checked at once.
        :returns: a decorator that subscribes the function and returns it unchanged.
        :raises InvalidChannelName: if the name is not acceptable (at decoration time).
        """
        check_channel(channel)

        def decorator(handler: H) -> H:
            return self.subscribe(channel, handler)

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
        found = self._signals.get(channel)
        if found is None:
            with self._lock:
                found = self._signals.setdefault(
                    channel, blinker.Signal(f"notifications on channel {channel!r}")
                )
        return found

    # ------------------------------------------------------------ callers' threads, private

    def _join_stopping_thread(self, deadline: float | None) -> None:
        """Let a thread that is stopping (say, stop() from a handler) end before a restart."""
        thread = self._thread
        if (
            self._state is _State.STOPPING
            and thread is not None
            and thread.ident != threading.get_ident()
        ):
            thread.join(_remaining(deadline))

    def _request_stop(self) -> threading.Thread | None:
        """Ask the thread to stop; return it, or ``None`` when there is none to stop."""
        with self._lock:
            thread = self._thread
            if self._state in (_State.IDLE, _State.FORKED) or thread is None:
                return None
            if self._state is not _State.STOPPING:
                self._state = _State.STOPPING
                self._stop_requested = self._halt = True
                if self._waker is not None:
                    self._waker.wake_now()
            return thread

    def _submit(self, command: Command, timeout: float | None) -> None:
        """Have the dispatcher thread run ``command``; record it instead when not running."""
        self._submit_all([command], timeout)

    def _submit_all(self, commands: Sequence[Command], timeout: float | None) -> None:
        """Queue ``commands`` together, in order, and wait for all; raise the first failure."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        deadline = _deadline(timeout)
        if threading.get_ident() == self._loop_ident:
            for command in commands:
                self._loop_run_in_place(command, deadline)
            return
        with self._lock:
            if self._state is _State.IDLE:
                for command in commands:
                    self._record(command)
                return
            if self._state is _State.STOPPING:
                raise DispatcherStopped("the dispatcher is stopping")
            if self._state is _State.FORKED:
                raise DispatcherStopped(self._forked_message())
            self._queue.extend(commands)
            assert self._waker is not None
            self._waker.wake()
        first_error: BaseException | None = None
        for command in commands:
            try:
                self._wait_for(command, deadline, timeout)
            except BaseException as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _unsubscribe_later(self, channel: str, handler: Handler) -> None:
        """Queue an unsubscribe without waiting for it (it runs after what is queued)."""
        command = Unsubscribe(channel, handler)
        if threading.get_ident() == self._loop_ident:
            self._record(command)
            return
        with self._lock:
            if self._state in (_State.IDLE, _State.STOPPING, _State.FORKED):
                self._record(command)
                return
            self._queue.append(command)
            assert self._waker is not None
            self._waker.wake()

    def _wait_for(self, command: Command, deadline: float | None, timeout: float | None) -> None:
        try:
            command.future.result(_remaining(deadline))
        except FutureTimeout:
            if command.future.done() and not command.future.cancelled():
                command.future.result(0)  # the command's own error (may be a TimeoutError)
                return
            taken_back = command.future.cancel()  # if the thread has not taken it, it never will
            name = type(command).__name__.lower()
            if taken_back and self._backend_pid is None and self._state is _State.RUNNING:
                raise NotConnected(
                    f"{name} not sent: no connection to the server within {timeout} s "
                    f"(reconnecting; last error: {self._last_error})"
                ) from self._last_exception
            raise TimeoutError(f"{name} did not complete within {timeout} s") from None
        except CancelledError:
            raise DispatcherStopped("the dispatcher stopped before serving the call") from None

    def _record(self, command: Command) -> None:
        """Apply ``command`` to the bookkeeping only (not running, or reconnecting)."""
        self._routing_version += 1
        if isinstance(command, (Notify, QueueUsage)):
            raise DispatcherStopped("the dispatcher is not running (not started yet, or stopped)")
        if isinstance(command, Listen):
            self._explicit.add(command.channel)
            self._want(command.channel)
        elif isinstance(command, Unlisten):
            self._explicit.discard(command.channel)
            self._unroute(command.channel)
        elif isinstance(command, Subscribe):
            self.signal(command.channel).connect(command.handler, weak=False)
            self._want(command.channel)
        elif isinstance(command, Unsubscribe):
            self._disconnect(command.channel, command.handler)
            if not self._has_receivers(command.channel) and command.channel not in self._explicit:
                self._unroute(command.channel)

    def _forked_message(self) -> str:
        return (
            "this Dispatcher was started in a parent process and inherited through fork(); "
            "its connection belongs to the parent: create a new Dispatcher in the child"
        )

    def _forget_after_fork(self) -> None:
        """In a child process: drop everything the parent's thread owned, touching nothing."""
        self._lock = threading.RLock()  # the parent's may have been held at fork time
        if self._state is _State.IDLE:
            return
        self._state = _State.FORKED
        conn, self._conn = self._conn, None
        if conn is not None:
            _fork.neutralise(conn)
        if self._waker is not None:
            self._waker.close()  # the child's copies only; the parent's stay open
            self._waker = None
        self._queue = collections.deque()
        self._thread = None
        self._loop_ident = None
        self._backend_pid = None

    # ------------------------------------------------------------- bookkeeping, either side

    def _want(self, channel: str) -> None:
        if channel not in self._wanted:
            self._wanted.add(channel)
            self._channels = None

    def _unwant(self, channel: str) -> None:
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._channels = None

    def _disconnect(self, channel: str, handler: Handler) -> None:
        found = self._signals.get(channel)
        if found is not None:
            found.disconnect(handler)

    def _has_receivers(self, channel: str) -> bool:
        found = self._signals.get(channel)
        return found is not None and bool(found.receivers)

    # ------------------------------------------------- the dispatcher thread: life cycle

    def _loop_main(self, started: Future[None], deadline: float | None) -> None:
        """Body of the dispatcher thread: connect, serve, reconnect, and always clean up."""
        self._loop_ident = threading.get_ident()
        try:
            self._loop_connect(deadline)
        except BaseException as exc:
            self._loop_abandon_start()
            started.set_exception(self._secrets.redacted(exc))
            return
        error: BaseException | None = None
        try:
            with self._lock:
                if self._state is _State.STARTING:
                    self._state = _State.RUNNING
            assert self._backend_pid is not None
            self._loop_send_lifecycle(signals.connected, backend_pid=self._backend_pid)
            started.set_result(None)
            while True:
                try:
                    self._loop_serve()
                    break  # stop() was called
                except _ConnectionLost as lost:
                    if not self._reconnect or self._stop_requested:
                        raise
                    self._loop_on_lost(self._secrets.redacted(lost.reason))
                    if not self._loop_reconnect():
                        break  # stop() was called while reconnecting
        except _ConnectionLost as lost:
            error = self._secrets.redacted(lost.reason)
        except BaseException as exc:  # a bug, or a handler raising BaseException
            error = exc
            log.exception("the dispatcher thread failed")
        finally:
            self._loop_shutdown(error)

    def _loop_abandon_start(self) -> None:
        """Undo a start() whose connection or initial LISTEN failed."""
        self._loop_close()
        self._routes.clear()
        self._pending.clear()
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
            self._finish_locked(None)
        stopped = DispatcherStopped("the dispatcher failed to start")
        for command in queued:
            _fail(command, stopped, None)

    def _loop_connect(self, deadline: float | None, *, reconnecting: bool = False) -> None:
        """Open a session and LISTEN every wanted channel in one round trip.

        :raises psycopg2.Error: if connecting or LISTENing fails.
        :raises TimeoutError: if ``deadline`` passes first.
        :raises DispatcherStopped: if ``stop()`` is called meanwhile.
        """
        self._loop_open(deadline, absorb=reconnecting)
        assert self._conn is not None
        channels = sorted(self._wanted)  # final: commands stay queued from here on
        if channels:
            self._loop_execute(_listen_sql(channels))
            listen_deadline = _deadline(self._attempt_seconds) if deadline is None else deadline
            self._loop_wait_until_ok(listen_deadline, "LISTENing")
        self._routes = {channel: self.signal(channel) for channel in channels}
        self._routing_version += 1
        self._backend_pid = self._conn.get_backend_pid()
        self._loop_schedule_heartbeat()
        log.info(
            "connected to %s, backend pid %d, listening to %s",
            self._target,
            self._backend_pid,
            plural(len(channels), "channel"),
        )
        self._loop_take_notifies()

    def _loop_open(self, deadline: float | None, *, absorb: bool) -> None:
        """Connect to the first host that answers, each within ``connect_timeout``.

        :raises psycopg2.Error, TimeoutError: the last host's error when none answers.
        """
        last_error: Exception | None = None
        for dsn, kwargs in self._alternatives:
            attempt = _deadline(self._attempt_seconds)
            assert attempt is not None
            if deadline is not None and deadline < attempt:
                attempt = deadline
            try:
                self._conn = psycopg2.connect(dsn, async_=True, **kwargs)
                self._loop_wait_until_ok(attempt, "connecting", absorb=absorb)
                return
            except (psycopg2.Error, TimeoutError) as exc:
                self._loop_close()
                last_error = exc
                if len(self._alternatives) > 1:
                    log.info(
                        "host %s failed: %s",
                        describe_target(dsn, kwargs),
                        self._secrets.redact(_one_line(exc)),
                    )
                if _remaining(deadline) == 0.0:
                    break
        assert last_error is not None
        raise last_error

    def _loop_wait_until_ok(
        self, deadline: float | None, doing: str, *, stoppable: bool = True, absorb: bool = False
    ) -> None:
        """Poll the connection until it is idle, honouring ``deadline`` and ``stop()``.

        With ``absorb``, commands arriving meanwhile are recorded or held (reconnecting).
        """
        assert self._conn is not None and self._waker is not None
        started = time.monotonic()
        state = self._conn.poll()
        while state != _POLL_OK:
            if stoppable and self._stop_requested:
                raise DispatcherStopped(f"stopped while {doing}")
            remaining = _remaining(deadline)
            if remaining == 0.0:
                waited = time.monotonic() - started
                raise TimeoutError(f"no answer in {waited:.1f} s while {doing} to {self._target}")
            fd = self._conn.fileno()
            if state == _POLL_READ:
                wait([fd, self._waker.fileno()], [], remaining)
            else:
                wait([self._waker.fileno()], [fd], remaining)
            self._waker.drain()
            if absorb:
                self._waker.disarm()
                self._loop_absorb_commands()
            state = self._conn.poll()

    def _loop_on_lost(self, reason: BaseException) -> None:
        """Close the dead session, settle its command, and tell the application."""
        self._last_error, self._last_exception = _one_line(reason), reason
        log.warning(
            "lost the connection to %s (backend pid %s): %s; reconnecting",
            self._target,
            self._backend_pid,
            self._last_error,
        )
        self._loop_close()
        self._backend_pid = None
        command, self._inflight = self._inflight, None
        if command is not None:
            self._loop_settle_interrupted(command, reason)
        self._loop_dispatch()  # what arrived before the loss was listened to: deliver it
        self._pending.clear()
        # The routes stay until the reconnection replaces them: executor tasks still use them.
        self._loop_send_lifecycle(signals.disconnected, error=reason)

    def _loop_settle_interrupted(self, command: Command, reason: BaseException) -> None:
        """A command whose session died under it: fail a notify, record the rest."""
        if isinstance(command, NotifyBatch):
            for notify in command.notifies:
                notify.future.set_exception(reason)  # it may or may not have committed
        elif isinstance(command, Notify):
            command.future.set_exception(reason)  # it may or may not have committed
        elif not isinstance(command, Heartbeat):
            self._record(command)  # applied on reconnect, as if made while disconnected
            command.future.set_result(None)

    def _loop_reconnect(self) -> bool:
        """Connect again with exponential backoff; ``False`` if stop() came first.

        Each attempt, the first included, follows a pause of half to all of the current delay
        (jitter spreads the clients of a restarted server); the delay starts at
        ``backoff_min`` and doubles after each failure, up to ``backoff_max``.
        """
        backoff_min, backoff_max = self._backoff
        delay = backoff_min
        attempt = 0
        while True:
            self._loop_idle_until(_deadline(delay / 2 + random.uniform(0, delay / 2)))
            if self._stop_requested:
                return False
            attempt += 1
            try:
                self._loop_connect(None, reconnecting=True)
            except DispatcherStopped:
                self._loop_close()
                return False
            except Exception as exc:
                self._loop_close()
                exc = self._secrets.redacted(exc)
                self._last_error, self._last_exception = _one_line(exc), exc
                delay = min(delay * 2, backoff_max)
                log.warning(
                    "reconnection attempt %d to %s failed: %s; next in %.1f s at most",
                    attempt,
                    self._target,
                    self._last_error,
                    delay,
                )
                continue
            self._reconnects += 1
            assert self._backend_pid is not None
            log.warning(
                "reconnected to %s after %s, backend pid %d, %s",
                self._target,
                plural(attempt, "attempt"),
                self._backend_pid,
                plural(len(self._routes), "channel"),
            )
            self._queue.extendleft(reversed(self._held))  # held notifies go first, in order
            self._held.clear()
            self._loop_send_lifecycle(signals.reconnected, backend_pid=self._backend_pid)
            return True

    def _loop_idle_until(self, deadline: float | None) -> None:
        """Sleep until ``deadline`` without a connection, serving commands as they come."""
        assert self._waker is not None
        while not self._stop_requested:
            remaining = _remaining(deadline)
            if remaining == 0.0:
                return
            self._waker.disarm()
            self._loop_absorb_commands()
            wait([self._waker.fileno()], [], remaining)
            self._waker.drain()

    def _loop_absorb_commands(self) -> None:
        """While disconnected: record channel changes at once, hold notifies for later."""
        while self._queue:
            command = self._queue.popleft()
            if isinstance(command, (Notify, QueueUsage)):
                # Left pending, so a caller that times out can still cancel it: never sent.
                self._held.append(command)
            elif command.future.set_running_or_notify_cancel():
                self._record(command)
                command.future.set_result(None)

    def _loop_shutdown(self, error: BaseException | None) -> None:
        """Fail every waiting call, UNLISTEN, close, and mark the dispatcher stopped."""
        with self._lock:
            self._state = _State.STOPPING  # from here on, nobody can queue a command
        stopped = DispatcherStopped(
            "the dispatcher stopped" if error is None else f"the connection was lost: {error}"
        )
        if self._inflight is not None:
            _fail(self._inflight, stopped, error)
            self._inflight = None
        for waiting in (self._queue, self._held):
            while waiting:
                _fail(waiting.popleft(), stopped, error)
        if error is None and self._conn is not None and not self._conn.closed:
            try:
                self._loop_execute(sql.SQL("UNLISTEN *"))
                self._loop_wait_until_ok(
                    _deadline(_UNLISTEN_ON_STOP_SECONDS), "UNLISTENing", stoppable=False
                )
            except Exception as exc:  # closing ends the session's LISTENs anyway
                log.debug("UNLISTEN * on stop failed: %s", exc)
        self._loop_close()
        self._dropped += len(self._pending)  # received, but stop() came first
        self._pending.clear()
        self._routes = {}
        with self._lock:
            self._finish_locked(error)
        # From here on, calls made by receivers take the not-running path (record or raise).
        self._loop_send_lifecycle(signals.disconnected, error=error)
        for stream in list(self._streams):
            stream.close()  # its readers stop waiting; a restart does not revive it

    def _loop_close(self) -> None:
        self._cursor = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:  # pragma: no cover - close() on a broken socket
                log.debug("closing the connection failed: %s", exc)
            self._conn = None

    def _finish_locked(self, error: BaseException | None) -> None:
        """Mark the dispatcher stopped (caller holds ``_lock``)."""
        self._state = _State.IDLE
        self._loop_ident = None
        self._backend_pid = None
        self._stop_requested = self._halt = False
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        if error is not None:
            self._last_error = _one_line(error)
            log.warning("the dispatcher stopped: %s", self._last_error)

    # ---------------------------------------------- the dispatcher thread: serving

    def _loop_serve(self) -> None:
        """Run commands and dispatch notifications until stop().

        :raises _ConnectionLost: when the session is gone or fails its heartbeat.
        """
        conn, waker = self._conn, self._waker
        assert conn is not None and waker is not None
        conn_fd, wake_fd = conn.fileno(), waker.fileno()
        grace_deadline: float | None = None  # for a command in flight when stop() came
        while True:
            if self._lost is not None:  # noticed by a handler's in-place call
                lost, self._lost = self._lost, None
                self._halt = self._stop_requested
                raise lost
            if self._stop_requested:
                if self._inflight is None:
                    return
                if grace_deadline is None:
                    grace_deadline = _deadline(_STOP_GRACE_SECONDS)
                elif _remaining(grace_deadline) == 0.0:
                    return  # shutdown fails the command in flight with DispatcherStopped
            else:
                self._loop_start_next_command()
                if self._inflight is None:
                    self._loop_heartbeat_if_due()
            if self._inflight is None:
                self._loop_dispatch()
                if self._stop_requested or self._lost is not None or self._queue:
                    continue  # stop, reconnect, or serve what a handler queued
                waker.disarm()  # idle from here: callers must write to wake us
                if self._queue:
                    continue  # queued before the disarm: its wake() wrote nothing
            timeout = self._loop_next_timeout(grace_deadline)
            if self._inflight is not None and self._inflight_wait == _POLL_WRITE:
                ready = wait([wake_fd], [conn_fd], timeout)
            elif self._inflight is None and self._work is not None and self._work.backpressure:
                ready = wait([wake_fd], [], timeout)  # read nothing until handlers catch up
            else:
                ready = wait([conn_fd, wake_fd], [], timeout)
            if wake_fd in ready:
                waker.drain()
            if conn_fd in ready:
                self._loop_poll()
            elif not ready:
                self._loop_on_timeout()

    def _loop_next_timeout(self, grace_deadline: float | None) -> float | None:
        """Seconds until something is due: the stop grace, a deadline or the heartbeat."""
        due = grace_deadline
        if self._heartbeat_interval is not None:
            beat = self._inflight_deadline if self._inflight is not None else self._next_heartbeat
            if beat is not None and (due is None or beat < due):
                due = beat
        return _remaining(due)

    def _loop_on_timeout(self) -> None:
        """The wait ended with nothing ready: a deadline passed (or a heartbeat is due,
        which the loop begins next)."""
        deadline = self._inflight_deadline
        if self._inflight is not None and deadline is not None and _remaining(deadline) == 0:
            what = type(self._inflight).__name__.lower()
            raise _ConnectionLost(
                psycopg2.OperationalError(
                    f"no answer from the server to a {what} in time: "
                    "the connection is presumed dead"
                )
            )

    def _loop_schedule_heartbeat(self) -> None:
        if self._heartbeat_interval is not None:
            self._next_heartbeat = time.monotonic() + self._heartbeat_interval

    def _loop_heartbeat_if_due(self) -> None:
        """Begin the heartbeat every ``heartbeat_interval`` s, busy or not (it also reads the
        queue usage, which matters most under traffic)."""
        if self._heartbeat_interval is not None and time.monotonic() >= self._next_heartbeat:
            heartbeat = Heartbeat()
            heartbeat.future.set_running_or_notify_cancel()
            self._loop_begin(heartbeat)

    def _loop_start_next_command(self) -> None:
        """Take queued commands until one needs the server (or the queue is empty)."""
        while self._queue and self._inflight is None:
            command = self._queue.popleft()
            if isinstance(command, Notify):
                if command.alone:  # a retry: already taken once
                    self._loop_begin(command)
                elif command.future.set_running_or_notify_cancel():
                    self._loop_begin(self._loop_gather_notifies(command))
            elif command.future.set_running_or_notify_cancel():
                self._loop_begin(command)

    def _loop_gather_notifies(self, first: Notify) -> Command:
        """Take the notifies queued right behind ``first`` to share its transaction.

        Stops at anything else (order is kept), at a retry, and at a (channel, payload) pair
        already taken: the server folds identical notifications of one transaction.
        """
        queue = self._queue
        if not queue or type(queue[0]) is not Notify:
            return first
        batch = [first]
        taken = {(first.channel, first.payload)}
        while queue and len(batch) < _MAX_BATCH:
            candidate = queue[0]
            if type(candidate) is not Notify or candidate.alone:
                break
            assert isinstance(candidate, Notify)
            pair = (candidate.channel, candidate.payload)
            if pair in taken:
                break
            queue.popleft()
            if candidate.future.set_running_or_notify_cancel():
                batch.append(candidate)
                taken.add(pair)
        return first if len(batch) == 1 else NotifyBatch(batch)

    def _loop_fail(self, command: Command, error: BaseException) -> None:
        """A command the server refused. A shared transaction is retried one by one."""
        if isinstance(command, NotifyBatch):
            # Nothing of it committed; each is retried alone so one bad notify fails alone.
            for notify in command.notifies:
                notify.alone = True
            self._queue.extendleft(reversed(command.notifies))
        else:
            command.future.set_exception(error)

    def _loop_run_in_place(self, command: Command, deadline: float | None) -> None:
        """Run ``command`` now, on the dispatcher thread (a call made from a handler)."""
        if self._state is not _State.RUNNING or self._stop_requested:
            raise DispatcherStopped("the dispatcher is stopping")
        if self._conn is None or self._lost is not None:  # reconnecting
            if isinstance(command, (Notify, QueueUsage)):
                raise NotConnected(f"not connected: reconnecting ({self._last_error})")
            self._record(command)
            return
        command.future.set_running_or_notify_cancel()
        try:
            # A query still in flight (an earlier in-place call timed out) finishes first.
            self._loop_wait_in_place(self._inflight, deadline)
            self._loop_begin(command)
            self._loop_wait_in_place(command, deadline)
        except _ConnectionLost as lost:
            self._lost = lost  # the loop reconnects once the handler returns
            self._halt = True
            if isinstance(command, Notify):
                raise NotConnected(f"the connection was lost: {lost.reason}") from lost.reason
            self._loop_settle_interrupted(command, lost.reason)
            return
        command.future.result(0)

    def _loop_wait_in_place(self, command: Command | None, deadline: float | None) -> None:
        """Poll until ``command`` is no longer in flight (nothing to do for ``None``)."""
        assert self._conn is not None
        while command is not None and self._loop_busy_with(command):
            remaining = _remaining(deadline)
            if remaining == 0.0:
                # The query stays in flight; the loop finishes it once the handler returns.
                raise TimeoutError(f"{type(command).__name__.lower()} did not complete in time")
            fd = self._conn.fileno()
            if self._inflight_wait == _POLL_WRITE:
                wait([], [fd], remaining)
            else:
                wait([fd], [], remaining)
            self._loop_poll()

    def _loop_busy_with(self, command: Command) -> bool:
        return self._inflight is command

    def _loop_begin(self, command: Command) -> None:
        """Send ``command``'s SQL, or complete it at once when it needs none."""
        statement = self._loop_statement_for(command)
        if statement is None:
            self._loop_complete(command)
            return
        assert self._conn is not None
        try:
            self._loop_execute(*statement)
        except psycopg2.Error as exc:
            if self._conn.closed:
                self._inflight = command
                raise _ConnectionLost(exc) from exc
            self._loop_fail(command, exc)
            return
        except Exception as exc:  # e.g. UnicodeEncodeError for the connection's encoding
            self._loop_fail(command, exc)
            return
        self._inflight = command
        if isinstance(command, Heartbeat):
            self._inflight_deadline = _deadline(self._heartbeat_timeout)
        elif self._heartbeat_interval is not None:
            self._inflight_deadline = _deadline(self._heartbeat_interval + self._heartbeat_timeout)
        else:
            self._inflight_deadline = None
        self._loop_poll()

    def _loop_statement_for(self, command: Command) -> tuple[str | sql.Composable, Any] | None:
        """The SQL that ``command`` needs on this session, or ``None`` if it needs none."""
        if isinstance(command, Notify):
            return _NOTIFY_SQL, (command.channel, command.payload)
        if isinstance(command, NotifyBatch):
            channels = [notify.channel for notify in command.notifies]
            payloads = [notify.payload for notify in command.notifies]
            return _NOTIFY_BATCH_SQL, (channels, payloads)
        if isinstance(command, (Listen, Subscribe)):
            if command.channel in self._routes:
                return None
            return _listen_sql([command.channel]), None
        if isinstance(command, Unlisten):
            if command.channel not in self._routes:
                return None
            return _unlisten_sql(command.channel), None
        if isinstance(command, Unsubscribe):
            channel = command.channel
            if channel not in self._routes or channel in self._explicit:
                return None
            remaining = [h for h in self._handlers_for(channel) if h != command.handler]
            if remaining:
                return None
            return _unlisten_sql(channel), None
        if isinstance(command, Heartbeat):
            return _HEARTBEAT_SQL, None
        if isinstance(command, QueueUsage):
            return _QUEUE_USAGE_SQL, None
        raise TypeError(f"unknown command {command!r}")

    def _loop_execute(self, query: str | sql.Composable, params: Any = None) -> None:
        assert self._conn is not None
        self._inflight_wait = _POLL_WRITE  # until the first poll() says otherwise
        # psycopg2 needs the cursor alive until the query's result has been polled.
        self._cursor = self._conn.cursor(cursor_factory=psycopg2.extensions.cursor)
        self._cursor.execute(query, params)

    def _loop_poll(self) -> None:
        """Advance the connection; finish the command in flight; take its notifications.

        :raises _ConnectionLost: when the session is gone.
        """
        conn = self._conn
        assert conn is not None
        command = self._inflight
        try:
            state = conn.poll()
        except psycopg2.Error as exc:
            if conn.closed or command is None:
                raise _ConnectionLost(exc) from exc
            self._loop_take_notifies()
            self._inflight = None
            self._loop_fail(command, exc)
            return
        self._loop_take_notifies()
        if command is None:
            return
        if state == _POLL_OK:
            self._inflight = None
            self._loop_complete(command)
        else:
            self._inflight_wait = state

    def _loop_take_notifies(self) -> None:
        conn = self._conn
        assert conn is not None
        if conn.notifies:
            self._received += len(conn.notifies)
            self._pending.extend(conn.notifies)
            conn.notifies.clear()

    def _loop_complete(self, command: Command) -> None:
        """Apply a command that has succeeded on the server, then resolve its future.

        Notifications already received are dispatched first, so that a caller of ``notify``
        on a channel this dispatcher listens to finds its handlers already run. The future is
        resolved whatever happens while dispatching, so no caller is ever left waiting.
        """
        if isinstance(command, Heartbeat):
            self._loop_check_heartbeat()  # raises _ConnectionLost for a deaf session
            self._loop_schedule_heartbeat()
            self._loop_dispatch()
            return
        try:
            result = self._loop_apply(command)
        except Exception as exc:  # e.g. a result row of an unexpected shape
            self._loop_fail(command, exc)
            self._loop_dispatch()
            return
        try:
            self._loop_dispatch()
        finally:
            if isinstance(command, NotifyBatch):
                for notify in command.notifies:
                    notify.future.set_result(None)
            command.future.set_result(result)

    def _loop_apply(self, command: Command) -> Any:
        """Update the bookkeeping for a command the server has done; return its result."""
        if isinstance(command, Listen):
            self._explicit.add(command.channel)
            self._loop_route(command.channel)
        elif isinstance(command, Subscribe):
            self.signal(command.channel).connect(command.handler, weak=False)
            self._loop_route(command.channel)
        elif isinstance(command, Unlisten):
            self._explicit.discard(command.channel)
            self._unroute(command.channel)
        elif isinstance(command, Unsubscribe):
            self._disconnect(command.channel, command.handler)
            self._routing_version += 1
            channel = command.channel
            if not self._has_receivers(channel) and channel not in self._explicit:
                self._unroute(channel)
        elif isinstance(command, QueueUsage):
            assert self._cursor is not None
            row = self._cursor.fetchone()
            return None if row is None else float(row[0])
        return None

    def _loop_check_heartbeat(self) -> None:
        """Compare what the session listens to with what it should (a pooler loses LISTENs)."""
        assert self._cursor is not None
        row = self._cursor.fetchone()
        assert row is not None
        usage, channels = row
        self._queue_usage = float(usage)
        if self._queue_usage > self._queue_warning:
            log.warning(
                "the server's notification queue is %.0f%% full (a listener stuck in a long "
                "transaction keeps it from emptying; when full, every NOTIFY fails)",
                self._queue_usage * 100,
            )
        listening = set(channels)
        if listening != set(self._routes):
            missing = sorted(set(self._routes) - listening)
            raise _ConnectionLost(
                psycopg2.OperationalError(
                    f"the session stopped listening to {missing!r} (a pooler in transaction "
                    "mode? LISTEN needs session pooling)"
                )
            )

    def _loop_route(self, channel: str) -> None:
        self._routes[channel] = self.signal(channel)
        self._routing_version += 1
        self._want(channel)

    def _unroute(self, channel: str) -> None:
        """Stop routing ``channel``: no handler is called for it from now on (either side)."""
        self._routes.pop(channel, None)
        self._routing_version += 1
        self._unwant(channel)
        if self._work is not None:
            self._dropped += self._work.drop(channel)
        if not self._has_receivers(channel):
            self._signals.pop(channel, None)  # a web app's short-lived channels add up
        if self._pending:
            kept = collections.deque(n for n in self._pending if n.channel != channel)
            self._dropped += len(self._pending) - len(kept)
            self._pending = kept

    # ---------------------------------------------- the dispatcher thread: dispatching

    def _loop_dispatch(self) -> None:
        """Call the handlers of every pending notification, in arrival order.

        The hot path. A run of notifications on one channel reuses one snapshot of its
        handlers. Only a handler can change the routing while this runs (by an in-place
        call, which bumps ``_routing_version``), so the version is checked after each handler
        call, not per notification: an unlisten or unsubscribe made in place takes effect from
        the next handler call on. Handlers connected straight to a channel's signal from
        another thread are seen from the next batch on. Never re-entered: a handler's in-place
        call may receive notifications, which wait in ``_pending`` for this loop to reach them.
        """
        if self._dispatching:
            return
        if self._work is not None:
            self._loop_dispatch_to_executor(self._work)
            return
        self._dispatching = True
        dispatched = dropped = 0
        try:
            pending = self._pending
            popleft = pending.popleft
            cached_channel: str | None = None
            handlers: tuple[Handler, ...] = ()
            version = self._routing_version
            while pending and not self._halt:
                notification = popleft()
                channel = notification.channel
                if channel != cached_channel:
                    cached_channel = channel
                    handlers = self._handlers_for(channel)
                    if not handlers:
                        dropped += 1
                        continue
                elif not handlers:
                    dropped += 1
                    continue
                dispatched += 1
                for handler in handlers:
                    try:
                        handler(notification)
                    except Exception as exc:
                        self._report_handler_error(handler, notification, exc)
                    if self._routing_version != version:
                        version = self._routing_version
                        self._loop_call_still_connected(notification, handlers, handler)
                        cached_channel = None
                        pending = self._pending  # _unroute may have replaced it
                        popleft = pending.popleft
                        break
        finally:
            self._dispatching = False
            self._dispatched += dispatched
            self._dropped += dropped

    def _loop_dispatch_to_executor(self, work: ChannelWork) -> None:
        """Hand every pending notification to its channel's executor task, in order."""
        self._dispatching = True
        dispatched = dropped = 0
        try:
            pending = self._pending
            while pending and not self._halt:
                notification = pending.popleft()
                if not self._handlers_for(notification.channel):
                    dropped += 1
                elif work.hand_off(notification):
                    dispatched += 1
                else:
                    pending.appendleft(notification)  # backpressure: resume when drained
                    break
        finally:
            self._dispatching = False
            self._dispatched += dispatched
            self._dropped += dropped

    def _handle_on_executor(self, channel: str, notification: Any) -> None:
        """Executor thread: call ``channel``'s handlers, skipping any unsubscribed meanwhile."""
        version = self._routing_version
        for handler in self._handlers_for(channel):
            if self._routing_version != version and handler not in self._handlers_for(channel):
                continue  # unsubscribed (or unlistened) meanwhile
            try:
                handler(notification)
            except Exception as exc:
                self._report_handler_error(handler, notification, exc)

    def _wake_for_room(self) -> None:
        """Executor thread: handlers caught up; the dispatcher may read the socket again."""
        waker = self._waker
        if waker is not None:
            waker.wake_now()

    def _loop_call_still_connected(
        self, notification: Any, handlers: tuple[Handler, ...], last: Handler
    ) -> None:
        """After ``last`` changed the routing: call the rest of ``handlers`` still connected."""
        position = next(i for i, handler in enumerate(handlers) if handler is last)
        for handler in handlers[position + 1 :]:
            if handler not in self._handlers_for(notification.channel):
                continue  # unsubscribed, or the channel was unlistened, in place
            try:
                handler(notification)
            except Exception as exc:
                self._report_handler_error(handler, notification, exc)

    def _handlers_for(self, channel: str) -> tuple[Handler, ...]:
        """The handlers to call for ``channel`` now, in subscription order; ``()`` if none.

        Dispatcher thread, or an executor thread (a read of the routes only).
        """
        route = self._routes.get(channel)
        if route is None:
            return ()
        return tuple(
            handler
            for handler in map(_strong, tuple(route.receivers.values()))
            if handler is not None
        )

    def _report_handler_error(self, handler: Handler, notification: Any, error: Exception) -> None:
        """Log and signal a handler's exception (dispatcher or executor thread)."""
        self._handler_errors += 1
        log.error(
            "handler %r raised on channel %r",
            handler,
            notification.channel,
            exc_info=(type(error), error, error.__traceback__),
        )
        self._loop_send_lifecycle(
            signals.handler_error, handler=handler, notification=notification, error=error
        )

    def _loop_send_lifecycle(self, signal: blinker.Signal, **kwargs: Any) -> None:
        """Send a lifecycle signal; a receiver that raises is logged and never stops us."""
        for receiver in signal.receivers_for(self):
            try:
                receiver(self, **kwargs)
            except Exception:
                log.exception("receiver %r of a lifecycle signal raised", receiver)


_NOTIFY_SQL = "SELECT pg_notify(%s, %s)"
# unnest() yields the pairs in array order, so they are notified (and delivered) in order.
_NOTIFY_BATCH_SQL = "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)"
_HEARTBEAT_SQL = (
    "SELECT pg_notification_queue_usage(), array(SELECT pg_listening_channels())::text[]"
)
_QUEUE_USAGE_SQL = "SELECT pg_notification_queue_usage()"


def _unlisten_sql(channel: str) -> sql.Composable:
    return sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))


def _listen_sql(channels: list[str]) -> sql.Composable:
    """``LISTEN "a"; LISTEN "b"``: one round trip for any number of channels."""
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)


def _pair(item: Any) -> tuple[str, str]:
    if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
        raise TypeError(f"notify_many() takes (channel, payload) pairs, not {item!r}")
    return item[0], item[1]


def _strong(receiver: Any) -> Any:
    return receiver() if isinstance(receiver, weakref.ref) else receiver


def _fail(command: Command, stopped: DispatcherStopped, cause: BaseException | None) -> None:
    if isinstance(command, NotifyBatch):
        for notify in command.notifies:
            _fail(notify, stopped, cause)
    if not command.future.done():
        exc = DispatcherStopped(*stopped.args)
        exc.__cause__ = cause
        command.future.set_exception(exc)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
