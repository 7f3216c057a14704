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

PostgreSQL documentation relied on: NOTIFY, LISTEN, UNLISTEN (delivery at commit, session scope,
folding of identical notifications in one transaction) and libpq's asynchronous command
processing (section "Asynchronous Notification").
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import blinker
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from . import signals
from ._commands import Command, Handler, Listen, Notify, Subscribe, Unlisten, Unsubscribe
from ._names import check_channel
from ._waiting import Waker, wait
from .errors import DispatcherStopped

__all__ = ["Dispatcher"]

log = logging.getLogger("pgpubsub_dispatch")

H = TypeVar("H", bound=Handler)

_POLL_OK = psycopg2.extensions.POLL_OK
_POLL_READ = psycopg2.extensions.POLL_READ
_POLL_WRITE = psycopg2.extensions.POLL_WRITE

_UNLISTEN_ON_STOP_SECONDS = 1.0
"""How long ``stop()`` lets ``UNLISTEN *`` take before closing the connection anyway."""

_STOP_GRACE_SECONDS = 5.0
"""How long ``stop()`` lets a command already sent finish before failing it."""

_RESERVED_KWARGS = frozenset({"async", "async_", "connection_factory"})


class _State(enum.Enum):
    IDLE = "idle"  # never started, or stopped: calls record their changes
    STARTING = "starting"  # thread connecting: calls queue up
    RUNNING = "running"
    STOPPING = "stopping"  # calls fail with DispatcherStopped


