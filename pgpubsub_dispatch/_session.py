"""One server session: the psycopg2 connection in asynchronous mode and the statement in flight.

Dispatcher thread only. The connection is opened with ``async_=True``: a statement is sent,
then :meth:`Session.poll` is called each time the socket is ready, so no call ever blocks the
thread and every wait has a deadline (libpq's asynchronous command processing). After every
poll, notifications the connection has read are taken into the caller's queue, except the
dispatcher's own probe notifications (see ``_probe``), which are set aside in ``heard``.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from . import _timeouts
from ._commands import Command, Statement
from ._connection import describe_target
from ._options import Options
from ._routing import listen_sql
from ._waiting import Waker, wait
from .errors import InvalidChannelName

__all__ = [
    "POLL_OK",
    "POLL_READ",
    "POLL_WRITE",
    "Session",
    "SessionLost",
]

log = logging.getLogger("pgpubsub_dispatch")

POLL_OK = psycopg2.extensions.POLL_OK
POLL_READ = psycopg2.extensions.POLL_READ
POLL_WRITE = psycopg2.extensions.POLL_WRITE


class Session:
    """An open session; see :meth:`open`.

    :param conn: a connection made with ``async_=True`` that has finished connecting.
    :param params: the ``(dsn, connect_kwargs)`` it was made with (one host's, for failover).
    """

    def __init__(
        self, conn: psycopg2.extensions.connection, params: tuple[str | None, dict[str, Any]]
    ) -> None:
        self.conn = conn
        self.params = params
        self.fd = conn.fileno()
        self.libpq_pid: int = conn.get_backend_pid()
        """libpq's backend pid: a pooler (PgBouncer) makes one up."""
        self.backend_pid: int = self.libpq_pid
        """The server session's own pid (``pg_backend_pid()``), once read; libpq's until then."""
        self.server_encoding: str = conn.info.parameter_status("server_encoding") or "UTF8"
        self.probe_channel: str | None = None
        """Notifications on this channel are the dispatcher's probes: set aside in ``heard``."""
        self.heard: set[str] = set()
        self.expecting_probe = True
        """Whether a probe's notification may still arrive: only then is every notification
        read checked for the probe channel (a cost per notification, so not otherwise)."""
        """Payloads of the probe notifications received."""
        self.inflight: Command | None = None
        """The command whose statement is on its way, or ``None``."""
        self.inflight_deadline: float | None = None
        """Monotonic instant by which the statement in flight must have progressed."""
        self.waits_for = POLL_OK
        """What the statement in flight waits for: ``POLL_READ`` or ``POLL_WRITE``."""
        self._cursor: psycopg2.extensions.cursor | None = None

    @classmethod
    def open(
        cls,
        options: Options,
        waker: Waker,
        deadline: float | None,
        between_waits: Callable[[], None],
    ) -> Session:
        """Connect to the first host that answers, each within its ``connect_timeout``.

        :param between_waits: called after every wake-up (may raise to abandon the attempt).
        :raises psycopg2.Error, TimeoutError: the last host's error when none answers.
        """
        last_error: Exception | None = None
        for dsn, kwargs in options.alternatives:
            attempt = _timeouts.deadline(options.attempt_seconds)
            assert attempt is not None
            if deadline is not None and deadline < attempt:
                attempt = deadline
            conn: psycopg2.extensions.connection | None = None
            try:
                conn = psycopg2.connect(dsn, async_=True, **kwargs)
                _poll_until_ok(conn, waker, attempt, "connecting", between_waits)
                return cls(conn, (dsn, kwargs))
            except (psycopg2.Error, TimeoutError) as exc:
                if conn is not None:
                    _close(conn)
                last_error = exc
                if len(options.alternatives) > 1:
                    log.info(
                        "host %s failed: %s",
                        describe_target(dsn, kwargs),
                        options.secrets.redact(one_line(exc)),
                    )
                if _timeouts.remaining(deadline) == 0.0:
                    break
        assert last_error is not None
        raise last_error

    def send(self, command: Command, statement: Statement, deadline: float | None) -> None:
        """Send ``statement`` for ``command`` without waiting; it is in flight from here.

        :raises psycopg2.Error: if it cannot be sent (the connection may be closed).
        :raises Exception: what psycopg2 raises for parameters it cannot adapt.
        """
        self.waits_for = POLL_WRITE  # until the first poll() says otherwise
        # psycopg2 needs the cursor alive until the statement's result has been polled. One
        # cursor serves every statement in turn (making one took about 5 µs a notify).
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = self.conn.cursor(cursor_factory=psycopg2.extensions.cursor)
        cursor.execute(*statement)
        self.inflight = command
        self.inflight_deadline = deadline

    def execute_now(self, statement: Statement, waker: Waker, deadline: float | None) -> None:
        """Run ``statement`` to completion outside the command flow (``UNLISTEN *``, LISTENs).

        :raises psycopg2.Error, TimeoutError: if it fails or ``deadline`` passes.
        """
        self._cursor = self.conn.cursor(cursor_factory=psycopg2.extensions.cursor)
        self._cursor.execute(*statement)
        _poll_until_ok(self.conn, waker, deadline, "running " + str(statement[0])[:40], None)

    def listen_all(
        self,
        wanted: frozenset[str],
        probe_channel: str,
        check: Callable[[str], object],
        waker: Waker,
        deadline: float | None,
        *,
        reconnecting: bool,
    ) -> frozenset[str]:
        """LISTEN the probe channel and every wanted channel, and read the server's pid.

        On a reconnection, a channel the database cannot hold as a name is skipped (logged as
        an error), so that one name never makes every reconnection fail.

        :param check: raises ``InvalidChannelName`` for a name the database cannot hold.
        :returns: the channels now LISTENed (the probe's apart).
        :raises InvalidChannelName: at start, for a recorded name the database cannot hold.
        :raises psycopg2.Error, TimeoutError: if LISTENing fails or ``deadline`` passes.
        """
        refused: dict[str, BaseException] = {}
        for channel in sorted(wanted):
            try:
                check(channel)
            except InvalidChannelName as exc:
                if not reconnecting:
                    raise
                refused[channel] = exc
        channels = sorted(wanted - refused.keys())
        pid_sql = sql.SQL("SELECT pg_backend_pid()")
        statement = sql.SQL("; ").join([listen_sql([probe_channel, *channels]), pid_sql])
        try:
            self.execute_now((statement, None), waker, deadline)
        except psycopg2.DataError:  # class 22: a name the database encoding cannot hold
            if not reconnecting or self.closed:
                raise
            for channel in [probe_channel, *channels]:
                try:
                    self.execute_now((listen_sql([channel]), None), waker, deadline)
                except psycopg2.DataError as exc:
                    if self.closed or channel == probe_channel:
                        raise
                    refused[channel] = exc
            self.execute_now((pid_sql, None), waker, deadline)
        for channel, error in sorted(refused.items()):
            log.error("not listening to %r: %s", channel, one_line(error))
        row = self.fetch_row()
        if row is not None:
            self.backend_pid = int(row[0])
        return frozenset(channels) - refused.keys()

    def poll(self) -> int:
        """Advance the connection; return libpq's state (``POLL_OK`` when idle).

        :raises psycopg2.Error: what the server or the connection reported.
        """
        state: int = self.conn.poll()
        if state == POLL_OK and self.inflight is not None:
            # A notification that came in the same read as the statement's result sits in
            # libpq's buffer, unparsed, and the socket shows nothing more to read: one more
            # poll (the connection now idle) parses it, else it waits for the next statement.
            self.conn.poll()
        self.waits_for = state
        return state

    def take_notifies(self, into: collections.deque[Any]) -> int:
        """Move the notifications read so far to ``into``; return how many (probes apart)."""
        notifies = self.conn.notifies
        if not notifies:
            return 0
        if not self.expecting_probe:
            count = len(notifies)
            into.extend(notifies)
            notifies.clear()
            return count
        probe = self.probe_channel
        kept = [n for n in notifies if n.channel != probe]
        if len(kept) != len(notifies):
            self.heard.update(n.payload for n in notifies if n.channel == probe)
        into.extend(kept)
        notifies.clear()
        return len(kept)

    def fetch_row(self) -> tuple[Any, ...] | None:
        """The first row of the last statement's result (``None`` if it returned none)."""
        assert self._cursor is not None
        row: tuple[Any, ...] | None = self._cursor.fetchone()
        return row

    def finish(self) -> Command | None:
        """Mark the statement in flight done; return its command."""
        command, self.inflight = self.inflight, None
        return command

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by us, or found broken by psycopg2)."""
        return bool(self.conn.closed)

    def close(self) -> None:
        """Close the connection (ending its LISTENs); never raises."""
        self._cursor = None
        _close(self.conn)


def _poll_until_ok(
    conn: psycopg2.extensions.connection,
    waker: Waker,
    deadline: float | None,
    doing: str,
    between_waits: Callable[[], None] | None,
) -> None:
    """Poll ``conn`` until it is idle, waking for the waker too (to honour ``stop()``)."""
    started = time.monotonic()
    state = conn.poll()
    while state != POLL_OK:
        if _timeouts.remaining(deadline) == 0.0:
            raise TimeoutError(f"no answer in {time.monotonic() - started:.1f} s while {doing}")
        fd = conn.fileno()
        timeout = _timeouts.seconds_until(deadline)
        if state == POLL_READ:
            wait([fd, waker.fileno()], [], timeout)
        else:
            wait([waker.fileno()], [fd], timeout)
        waker.drain()
        if between_waits is not None:
            between_waits()
        state = conn.poll()


def _close(conn: psycopg2.extensions.connection) -> None:
    try:
        conn.close()
    except Exception as exc:  # pragma: no cover - close() on a broken socket
        log.debug("closing the connection failed: %s", exc)


class SessionLost(Exception):
    """Raised on the dispatcher thread when the session is gone; ``reason`` says why."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


def one_line(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
