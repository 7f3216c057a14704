"""The side session: a second connection, opened on first need, for ``notify`` and
``queue_usage`` calls that must not wait for the listening session.

Dispatcher thread only (``Loop`` polls it in the same wait as the listening session).

Why it exists: under backpressure the dispatcher reads nothing from the listening session, so
that the backlog stays in the server's queue and memory stays bounded. No statement can run
there meanwhile: the server sends a session every notification it has queued for it before it
answers (before ReadyForQuery), so libpq would read the whole backlog to get the answer. A
notify needs no LISTEN, so it runs here instead: while backpressured, and always when a
handler running on the executor calls it, because such a caller could otherwise wait for its
own channel to drain, which waits for it (a deadlock). This session LISTENs to nothing, so it
never receives a notification.

Its commands run one at a time, in the order given, consecutive plain notifies sharing one
transaction as on the listening session (any other command, such as a gap-free notify, is
sent alone); the listening session takes no notify while this one
has any, so commits keep the callers' order. A failure closes it and fails the command in
flight (a notify "may or may not have committed", as on the listening session); the next
command opens it again. It is closed when the dispatcher stops or loses its session.
Opening it blocks the dispatcher thread for the connection's time (each attempt bounded by
``connect_timeout``, interrupted by ``stop()``): the dispatcher reads nothing meanwhile, which
under backpressure it would not do anyway.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import psycopg2

from . import _timeouts
from ._commands import Command, Notify, gather_notifies
from ._options import Options
from ._routing import Routes
from ._session import POLL_OK, POLL_WRITE, Session, one_line
from ._waiting import Waker
from .errors import DispatcherStopped, NotConnected

__all__ = ["SideSession"]

log = logging.getLogger("pgpubsub_dispatch")


class SideSession:
    """The side connection and its queue of commands (dispatcher thread only).

    :param options: the dispatcher's options (where to connect, deadlines).
    :param routes: the routing table (commands read it to build their statement).
    """

    def __init__(self, options: Options, routes: Routes) -> None:
        self._options = options
        self.routes = routes
        self.session: Session | None = None
        self.queue: collections.deque[Command] = collections.deque()
        """Commands given to this session and not yet sent (their callers may still cancel)."""
        self.opened = 0
        """How many times the connection was opened (for tests and ``stats()``)."""

    @property
    def busy(self) -> bool:
        """Whether a command is queued here or in flight."""
        return bool(self.queue) or self.inflight is not None

    @property
    def inflight(self) -> Command | None:
        """The command whose statement is on its way, or ``None``."""
        return None if self.session is None else self.session.inflight

    def submit(self, command: Command) -> None:
        """Queue ``command`` (not taken yet: its caller may still give up)."""
        self.queue.append(command)

    def start_next(self, waker: Waker, between_waits: Callable[[], None]) -> None:
        """Send the next queued command when none is in flight, opening the session if needed.

        :param between_waits: called while connecting (raises ``DispatcherStopped`` to stop).
        :raises DispatcherStopped: if ``stop()`` is called while connecting.
        """
        if not self.queue or self.inflight is not None:
            return
        if self.session is None and not self._open(waker, between_waits):
            return
        session = self.session
        assert session is not None
        while self.queue and session.inflight is None:
            command = self.queue.popleft()
            if not command.take():
                continue
            if type(command) is Notify and not command.alone:
                command = gather_notifies(command, self.queue, keep_handler_calls_apart=False)
            statement = command.statement(self.routes)
            if statement is None:
                command.resolve(command.apply(self))
                continue
            try:
                session.send(command, statement, self._deadline())
            except psycopg2.Error as exc:
                if session.closed:
                    self._lose(self._options.secrets.redacted(exc), command)
                    return
                command.refused(exc, self._requeue)
                continue
            except Exception as exc:  # e.g. UnicodeEncodeError
                command.refused(exc, self._requeue)
                continue
            self.poll()

    def _open(self, waker: Waker, between_waits: Callable[[], None]) -> bool:
        try:
            self.session = Session.open(self._options, waker, None, between_waits)
        except (psycopg2.Error, TimeoutError) as exc:
            error = self._options.secrets.redacted(exc)
            log.warning("could not open the side connection: %s", one_line(error))
            failure = NotConnected(f"not sent: the side connection failed: {one_line(error)}")
            failure.__cause__ = error
            while self.queue:
                command = self.queue.popleft()
                if command.take():
                    command.refused(failure, self._requeue)
            return False
        self.opened += 1
        log.debug("side connection open, backend pid %d", self.session.backend_pid)
        return True

    def _requeue(self, notifies: list[Notify]) -> None:
        self.queue.extendleft(reversed(notifies))

    def _deadline(self) -> float | None:
        options = self._options
        if options.heartbeat_interval is None:
            return None
        return _timeouts.deadline(options.heartbeat_interval + options.heartbeat_timeout)

    def watch(self, reads: list[int], writes: list[int]) -> int | None:
        """Add the session's descriptor to what the loop waits for; return it (or ``None``).

        An idle session is watched for reading too, so that a server closing it is noticed.
        """
        session = self.session
        if session is None:
            return None
        if session.inflight is not None and session.waits_for == POLL_WRITE:
            writes.append(session.fd)
        else:
            reads.append(session.fd)
        return session.fd

    def poll(self) -> None:
        """Advance the session; finish the command in flight."""
        session = self.session
        assert session is not None
        try:
            state = session.poll()
        except psycopg2.Error as exc:
            command = session.finish()
            if session.closed or command is None:
                self._lose(self._options.secrets.redacted(exc), command)
            else:
                command.refused(exc, self._requeue)
            return
        if state == POLL_OK and session.inflight is not None:
            command = session.finish()
            assert command is not None
            try:
                result = command.apply(self)
            except Exception as exc:
                command.refused(exc, self._requeue)
                return
            command.resolve(result)

    def check_deadline(self) -> None:
        """Close the session if the statement in flight has made no progress in time."""
        session = self.session
        if session is None or session.inflight is None:
            return
        at = session.inflight_deadline
        if at is not None and _timeouts.remaining(at) == 0.0:
            self._lose(
                psycopg2.OperationalError(
                    "no answer from the server on the side connection in time: "
                    "the connection is presumed dead"
                ),
                session.finish(),
            )

    def next_deadline(self) -> float | None:
        """The monotonic instant by which the statement in flight must progress, or ``None``."""
        session = self.session
        return None if session is None or session.inflight is None else session.inflight_deadline

    def _lose(self, reason: BaseException, command: Command | None) -> None:
        if command is not None:
            log.warning("the side connection failed: %s", one_line(reason))
            command.interrupted(reason, self.routes)
        else:
            log.debug("the side connection closed: %s", one_line(reason))
        self.close()

    # Served, for Command.apply
    def fetch_row(self) -> tuple[Any, ...] | None:
        """The first row of the finished statement's result."""
        assert self.session is not None
        return self.session.fetch_row()

    def check_heartbeat(self, row: tuple[Any, ...]) -> None:
        """Never called: no heartbeat runs here."""
        raise AssertionError("no heartbeat runs on the side connection")

    def resynced(self, listened: frozenset[str], unlistened: frozenset[str]) -> None:
        """Never called: no LISTEN runs here."""
        raise AssertionError("no LISTEN runs on the side connection")

    # Ending
    def give_back(self, reason: BaseException) -> list[Command]:
        """The listening session was lost (``reason``): close, interrupt the command in
        flight, and return the unsent ones, to be held until the dispatcher reconnects."""
        command = None if self.session is None else self.session.finish()
        if command is not None:
            command.interrupted(reason, self.routes)
        self.close()
        queued = list(self.queue)
        self.queue.clear()
        return queued

    def stop(self, stopped: DispatcherStopped) -> None:
        """Fail everything with ``stopped`` and close (the dispatcher is stopping)."""
        command = None if self.session is None else self.session.finish()
        for each in (command, *self.queue):
            if each is not None:
                each.stopped(stopped)
        self.queue.clear()
        self.close()

    def close(self) -> None:
        """Close the connection, if open; never raises."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def forget(self) -> psycopg2.extensions.connection | None:
        """In a forked child: drop the connection without touching it; return it."""
        session, self.session = self.session, None
        self.queue.clear()
        return None if session is None else session.conn