class Dispatcher:
    """Route PostgreSQL notifications to per-channel blinker signals, from one thread.

    ``Dispatcher(dsn=None, /, **connect_kwargs)`` takes the arguments of
    :func:`psycopg2.connect`: a libpq connection string or URI, keyword parameters, or both
    (keywords win); with neither, libpq reads its environment (``PGHOST``, ``PGDATABASE``, ...).
    Nothing connects until :meth:`start`.

    Every method may be called from any thread, including from a handler (it then runs in
    place on the dispatcher thread).

    :param dsn: libpq connection string or URI, or ``None``.
    :param connect_kwargs: libpq parameters (``host``, ``dbname``, ``user``, ``connect_timeout``,
        ...) as for :func:`psycopg2.connect`.
    :raises TypeError: if ``dsn`` is not a ``str`` or ``None``, or a keyword is one the
        dispatcher sets itself (``async_``, ``connection_factory``).
    """

    def __init__(self, dsn: str | None = None, /, **connect_kwargs: Any) -> None:
        if dsn is not None and not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str or None, not {type(dsn).__name__}")
        reserved = _RESERVED_KWARGS.intersection(connect_kwargs)
        if reserved:
            raise TypeError(f"the dispatcher sets {', '.join(sorted(reserved))} itself")
        self._dsn = dsn
        self._connect_kwargs = dict(connect_kwargs)

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
        self._channels: frozenset[str] = frozenset()
        self._backend_pid: int | None = None

        # Dispatcher thread only.
        self._conn: psycopg2.extensions.connection | None = None
        self._routes: dict[str, blinker.Signal] = {}  # channels LISTENed on this session
        self._pending: collections.deque[Any] = collections.deque()
        self._inflight: Command | None = None
        self._cursor: psycopg2.extensions.cursor | None = None
        self._inflight_wait = _POLL_OK
        self._dispatching = False
        self._stop_requested = False

    # ------------------------------------------------------------------ public, any thread

    def __repr__(self) -> str:
        return f"<Dispatcher {self._state.value} channels={sorted(self._channels)!r}>"

    def __enter__(self) -> Dispatcher:
        """Start the dispatcher (see :meth:`start`) and return it."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the dispatcher (see :meth:`stop`)."""
        self.stop()

    @property
    def running(self) -> bool:
        """``True`` between a successful :meth:`start` and :meth:`stop` (or a lost connection)."""
        return self._state is _State.RUNNING

    @property
    def backend_pid(self) -> int | None:
        """The ``int`` pid of the current server session, or ``None`` when not connected."""
        return self._backend_pid

    @property
    def channels(self) -> frozenset[str]:
        """The ``frozenset[str]`` of channels listened to (or to be, at the next ``start()``)."""
        return self._channels

    def start(self, timeout: float | None = None) -> Dispatcher:
        """Connect, LISTEN every recorded channel, and return once notifications flow.

        A notification committed by anyone after this returns is delivered. ``connected`` is
        sent (on the dispatcher thread) before it returns.

        :param timeout: seconds to allow for connecting and LISTENing; ``None`` uses the
            ``connect_timeout`` connection parameter when given, else waits without end.
        :returns: ``self``, so that ``bus = Dispatcher(dsn).start()`` works.
        :raises RuntimeError: if the dispatcher is already running or starting.
        :raises psycopg2.OperationalError: if the connection attempt fails (then no thread is
            left running); any ``psycopg2.Error`` if a LISTEN fails.
        :raises TimeoutError: if ``timeout`` passes first.
        :raises DispatcherStopped: if ``stop()`` is called while starting.
        """
        deadline = _deadline(timeout if timeout is not None else self._connect_timeout())
        with self._lock:
            if self._state is not _State.IDLE:
                raise RuntimeError(f"the dispatcher is {self._state.value}; stop() it first")
            self._state = _State.STARTING
            self._stop_requested = False
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
            return
        if threading.get_ident() == thread.ident:
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("stop(): the dispatcher thread did not end within %s s", timeout)

    def listen(self, channel: str, timeout: float | None = None) -> None:
        """LISTEN to ``channel``; idempotent.

        On a running dispatcher, returns once the LISTEN has committed, so a notification
        committed after it returns is delivered. Before :meth:`start`, records the channel.

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
        dispatcher listens to ``channel``, its handlers have run when this returns. To notify
        inside your own transaction (sent only if it commits), run ``pg_notify`` on your own
        connection instead.

        :param channel: exact, case-sensitive channel name (at most 63 bytes in UTF-8).
        :param payload: text shorter than 8000 bytes in UTF-8, without NUL.
        :param timeout: seconds to wait; ``None`` waits as long as it takes.
        :raises InvalidChannelName: if the channel name is not acceptable.
        :raises TypeError: if ``payload`` is not a ``str``.
        :raises PayloadTooLarge: if ``payload`` is 8000 bytes or more in UTF-8.
        :raises ValueError: if ``payload`` contains NUL.
        :raises DispatcherStopped: if the dispatcher is not running, or stops first.
        :raises psycopg2.Error: what the server raised (e.g. ``too many notifications in the
            NOTIFY queue``, SQLSTATE 54000); the dispatcher keeps running.
        :raises TimeoutError: if ``timeout`` passes first (it may still be sent).
        """
        self._submit(Notify(channel, payload), timeout)

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
        :returns: the same :class:`blinker.Signal` for the same channel, always.
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

    def _request_stop(self) -> threading.Thread | None:
        """Ask the thread to stop; return it, or ``None`` when there is none to stop."""
        with self._lock:
            thread = self._thread
            if self._state is _State.IDLE or thread is None:
                return None
            if self._state is not _State.STOPPING:
                self._state = _State.STOPPING
                self._stop_requested = True
                if self._waker is not None:
                    self._waker.wake()
            return thread

    def _connect_timeout(self) -> float | None:
        value = self._connect_kwargs.get("connect_timeout")
        if value is None and self._dsn:
            try:
                value = psycopg2.extensions.parse_dsn(self._dsn).get("connect_timeout")
            except psycopg2.ProgrammingError:
                value = None  # psycopg2.connect will report the malformed DSN itself
        try:
            seconds = float(value) if value is not None else 0.0
        except ValueError:
            return None
        return seconds if seconds > 0 else None

    def _submit(self, command: Command, timeout: float | None) -> None:
        """Have the dispatcher thread run ``command``; record it instead when not running."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        if threading.get_ident() == self._loop_ident:
            self._loop_run_in_place(command, _deadline(timeout))
            return
        with self._lock:
            if self._state is _State.IDLE:
                self._record(command)
                return
            if self._state is _State.STOPPING:
                raise DispatcherStopped("the dispatcher is stopping")
            self._queue.append(command)
            assert self._waker is not None
            self._waker.wake()
        try:
            command.future.result(timeout)
        except FutureTimeout:
            command.future.cancel()  # if the thread has not taken it yet, it never will
            raise TimeoutError(
                f"{type(command).__name__.lower()} did not complete within {timeout} s"
            ) from None
        except CancelledError:
            raise DispatcherStopped("the dispatcher stopped before serving the call") from None

    def _record(self, command: Command) -> None:
        """Apply ``command`` to the bookkeeping of a dispatcher that is not running."""
        if isinstance(command, Notify):
            raise DispatcherStopped("notify() needs a running dispatcher: call start() first")
        if isinstance(command, Listen):
            self._explicit.add(command.channel)
            self._want(command.channel)
        elif isinstance(command, Unlisten):
            self._explicit.discard(command.channel)
            self._unwant(command.channel)
        elif isinstance(command, Subscribe):
            self.signal(command.channel).connect(command.handler, weak=False)
            self._want(command.channel)
        elif isinstance(command, Unsubscribe):
            self._disconnect(command.channel, command.handler)
            if not self._has_receivers(command.channel) and command.channel not in self._explicit:
                self._unwant(command.channel)

    # ------------------------------------------------------------- bookkeeping, either side

    def _want(self, channel: str) -> None:
        if channel not in self._wanted:
            self._wanted.add(channel)
            self._channels = frozenset(self._wanted)

    def _unwant(self, channel: str) -> None:
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._channels = frozenset(self._wanted)

    def _disconnect(self, channel: str, handler: Handler) -> None:
        found = self._signals.get(channel)
        if found is not None:
            found.disconnect(handler)

    def _has_receivers(self, channel: str) -> bool:
        found = self._signals.get(channel)
        return found is not None and bool(found.receivers)

    # --------------------------------------------------------------- the dispatcher thread

    def _loop_main(self, started: Future[None], deadline: float | None) -> None:
        """Body of the dispatcher thread: connect, serve, and always clean up."""
        self._loop_ident = threading.get_ident()
        try:
            self._loop_connect(deadline)
        except BaseException as exc:
            self._loop_abandon_start()
            started.set_exception(exc)
            return
        error: BaseException | None = None
        try:
            with self._lock:
                if self._state is _State.STARTING:
                    self._state = _State.RUNNING
            assert self._backend_pid is not None
            self._loop_send_lifecycle(signals.connected, backend_pid=self._backend_pid)
            started.set_result(None)
            self._loop_serve()
        except BaseException as exc:  # connection lost, or a bug: never leave callers hanging
            error = exc
            if not isinstance(exc, psycopg2.Error):
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

    def _loop_connect(self, deadline: float | None) -> None:
        """Open the connection and LISTEN every wanted channel in one round trip."""
        self._conn = psycopg2.connect(self._dsn, async_=True, **self._connect_kwargs)
        self._loop_wait_until_ok(deadline, "connecting")
        self._backend_pid = self._conn.get_backend_pid()
        log.info("connected, backend pid %d", self._backend_pid)
        channels = sorted(self._wanted)
        if channels:
            self._loop_execute(_listen_sql(channels))
            self._loop_wait_until_ok(deadline, "LISTENing")
        for channel in channels:
            self._routes[channel] = self.signal(channel)
        self._loop_take_notifies()

    def _loop_wait_until_ok(
        self, deadline: float | None, doing: str, *, stoppable: bool = True
    ) -> None:
        """Poll the connection until it is idle, honouring ``deadline`` and ``stop()``."""
        assert self._conn is not None and self._waker is not None
        state = self._conn.poll()
        while state != _POLL_OK:
            if stoppable and self._stop_requested:
                raise DispatcherStopped(f"stopped while {doing}")
            remaining = _remaining(deadline)
            if remaining == 0.0:
                raise TimeoutError(f"timed out while {doing}")
            fd = self._conn.fileno()
            if state == _POLL_READ:
                wait([fd, self._waker.fileno()], [], remaining)
            else:
                wait([self._waker.fileno()], [fd], remaining)
            self._waker.clear()
            state = self._conn.poll()

    def _loop_serve(self) -> None:
        """Run commands and dispatch notifications until stop() or a lost connection."""
        conn, waker = self._conn, self._waker
        assert conn is not None and waker is not None
        conn_fd, wake_fd = conn.fileno(), waker.fileno()
        grace_deadline: float | None = None  # for a command in flight when stop() came
        while True:
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
                self._loop_dispatch()
                if self._stop_requested:
                    return
                if self._queue:
                    continue  # a handler queued work, or it arrived while dispatching
            if self._inflight is not None and self._inflight_wait == _POLL_WRITE:
                wait([wake_fd], [conn_fd], _remaining(grace_deadline))
            else:
                wait([conn_fd, wake_fd], [], _remaining(grace_deadline))
            waker.clear()
            self._loop_poll()

    def _loop_start_next_command(self) -> None:
        """Take queued commands until one needs the server (or the queue is empty)."""
        while self._queue and self._inflight is None:
            command = self._queue.popleft()
            if command.future.set_running_or_notify_cancel():
                self._loop_begin(command)

    def _loop_run_in_place(self, command: Command, deadline: float | None) -> None:
        """Run ``command`` now, on the dispatcher thread (a call made from a handler)."""
        if self._state is not _State.RUNNING or self._stop_requested or self._conn is None:
            raise DispatcherStopped("the dispatcher is stopping")
        if self._inflight is not None:  # cannot happen from a handler; defend the invariant
            raise RuntimeError("the dispatcher connection is busy")
        command.future.set_running_or_notify_cancel()
        self._loop_begin(command)
        while self._loop_busy_with(command):
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
        command.future.result(0)

    def _loop_busy_with(self, command: Command) -> bool:
        return self._inflight is command

    def _loop_begin(self, command: Command) -> None:
        """Send ``command``'s SQL, or complete it at once when it needs none."""
        statement = self._loop_statement_for(command)
        if statement is None:
            self._loop_complete(command)
            return
        try:
            self._loop_execute(*statement)
        except psycopg2.OperationalError:
            raise  # the connection is gone: the serving loop ends
        except Exception as exc:
            command.future.set_exception(exc)
            return
        self._inflight = command
        self._loop_poll()

    def _loop_statement_for(self, command: Command) -> tuple[str | sql.Composable, Any] | None:
        """The SQL that ``command`` needs on this session, or ``None`` if it needs none."""
        if isinstance(command, Notify):
            return _NOTIFY_SQL, (command.channel, command.payload)
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
            remaining = [r for r in self._receivers(channel) if r != command.handler]
            if remaining:
                return None
            return _unlisten_sql(channel), None
        raise TypeError(f"unknown command {command!r}")

    def _loop_execute(self, query: str | sql.Composable, params: Any = None) -> None:
        assert self._conn is not None
        self._inflight_wait = _POLL_WRITE  # until the first poll() says otherwise
        # psycopg2 needs the cursor alive until the query's result has been polled.
        self._cursor = self._conn.cursor()
        self._cursor.execute(query, params)

    def _loop_poll(self) -> None:
        """Advance the connection; finish the command in flight; take its notifications.

        :raises psycopg2.OperationalError: when the connection is lost.
        """
        conn = self._conn
        assert conn is not None
        command = self._inflight
        try:
            state = conn.poll()
        except psycopg2.Error as exc:
            if conn.closed or command is None:
                raise  # the connection is lost
            self._loop_take_notifies()
            self._inflight = None
            if command is not None:
                command.future.set_exception(exc)
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
            self._pending.extend(conn.notifies)
            conn.notifies.clear()

    def _loop_complete(self, command: Command) -> None:
        """Apply a command that has succeeded on the server, then resolve its future.

        Notifications already received are dispatched first, so that a caller of ``notify``
        on a channel this dispatcher listens to finds its handlers already run.
        """
        if isinstance(command, Listen):
            self._explicit.add(command.channel)
            self._loop_route(command.channel)
        elif isinstance(command, Subscribe):
            self._loop_route(command.channel)
            self.signal(command.channel).connect(command.handler, weak=False)
        elif isinstance(command, Unlisten):
            self._explicit.discard(command.channel)
            self._loop_unroute(command.channel)
        elif isinstance(command, Unsubscribe):
            self._disconnect(command.channel, command.handler)
            channel = command.channel
            if not self._has_receivers(channel) and channel not in self._explicit:
                self._loop_unroute(channel)
        self._loop_dispatch()
        command.future.set_result(None)

    def _loop_route(self, channel: str) -> None:
        self._routes[channel] = self.signal(channel)
        self._want(channel)

    def _loop_unroute(self, channel: str) -> None:
        self._routes.pop(channel, None)
        self._unwant(channel)
        if self._pending:
            self._pending = collections.deque(n for n in self._pending if n.channel != channel)

    def _receivers(self, channel: str) -> Iterable[Any]:
        found = self._signals.get(channel)
        if found is None:
            return ()
        return [_strong(r) for r in tuple(found.receivers.values())]

    def _loop_dispatch(self) -> None:
        """Call the handlers of every pending notification, in arrival order.

        Never re-entered: a handler's in-place call may receive notifications, which wait in
        ``_pending`` for this loop to reach them.
        """
        if self._dispatching:
            return
        self._dispatching = True
        try:
            pending, routes = self._pending, self._routes
            while pending and not self._stop_requested:
                notification = pending.popleft()
                route = routes.get(notification.channel)
                if route is None:
                    continue
                for receiver in tuple(route.receivers.values()):
                    handler = _strong(receiver)
                    if handler is None:
                        continue
                    try:
                        handler(notification)
                    except Exception as exc:
                        self._loop_report_handler_error(handler, notification, exc)
                    if routes.get(notification.channel) is not route:
                        break  # a handler unlistened the channel: call no one else for it
                pending = self._pending  # _loop_unroute may have replaced it
        finally:
            self._dispatching = False

    def _loop_report_handler_error(
        self, handler: Handler, notification: Any, error: Exception
    ) -> None:
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
        while self._queue:
            _fail(self._queue.popleft(), stopped, error)
        if error is None and self._conn is not None and not self._conn.closed:
            try:
                self._loop_execute(sql.SQL("UNLISTEN *"))
                self._loop_wait_until_ok(
                    _deadline(_UNLISTEN_ON_STOP_SECONDS), "UNLISTENing", stoppable=False
                )
            except Exception as exc:  # closing ends the session's LISTENs anyway
                log.debug("UNLISTEN * on stop failed: %s", exc)
        self._loop_close()
        self._pending.clear()
        self._routes.clear()
        self._cursor = None
        with self._lock:
            self._finish_locked(error)
        # From here on, calls made by receivers take the not-running path (record or raise).
        self._loop_send_lifecycle(signals.disconnected, error=error)

    def _loop_close(self) -> None:
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
        self._stop_requested = False
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        if error is not None and not isinstance(error, DispatcherStopped):
            log.warning("the dispatcher stopped: %s", error)


_NOTIFY_SQL = "SELECT pg_notify(%s, %s)"

def _unlisten_sql(channel: str) -> sql.Composable:
    return sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))


def _listen_sql(channels: list[str]) -> sql.Composable:
    """``LISTEN "a"; LISTEN "b"``: one round trip for any number of channels."""
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)


def _strong(receiver: Any) -> Any:
    return receiver() if isinstance(receiver, weakref.ref) else receiver


def _fail(command: Command, stopped: DispatcherStopped, cause: BaseException | None) -> None:
    if not command.future.done():
        exc = DispatcherStopped(*stopped.args)
        exc.__cause__ = cause
        command.future.set_exception(exc)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
