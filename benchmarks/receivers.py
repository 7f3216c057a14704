"""The receivers compared: our ``Dispatcher``, the bare psycopg2 loop and the peers.

Every receiver calls the same sink (see :mod:`.sinks`) once per notification and follows one
protocol, driven by the workloads:

1. :meth:`Receiver.open`: connect and LISTEN to the channel; returns once LISTENing. Our
   ``Dispatcher`` reads from then on; the others do not read before :meth:`Receiver.start`.
2. :meth:`Receiver.hold` (backlog workload only): make sure nothing is read until
   :meth:`Receiver.start`. Only the ``Dispatcher`` needs it: its thread is parked inside a
   handler of a gate channel, which a side connection notifies.
3. :meth:`Receiver.start`: start consuming (a thread of its own; for the ``Dispatcher``, open
   the gate if it is held).
4. :meth:`Receiver.close`: stop, disconnect; idempotent, never hangs for long.

Peers whose package is missing are reported by :meth:`Receiver.missing` and skipped.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import select
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg2
import psycopg2.extensions

from .senders import SideConnection
from .sinks import Sink

__all__ = ["BASELINE", "RECEIVERS", "Receiver", "receiver_classes"]

_JOIN_SECONDS = 10.0
_GATE_SECONDS = 10.0
_SELECT_SECONDS = 0.2


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Receiver:
    """One way of receiving notifications; see the module docstring for the protocol.

    :param dsn: where to connect.
    :param channel: the channel to LISTEN to (fresh for each measurement).
    :param sink: called with each notification (anything with ``channel``, ``payload``, ``pid``).
    """

    key: ClassVar[str] = ""
    label: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dsn: str, channel: str, sink: Sink) -> None:
        self.dsn = dsn
        self.channel = channel
        self.sink = sink
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @classmethod
    def missing(cls) -> str | None:
        """Why this receiver cannot run here (a package is missing), or ``None``."""
        absent = [name for name in cls.requires if importlib.util.find_spec(name) is None]
        if absent:
            return f"not installed: {', '.join(absent)} (pip install -e '.[bench]')"
        return None

    def open(self) -> None:
        """Connect and LISTEN; return once LISTENing."""
        raise NotImplementedError

    def hold(self) -> None:
        """Make sure nothing is read until :meth:`start` (a no-op unless reading already)."""

    def start(self) -> None:
        """Start consuming on a thread of the receiver's own."""
        self._thread = threading.Thread(target=self._guarded, name=f"bench-{self.key}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop consuming and disconnect; idempotent."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(_JOIN_SECONDS)
            self._thread = None
        self._disconnect()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _guarded(self) -> None:
        try:
            self._consume()
        except BaseException as exc:  # reported by the workload, never lost
            self.error = exc
            self.sink.event.set()

    def _consume(self) -> None:
        """The read loop, on the receiver's thread; returns once stopped or finished."""
        raise NotImplementedError

    def _wake(self) -> None:
        """Make a blocked read loop notice ``_stop`` (most loops poll it anyway)."""

    def _disconnect(self) -> None:
        """Close the connection."""


class Psycopg2Loop(Receiver):
    """The baseline: ``select()`` on the connection, ``poll()``, then every ``conn.notifies``.

    The notifies list is iterated and cleared after each ``poll()`` (not ``pop(0)`` one by one,
    which is quadratic in the batch size): the fastest form, so the baseline is a hard one.
    """

    key = "psycopg2"
    label = "psycopg2 loop"

    def __init__(self, dsn: str, channel: str, sink: Sink) -> None:
        super().__init__(dsn, channel, sink)
        self._conn: psycopg2.extensions.connection | None = None

    def open(self) -> None:
        self._conn = psycopg2.connect(self.dsn)
        self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(f"LISTEN {_quote_ident(self.channel)}")

    def _consume(self) -> None:
        self._read(self.sink)

    def _read(self, handler: Callable[[Any], Any]) -> None:
        """The loop itself, calling ``handler`` per notification until finished or stopped."""
        conn, sink, stop = self._conn, self.sink, self._stop
        assert conn is not None
        fd = conn.fileno()
        wait = select.select
        while not sink.finished and not stop.is_set():
            if wait([fd], [], [], _SELECT_SECONDS)[0]:
                conn.poll()
                notifies = conn.notifies
                for notification in notifies:
                    handler(notification)
                notifies.clear()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class BlinkerLoop(Psycopg2Loop):
    """The naive router: the bare loop, calling ``blinker.Signal.send`` per notification."""

    key = "blinker"
    label = "naive blinker"
    requires = ("blinker",)

    def _consume(self) -> None:
        import blinker

        signal = blinker.Signal()
        signal.connect(self.sink, weak=False)
        self._read(signal.send)


class DispatcherReceiver(Receiver):
    """Our ``Dispatcher`` with the sink subscribed as its one (no-op) handler."""

    key = "dispatcher"
    label = "Dispatcher"

    def __init__(self, dsn: str, channel: str, sink: Sink) -> None:
        super().__init__(dsn, channel, sink)
        self._bus: Any = None  # a started pgpubsub_dispatch.Dispatcher
        self._gate = threading.Event()

    def open(self) -> None:
        from pgpubsub_dispatch import Dispatcher

        self._bus = Dispatcher(self.dsn)
        self._bus.subscribe(self.channel, self.sink)
        self._bus.start()

    def hold(self) -> None:
        """Park the dispatcher thread in a handler of a gate channel until :meth:`start`."""
        entered = threading.Event()

        def gate(_notification: Any) -> None:
            entered.set()
            self._gate.wait(_GATE_SECONDS * 6)

        gate_channel = f"{self.channel}_gate"
        self._bus.subscribe(gate_channel, gate)
        side = SideConnection(self.dsn)
        try:
            side.notify(gate_channel)
        finally:
            side.close()
        if not entered.wait(_GATE_SECONDS):
            raise RuntimeError("the Dispatcher did not run the gate handler")

    def start(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        if self._bus is not None:
            self._bus.stop(timeout=_JOIN_SECONDS)
            self._bus = None


class Psycopg3Notifies(Receiver):
    """psycopg 3: ``for n in conn.notifies()`` on an autocommit connection."""

    key = "psycopg3"
    label = "psycopg 3 notifies()"
    requires = ("psycopg",)

    def __init__(self, dsn: str, channel: str, sink: Sink) -> None:
        super().__init__(dsn, channel, sink)
        self._conn: Any = None  # a psycopg.Connection
        self._needs_wake = False

    def open(self) -> None:
        import psycopg

        self._conn = psycopg.connect(self.dsn, autocommit=True)
        self._conn.execute(f"LISTEN {_quote_ident(self.channel)}")

    def _consume(self) -> None:
        conn, sink, stop = self._conn, self.sink, self._stop
        try:  # psycopg >= 3.2: the generator ends after a quiet `timeout`, so stop is seen
            conn.notifies(timeout=_SELECT_SECONDS).close()
            arguments: dict[str, Any] = {"timeout": _SELECT_SECONDS}
        except TypeError:  # psycopg 3.1: blocks until a notification; close() sends one
            arguments = {}
            self._needs_wake = True
        while not stop.is_set():
            for notification in conn.notifies(**arguments):
                sink(notification)
                if sink.finished:
                    return
            if sink.finished:
                return

    def _wake(self) -> None:
        """psycopg 3.1's ``notifies()`` blocks until a notification: send one."""
        if self._needs_wake and self._thread is not None and self._thread.is_alive():
            side = SideConnection(self.dsn)
            try:
                side.notify(self.channel, "stop")
            finally:
                side.close()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Note:
    """asyncpg's listener arguments as a notification object (what an application builds)."""

    __slots__ = ("channel", "payload", "pid")

    def __init__(self, channel: str, payload: str, pid: int) -> None:
        self.channel = channel
        self.payload = payload
        self.pid = pid


class AsyncpgListener(Receiver):
    """asyncpg: ``add_listener`` with a plain callback, its event loop on a thread of its own.

    The loop runs only between :meth:`start` and :meth:`close`, so asyncpg does not read
    before :meth:`start` (the backlog workload relies on that).
    """

    key = "asyncpg"
    label = "asyncpg add_listener"
    requires = ("asyncpg",)

    def __init__(self, dsn: str, channel: str, sink: Sink) -> None:
        super().__init__(dsn, channel, sink)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None  # an asyncpg.Connection
        self._stopped: asyncio.Future[None] | None = None

    def open(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._conn = self._loop.run_until_complete(self._connect())

    async def _connect(self) -> Any:
        asyncpg: Any = importlib.import_module("asyncpg")  # untyped
        conn = await asyncpg.connect(**_asyncpg_arguments(self.dsn))
        sink = self.sink

        def callback(_conn: Any, pid: int, channel: str, payload: str) -> None:
            sink(_Note(channel, payload, pid))

        await conn.add_listener(self.channel, callback)
        return conn

    def start(self) -> None:
        assert self._loop is not None
        self._stopped = self._loop.create_future()
        super().start()

    def _consume(self) -> None:
        assert self._loop is not None and self._stopped is not None
        self._loop.run_until_complete(self._stopped)

    def _wake(self) -> None:
        running = self._thread is not None and self._thread.is_alive()
        if self._loop is not None and self._stopped is not None and running:
            self._loop.call_soon_threadsafe(_resolve, self._stopped)

    def _disconnect(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._conn is not None:
            try:
                loop.run_until_complete(asyncio.wait_for(self._conn.close(), _JOIN_SECONDS))
            except Exception:
                self._conn.terminate()
            self._conn = None
        loop.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _asyncpg_arguments(dsn: str) -> dict[str, Any]:
    """asyncpg takes URIs but not libpq ``key=value`` strings: translate those."""
    if dsn.startswith(("postgres://", "postgresql://")):
        return {"dsn": dsn}
    parsed = psycopg2.extensions.parse_dsn(dsn) if dsn else {}
    names = {"host": "host", "port": "port", "user": "user", "password": "password"}
    arguments: dict[str, Any] = {names[k]: v for k, v in parsed.items() if k in names}
    if "dbname" in parsed:
        arguments["database"] = parsed["dbname"]
    if "port" in arguments:
        arguments["port"] = int(arguments["port"])
    return arguments


RECEIVERS: tuple[type[Receiver], ...] = (
    Psycopg2Loop,
    DispatcherReceiver,
    Psycopg3Notifies,
    AsyncpgListener,
    BlinkerLoop,
)
"""Every receiver, baseline first."""

BASELINE = Psycopg2Loop.key
"""The receiver every figure is compared with."""


def receiver_classes() -> dict[str, type[Receiver]]:
    """The receivers by key."""
    return {cls.key: cls for cls in RECEIVERS}
