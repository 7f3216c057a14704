"""Proving that the session hears: a notification sent from *another* session must arrive.

A connection pooler in transaction mode (PgBouncer ``pool_mode = transaction``) runs each
LISTEN on a server connection that is not linked to the client afterwards; notifications for it
are dropped by the pooler. Nothing the session can ask proves delivery: the server connection
keeps listing the channel in ``pg_listening_channels()``, and a session hears its own
notifications (``pg-rules``: "Pooling"). So the dispatcher LISTENs to a private probe channel,
and a short-lived connection made with the session's own parameters (so through the same
pooler) commits one ``pg_notify`` on it; the session must receive it within
:attr:`Probe.wait_seconds`. Probe notifications never reach handlers, ``channels`` or the
counters (:meth:`~pgpubsub_dispatch._session.Session.take_notifies` sets them aside).

Threads: :class:`Probe` belongs to the dispatcher thread. :class:`Sender` runs its connection on
a short-lived daemon thread of its own (``pgpubsub-probe-...``), every wait bounded by its
deadline, and wakes the dispatcher thread when it is done; its results (``committed_at``,
``error``) are written once, before ``done`` is set, and read by the dispatcher thread only
after ``done`` is set.
"""

from __future__ import annotations

import enum
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

from . import _timeouts
from ._options import Options
from ._waiting import wait

__all__ = ["DIRECT_PROBE_SECONDS", "PROBE_CHANNEL_PREFIX", "Probe", "Sender", "Verdict"]

log = logging.getLogger("pgpubsub_dispatch")

PROBE_CHANNEL_PREFIX = "pgpubsub_dispatch.probe."
"""The probe channel's name starts with this; a random suffix makes it the dispatcher's own."""

DIRECT_PROBE_SECONDS = 600.0
"""Seconds between probes on a direct connection (no pooler seen): one short connection each."""

PROBE_APPLICATION_NAME = "pgpubsub_dispatch probe"
"""``application_name`` of the probe's connection, so that administrators can tell it apart."""

_NOTIFY_SQL = "SELECT pg_notify(%s, %s)"


class Verdict(enum.Enum):
    """What a probe found."""

    HEARD = "heard"  # the notification arrived
    DEAF = "deaf"  # committed, and not received within the wait
    UNKNOWN = "unknown"  # could not be sent (server full, pool exhausted, ...): proves nothing


class Sender:
    """One probe notification, committed from a connection of its own on a thread of its own.

    :param params: the ``(dsn, connect_kwargs)`` the dispatcher's session connected with.
    :param channel: the probe channel.
    :param token: the payload, unique to this probe.
    :param deadline: monotonic instant by which it must have committed; its thread ends then.
    :param on_done: called (on the sender's thread) once it has committed or failed.
    """

    def __init__(
        self,
        params: tuple[str | None, dict[str, Any]],
        channel: str,
        token: str,
        deadline: float,
        on_done: Callable[[], None],
    ) -> None:
        self.done = threading.Event()
        self.committed_at: float | None = None
        """Monotonic instant the notification committed (set before ``done``)."""
        self.error: BaseException | None = None
        """Why it could not be sent (set before ``done``)."""
        self._params = params
        self._channel = channel
        self._token = token
        self._deadline = deadline
        self._on_done = on_done
        self._thread = threading.Thread(target=self._run, name=f"pgpubsub-probe-{token}")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        dsn, kwargs = self._params
        conn: psycopg2.extensions.connection | None = None
        try:
            kwargs = {**kwargs, "application_name": PROBE_APPLICATION_NAME}
            conn = psycopg2.connect(dsn, async_=True, **kwargs)
            self._poll(conn, "connecting")
            cursor = conn.cursor()  # kept alive until its result is polled (psycopg2 needs it)
            cursor.execute(_NOTIFY_SQL, (self._channel, self._token))
            self._poll(conn, "sending the probe")  # an async connection is in autocommit
            self.committed_at = time.monotonic()
        except BaseException as exc:  # the dispatcher thread reports it; nothing to raise to
            self.error = exc
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception as exc:  # pragma: no cover - close() on a broken socket
                    log.debug("closing the probe connection failed: %s", exc)
            self.done.set()
            self._on_done()

    def _poll(self, conn: psycopg2.extensions.connection, doing: str) -> None:
        state = conn.poll()
        while state != psycopg2.extensions.POLL_OK:
            remaining = _timeouts.remaining(self._deadline)
            if remaining == 0.0:
                raise TimeoutError(f"no answer in time while {doing}")
            if state == psycopg2.extensions.POLL_READ:
                wait([conn.fileno()], [], remaining)
            else:
                wait([], [conn.fileno()], remaining)
            state = conn.poll()


