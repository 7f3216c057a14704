"""Counters of a dispatcher's life, and the :class:`DispatcherStats` snapshot made from them.

Thread contract: the dispatcher thread alone writes ``received``, ``dispatched``,
``reconnects``, ``last_error``, ``queue_usage``, ``deaf`` and ``pooler``; ``handler_errors``
and ``handler_dropped`` (written by whichever thread ran the handler: the dispatcher thread, an
executor's, an event loop's) and ``dropped`` (also written by a caller that unsubscribes while
the dispatcher stops) change only under ``Counters.lock``. Any thread
reads them (each is one ``int``, ``bool`` or ``str`` reference, read whole).
"""

from __future__ import annotations

import dataclasses
import threading

__all__ = ["Counters", "DispatcherStats"]


@dataclasses.dataclass(frozen=True)
class DispatcherStats:
    """A snapshot of a dispatcher's counters, from :meth:`Dispatcher.stats`.

    Counters cover the dispatcher's whole life (all starts), in notifications unless noted.

    Attributes:
        received: notifications read from the server.
        dispatched: notifications handed to the handlers of a listened channel.
        dropped: notifications discarded because their channel had no route (no handlers, or
            unlistened before they were dispatched), or received when ``stop()`` came.
        handler_errors: exceptions raised by handlers.
        reconnects: successful reconnections.
        last_error: text of the last connection error (passwords masked), or ``None``.
        backend_pid: pid of the current server session, ``None`` when not connected.
        queue_usage: the server's notification queue use (0.0 to 1.0) at the last heartbeat,
            ``None`` before the first.
        held: ``notify`` and ``queue_usage`` calls waiting for a session (while reconnecting).
        pending: notifications waiting for the executor (``executor=`` only; else 0).
        backpressure: ``True`` while ``max_pending`` is reached and the dispatcher reads
            nothing from the server until handlers catch up.
        handler_dropped: notifications a coroutine handler never received: its event loop
            fell more than ``COROUTINE_BUFFER`` (10,000) notifications behind (the oldest
            are dropped), its loop was closed, or it was unsubscribed before their turn came.
        deaf: ``True`` from a failed probe (a notification sent from another session did not
            arrive: a pooler in transaction mode) until a probe succeeds again.
        pooler: ``True`` when the current (or last) session goes through a connection pooler
            (libpq's backend pid is not the server session's).
        gapless_stale: live notifications of gap-free channels dropped because the server's
            counter never reached their position: a NOTIFY forged with ``pg_notify()``, or one
            sent before the channel's log was reset (0 without gap-free channels).
    """

    received: int
    dispatched: int
    dropped: int
    handler_errors: int
    reconnects: int
    last_error: str | None
    backend_pid: int | None
    queue_usage: float | None
    held: int = 0
    pending: int = 0
    backpressure: bool = False
    handler_dropped: int = 0
    deaf: bool = False
    pooler: bool = False
    gapless_stale: int = 0

    @property
    def connected(self) -> bool:
        """Whether a session was up when the snapshot was taken (``bool``)."""
        return self.backend_pid is not None


class Counters:
    """The running counts behind :class:`DispatcherStats` (see the module's thread contract)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        """Guards ``handler_errors``, ``handler_dropped`` and ``dropped``."""
        self.received = 0
        self.dispatched = 0
        self.dropped = 0
        self.handler_errors = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self.queue_usage: float | None = None
        self.deaf = False
        self.pooler = False
        self.handler_dropped = 0

    def after_fork(self) -> None:
        """In a child process: a new lock (the parent's may have been held at fork time)."""
        self.lock = threading.Lock()

    def count_dropped(self, count: int) -> None:
        """``count`` more notifications dropped (any thread)."""
        with self.lock:
            self.dropped += count

    def count_handler_error(self) -> None:
        """One more handler exception (any thread)."""
        with self.lock:
            self.handler_errors += 1

    def count_handler_dropped(self, count: int) -> None:
        """``count`` more notifications a coroutine handler's buffer dropped (any thread)."""
        with self.lock:
            self.handler_dropped += count
