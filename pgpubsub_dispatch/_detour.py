"""Serving calls without the listening session: under backpressure, and for executor handlers.

Dispatcher thread only (a :class:`Detour` belongs to the :class:`~pgpubsub_dispatch._loop.Loop`).

With an executor, when ``max_pending`` notifications wait for it, the dispatcher neither reads
nor writes the listening session until the executor makes room, so the backlog stays in the
server's queue and memory holds at most ``max_pending`` notifications plus what one read of
the socket brought. Nothing may run on that session meanwhile, because the server sends every
notification it has queued for a session before it answers it: any statement, even a
heartbeat, would make libpq read the whole backlog. So, while backpressured
(``Delivery.stalled``):

- a statement already in flight waits (its deadline paused, :meth:`Detour.note_stall`), and
  the heartbeat is postponed: the session's liveness is left to TCP keepalives, which the
  dispatcher turns on;
- ``notify`` and ``queue_usage`` run on the side session (``_side``);
- ``unlisten``/``unsubscribe`` take effect in the routing table at once (no handler is called
  after they return) and their UNLISTEN follows once backpressure ends (a ``Resync``);
- ``listen``/``subscribe`` wait for backpressure to end (their caller's timeout bounds it).

A handler running on the executor never waits for the listening session, backpressured or
not, since backpressure could begin under it and its own channel could then never drain: its
notifies always use the side session, and its channel changes are recorded at once, their
statements following (for ``listen``, as while reconnecting: a notification committed before
the LISTEN runs is not received). Without an executor none of this applies.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable

from ._commands import Command, Overtaken, Resync
from ._options import Options
from ._routing import Routes
from ._session import Session
from ._side import SideSession
from ._waiting import Waker
from .errors import DispatcherStopped

__all__ = ["Detour"]


class Detour:
    """The side session, the calls waiting for backpressure to end, and the LISTEN debt.

    :param options: the dispatcher's options (for the side session's connection).
    :param routes: the routing table.
    """

    def __init__(self, options: Options, routes: Routes) -> None:
        self._routes = routes
        self.side = SideSession(options, routes)
        self.waiting: collections.deque[Command] = collections.deque()
        """``listen``/``subscribe`` calls waiting for backpressure to end (not taken yet)."""
        self._unlisten_owed: set[str] = set()  # unrouted under backpressure, still LISTENed
        self._resync_due = False  # channel changes recorded under backpressure: catch up
        self._resync: Resync | None = None  # the catch-up sent last
        self._stalled_since: float | None = None

    def session_started(self) -> None:
        """A new session LISTENs to every wanted channel: nothing is owed any more."""
        self._unlisten_owed.clear()
        self._resync_due = False
        self._resync = None
        self._stalled_since = None

    def note_stall(self, stalled: bool, session: Session | None) -> bool:
        """Return ``stalled``; when backpressure ends, the paused deadline counts again.

        When backpressure begins while an ``unlisten`` or ``unsubscribe`` is on its way on the
        listening session, its answer would wait behind the unread backlog, and its caller
        with it: it is recorded in the routing table now and its caller answered, as if it
        had come during backpressure (:class:`~pgpubsub_dispatch._commands.Overtaken` stands
        in for it until the answer comes).
        """
        since = self._stalled_since
        if stalled and since is None:
            self._stalled_since = time.monotonic()
            if session is not None:
                self._overtake(session)
        elif not stalled and since is not None:
            self._stalled_since = None
            # The statement in flight was not read meanwhile: that was no fault of the server.
            if session is not None and session.inflight_deadline is not None:
                session.inflight_deadline += time.monotonic() - since
        return stalled

    def _overtake(self, session: Session) -> None:
        command = session.inflight
        if command is None or not command.removes_routes:
            return
        session.inflight = Overtaken(command)
        try:
            self._record_for_later(command)
        except Exception as exc:
            command.future.set_exception(exc)
        else:
            command.future.set_result(None)

    @property
    def ready_to_catch_up(self) -> bool:
        """Whether calls or channel changes wait for the listening session to be free."""
        return bool(self.waiting) or self._resync_due

    def catch_up(self, queue: collections.deque[Command]) -> Resync | None:
        """The listening session is usable again: requeue the waiting calls first, and return
        the :class:`Resync` of what changed meanwhile (already taken), if anything did."""
        if self.waiting:
            queue.extendleft(reversed(self.waiting))
            self.waiting.clear()
        if not self._resync_due:
            return None
        routes = self._routes
        self._resync_due = False
        owed = frozenset(self._unlisten_owed - routes.wanted)
        command = self._resync = Resync(routes.wanted - routes.listening, owed)
        command.take()
        return command

    @property
    def _listens_owed(self) -> bool:
        """Whether channel changes whose calls returned still wait for their statements."""
        resync = self._resync
        return self._resync_due or (resync is not None and not resync.future.done())

    def must_detour(self, command: Command, stalled: bool) -> bool:
        """Whether ``command`` is served here rather than on the listening session."""
        return (
            stalled
            or command.from_handler
            or (command.any_session and (self.side.busy or self._listens_owed))
        )

    def redirect(self, command: Command) -> None:
        """Serve ``command`` without the listening session (backpressure, or a handler's call).

        A notify or queue usage goes to the side session (also while it has others, so that
        commits keep their order); an unlisten or unsubscribe, or any channel change made by a
        handler on the executor, is recorded in the routing table at once, its statement
        following; a listen or subscribe from any other thread waits for backpressure to end,
        and so does a notify from another thread while channel changes made by handlers wait
        for their LISTEN: a call never overtakes a LISTEN whose call has returned.
        """
        if command.any_session and (command.from_handler or not self._listens_owed):
            self.side.submit(command)
        elif command.removes_routes or command.from_handler:
            if command.take():
                try:
                    self._record_for_later(command)
                except Exception as exc:
                    command.future.set_exception(exc)
                    return
                command.future.set_result(None)
        else:
            self.waiting.append(command)  # not taken: its caller can still give up

    def _record_for_later(self, command: Command) -> None:
        routes = self._routes
        before = routes.listening
        command.record(routes)
        self._unlisten_owed |= before - routes.listening  # the session still LISTENs to them
        self._resync_due = True

    def resynced(self, listened: frozenset[str], unlistened: frozenset[str]) -> None:
        """A :class:`Resync` committed: route what is still wanted, owe what no longer is."""
        routes = self._routes
        routes.session_also_listens(listened)
        self._unlisten_owed -= listened | unlistened
        gone = listened - routes.wanted  # unrouted while the statement was on its way
        if gone:
            self._unlisten_owed |= gone
            self._resync_due = True

    def start_side(self, waker: Waker, raise_if_stopping: Callable[[], None]) -> None:
        """Send the side session's next statement (opening it first if needed)."""
        with contextlib.suppress(DispatcherStopped):  # stop() while opening it: we stop next
            self.side.start_next(waker, raise_if_stopping)