class Probe:
    """One dispatcher's probe: its channel, the probe in progress, and when the next is due.

    Dispatcher thread only (see the module's docstring).

    :param options: the dispatcher's options (heartbeat interval and timeout).
    :param wake: interrupts the dispatcher thread's wait (called from the sender's thread).
    """

    def __init__(self, options: Options, wake: Callable[[], None]) -> None:
        self.channel = PROBE_CHANNEL_PREFIX + secrets.token_hex(8)
        self._options = options
        self._wake = wake
        interval, timeout = options.heartbeat_interval, options.heartbeat_timeout
        self.wait_seconds = timeout if interval is None else min(timeout, interval / 2)
        """Seconds the probe may take to commit, and then to arrive: ``heartbeat_timeout``,
        at most half the heartbeat interval (so deafness is noticed within two intervals)."""
        self.due: float | None = None
        """Monotonic instant the next probe starts; ``None``: none scheduled."""
        self.after_heartbeat = False
        """Probe right after every heartbeat (a pooler is in the way, or the session was deaf):
        the heartbeat's transaction has just ended, so a transaction pooler has unlinked us."""
        self._sender: Sender | None = None
        self._token = ""
        self._send_by = 0.0
        self._count = 0

    @property
    def running(self) -> bool:
        """Whether a probe is in progress."""
        return self._sender is not None

    def begin(self, params: tuple[str | None, dict[str, Any]]) -> None:
        """Start a probe: its sender connects with ``params`` and notifies the probe channel."""
        self._count += 1
        self._token = f"{self._count}-{secrets.token_hex(4)}"
        self._send_by = time.monotonic() + self.wait_seconds
        self.due = None
        self._sender = Sender(params, self.channel, self._token, self._send_by, self._wake)

    def verdict(self, heard: set[str]) -> Verdict | None:
        """What the probe in progress found, given the probe payloads received (``heard``);
        ``None`` while it is still undecided."""
        sender = self._sender
        assert sender is not None
        if self._token in heard:
            return Verdict.HEARD
        now = time.monotonic()
        if not sender.done.is_set():
            return Verdict.UNKNOWN if now >= self._send_by else None
        if sender.committed_at is None:
            return Verdict.UNKNOWN
        return Verdict.DEAF if now >= sender.committed_at + self.wait_seconds else None

    def next_instant(self) -> float | None:
        """The monotonic instant something is due: a deadline of the probe in progress, or the
        start of the next one."""
        sender = self._sender
        if sender is None:
            return self.due
        if sender.committed_at is not None:
            return sender.committed_at + self.wait_seconds
        return self._send_by

    def why_unknown(self) -> str:
        """Why the probe in progress proved nothing (after :meth:`verdict` said ``UNKNOWN``)."""
        sender = self._sender
        if sender is None or sender.error is None:
            return f"it could not be sent within {self.wait_seconds:g} s"
        text = " ".join(str(sender.error).split())
        return f"{type(sender.error).__name__}: {text}" if text else type(sender.error).__name__

    def postpone(self) -> None:
        """Judge the probe in progress one wait later (the dispatcher was not reading)."""
        sender = self._sender
        if sender is not None and sender.committed_at is not None:
            sender.committed_at = time.monotonic()

    def finish(self, *, frequent: bool) -> None:
        """End the probe in progress (if any) and schedule the next one.

        :param frequent: probe after every heartbeat (a pooler is in the way, or the session
            was deaf); else every :data:`DIRECT_PROBE_SECONDS`. No heartbeat: no more probes.
        """
        self._sender = None
        self._token = ""
        self.after_heartbeat = frequent and self._options.heartbeat_interval is not None
        if frequent or self._options.heartbeat_interval is None:
            self.due = None
        else:
            self.due = time.monotonic() + DIRECT_PROBE_SECONDS

    def deaf_error_text(self) -> str:
        """The message of a :class:`~pgpubsub_dispatch.DeafSession` found by this probe."""
        return (
            f"a notification sent from another session did not arrive within "
            f"{self.wait_seconds:g} s: this session cannot receive notifications. LISTEN needs "
            "a connection that stays one server session: behind PgBouncer, use "
            "pool_mode = session (transaction and statement pooling cannot carry LISTEN), or "
            "connect to PostgreSQL directly"
        )
