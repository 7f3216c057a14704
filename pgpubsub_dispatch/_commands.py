"""The commands that cross from callers' threads to the dispatcher thread, with their behaviour.

Each command carries a :class:`~pgpubsub_dispatch._completion.Completion` (the caller waits on
it: a lighter ``concurrent.futures.Future``) and knows
what it does, as CPython's ``concurrent.futures`` work items do, so nobody switches on its type:
the SQL it needs on the current session (:meth:`Command.statement`), what it changes once the
server has done it (:meth:`Command.apply`), what it does without a session
(:meth:`Command.record`), and how it settles when refused or interrupted. Arguments are checked
when a command is built, in the caller's thread; every other method runs on the dispatcher
thread, or in a caller's thread while the dispatcher is not running (``record``).
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from psycopg2 import sql

from ._completion import Completion, finish_all, start_all
from ._names import DatabaseEncoding, check_channel, check_notification
from ._routing import Handler, Routes
from .errors import DispatcherStopped

__all__ = [
    "MAX_BATCH",
    "Command",
    "Heartbeat",
    "Listen",
    "Notify",
    "NotifyBatch",
    "Overtaken",
    "QueueUsage",
    "Resync",
    "Served",
    "Statement",
    "Subscribe",
    "Unlisten",
    "Unsubscribe",
    "gather_notifies",
    "text_array",
]

Statement = tuple["str | sql.Composable", Any]
"""A query and its parameters."""

log = logging.getLogger("pgpubsub_dispatch")

_NOTIFY_SQL = "SELECT pg_notify(%s, %s)"
# unnest() yields the pairs in array order, so they are notified (and delivered) in order.
_NOTIFY_BATCH_SQL = "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)"
_HEARTBEAT_SQL = (
    "SELECT pg_notification_queue_usage(), array(SELECT pg_listening_channels())::text[], "
    "pg_backend_pid()"
)
_QUEUE_USAGE_SQL = "SELECT pg_notification_queue_usage()"


class Served(Protocol):
    """What a command sees of the dispatcher thread when it completes."""

    routes: Routes

    def fetch_row(self) -> tuple[Any, ...] | None:
        """The first row of the statement's result."""

    def check_heartbeat(self, row: tuple[Any, ...]) -> None:
        """Judge a heartbeat's result; raise if the session is deaf."""

    def resynced(self, listened: frozenset[str], unlistened: frozenset[str]) -> None:
        """The session now LISTENs to ``listened`` too, and no longer to ``unlistened``."""


class Command:
    """Base of every command: the completion the caller waits on, and default behaviour."""

    __slots__ = ("from_handler", "future")

    needs_session = False
    """``True``: held while reconnecting, refused while stopped; ``False``: recorded."""

    any_session = False
    """``True``: needs no LISTEN, so it may run on the side session (notify, queue usage)."""

    removes_routes = False
    """``True``: it can only remove routes (unlisten, unsubscribe), so it may take effect in
    the routing table at once, its statement following when the listening session is free."""

    has_caller = True
    """``False`` for the dispatcher's own commands (heartbeat, catch-ups): nobody waits for
    them, so they are settled as soon as they complete, never held back with the callers'."""

    def __init__(self) -> None:
        # Notify sets these two itself (one call fewer a notify): keep it in step.
        self.future = Completion()
        self.from_handler = False
        """Set when a handler running on the executor made the call (see ``_loop``)."""

    @property
    def name(self) -> str:
        """A short name for messages (``listen``, ``notify``, ...)."""
        return type(self).__name__.lower()

    def take(self) -> bool:
        """Mark it running; ``False`` if its caller gave up first (then never run it)."""
        return self.future.set_running_or_notify_cancel()

    def statement(self, routes: Routes) -> Statement | None:
        """The SQL this needs on the current session, or ``None`` to complete at once."""
        return None

    def apply(self, served: Served) -> Any:
        """The server did it: update the bookkeeping; return the caller's result."""
        return None

    def resolve(self, result: Any) -> None:
        """Give the caller its result."""
        self.future.set_result(result)

    def record(self, routes: Routes) -> None:
        """Apply it without a session (not running, or reconnecting).

        :raises DispatcherStopped: for a command that needs a session.
        """
        raise DispatcherStopped("the dispatcher is not running (not started yet, or stopped)")

    def refused(self, error: BaseException, requeue: Callable[[list[Notify]], None]) -> None:
        """The server refused it (nothing committed): fail it."""
        self.future.set_exception(error)

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        """The session died under it: record it to be redone on reconnect, and resolve it."""
        self.record(routes)
        self.future.set_result(None)

    def stopped(self, error: DispatcherStopped) -> None:
        """The dispatcher stopped before serving it: fail it with a copy of ``error``."""
        if not self.future.done():
            copy = DispatcherStopped(*error.args)
            copy.__cause__ = error.__cause__
            self.future.set_exception(copy)


class Listen(Command):
    """LISTEN ``channel`` and remember that it was asked for explicitly."""

    __slots__ = ("channel",)

    def __init__(self, channel: str) -> None:
        super().__init__()
        self.channel = check_channel(channel)

    def statement(self, routes: Routes) -> Statement | None:
        routes.check_representable(self.channel)
        query = routes.listen_sql(self.channel)
        return None if query is None else (query, None)

    def apply(self, served: Served) -> Any:
        served.routes.listen(self.channel, listening=True)

    def record(self, routes: Routes) -> None:
        routes.check_representable(self.channel)
        routes.listen(self.channel, listening=False)


class Subscribe(Listen):
    """Add ``handler`` to the channel's handlers, LISTENing first if needed."""

    __slots__ = ("handler",)

    def __init__(self, channel: str, handler: Handler) -> None:
        super().__init__(channel)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self.handler = handler

    def apply(self, served: Served) -> Any:
        served.routes.subscribe(self.channel, self.handler, listening=True)

    def record(self, routes: Routes) -> None:
        routes.check_representable(self.channel)
        routes.subscribe(self.channel, self.handler, listening=False)


class Unlisten(Command):
    """UNLISTEN ``channel`` and drop its notifications already received."""

    __slots__ = ("channel",)

    removes_routes = True

    def __init__(self, channel: str) -> None:
        super().__init__()
        self.channel = check_channel(channel)

    def statement(self, routes: Routes) -> Statement | None:
        query = routes.unlisten_sql(self.channel)
        return None if query is None else (query, None)

    def apply(self, served: Served) -> Any:
        self.record(served.routes)

    def record(self, routes: Routes) -> None:
        routes.unlisten(self.channel)


class Unsubscribe(Command):
    """Remove ``handler``; UNLISTEN when nothing else wants the channel."""

    __slots__ = ("channel", "handler")

    removes_routes = True

    def __init__(self, channel: str, handler: Handler) -> None:
        super().__init__()
        self.channel = check_channel(channel)
        self.handler = handler

    def statement(self, routes: Routes) -> Statement | None:
        query = routes.unsubscribe_sql(self.channel, self.handler)
        return None if query is None else (query, None)

    def apply(self, served: Served) -> Any:
        self.record(served.routes)

    def record(self, routes: Routes) -> None:
        routes.unsubscribe(self.channel, self.handler)


class Notify(Command):
    """``pg_notify(channel, payload)``, committed before the caller's call returns.

    The dispatcher may send several queued notifies in one transaction (a
    :class:`NotifyBatch`), never two identical ones (the server would fold them). ``alone``
    marks one to be sent in a transaction of its own: set when a shared transaction failed,
    so each is retried by itself. ``encoding``: the database's, when known (the channel must
    be representable in it, and the payload is measured in it).
    """

    __slots__ = ("alone", "channel", "payload")

    needs_session = True
    any_session = True

    def __init__(
        self, channel: str, payload: str, encoding: DatabaseEncoding | None = None
    ) -> None:
        check_notification(channel, payload, encoding)
        self.future = Completion()  # Command.__init__, inline: one call fewer a notify()
        self.from_handler = False
        self.channel = channel
        self.payload = payload
        self.alone = False

    def take(self) -> bool:
        return self.alone or super().take()  # a retry was taken once already

    def statement(self, routes: Routes) -> Statement | None:
        return _NOTIFY_SQL, (self.channel, self.payload)

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        self.future.set_exception(reason)  # it may or may not have committed


class NotifyBatch(Command):
    """Queued notifies sent together in one transaction (built on the dispatcher thread)."""

    __slots__ = ("notifies",)

    needs_session = True
    any_session = True

    def __init__(self, notifies: list[Notify]) -> None:
        super().__init__()
        self.notifies = notifies

    @property
    def name(self) -> str:
        return "notify"

    def statement(self, routes: Routes) -> Statement | None:
        channels = text_array([notify.channel for notify in self.notifies])
        payloads = text_array([notify.payload for notify in self.notifies])
        return _NOTIFY_BATCH_SQL, (channels, payloads)

    def resolve(self, result: Any) -> None:
        # Their callers are woken one after another, not all at once (see _completion).
        finish_all([notify.future for notify in self.notifies], None)
        self.future.set_result(None)

    def refused(self, error: BaseException, requeue: Callable[[list[Notify]], None]) -> None:
        # Nothing of it committed; each is retried alone so one bad notify fails alone.
        for notify in self.notifies:
            notify.alone = True
        requeue(self.notifies)

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        for notify in self.notifies:
            notify.future.set_exception(reason)  # it may or may not have committed

    def stopped(self, error: DispatcherStopped) -> None:
        for notify in self.notifies:
            notify.stopped(error)


def text_array(texts: list[str]) -> str:
    """The ``text[]`` literal of ``texts``, none of which holds NUL (checked names and payloads).

    psycopg2 adapts a Python list element by element (about 4 µs each: a dispatcher thread
    sending 15 notifies spent 56 µs on it); here every element is quoted, its backslashes and
    double quotes escaped (PostgreSQL's array input syntax), in three replaces over one string.
    """
    if not texts:
        return "{}"
    joined = "\x00".join(texts)  # NUL cannot occur inside: it marks the boundaries
    return '{"' + joined.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", '","') + '"}'


class QueueUsage(Command):
    """``SELECT pg_notification_queue_usage()``: its result is the fraction (0.0 to 1.0)."""

    __slots__ = ()

    needs_session = True
    any_session = True

    def statement(self, routes: Routes) -> Statement | None:
        return _QUEUE_USAGE_SQL, None

    def apply(self, served: Served) -> Any:
        row = served.fetch_row()
        return None if row is None else float(row[0])

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        self.future.set_exception(reason)


class Heartbeat(Command):
    """The dispatcher's own liveness check: queue usage, ``pg_listening_channels()`` and the
    server session's pid (a transaction pooler changes it under us)."""

    __slots__ = ()

    has_caller = False

    def statement(self, routes: Routes) -> Statement | None:
        return _HEARTBEAT_SQL, None

    def apply(self, served: Served) -> Any:
        row = served.fetch_row()
        assert row is not None
        served.check_heartbeat(row)  # raises for a deaf session

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        self.future.set_result(None)  # nobody waits for it


class Overtaken(Command):
    """Stands in, on the listening session, for a route removal (``unlisten``, ``unsubscribe``)
    whose caller was answered before its statement's answer came: backpressure began while it
    was on its way, and its answer waits behind the unread backlog (see ``_detour``). The
    statement runs on; what it brings back is ignored."""

    __slots__ = ("_name",)

    has_caller = False

    def __init__(self, original: Command) -> None:
        super().__init__()
        self.take()
        self._name = original.name

    @property
    def name(self) -> str:
        return self._name

    def refused(self, error: BaseException, requeue: Callable[[list[Notify]], None]) -> None:
        self.future.set_result(None)  # the catch-up (Resync) UNLISTENs again anyway

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        self.future.set_result(None)  # a new session LISTENs only what is wanted


class Resync(Command):
    """The dispatcher's own catch-up: the LISTENs and UNLISTENs of channel changes that were
    recorded while the listening session could not be used (backpressure), in one round trip.
    """

    __slots__ = ("listen", "unlisten")

    has_caller = False

    def __init__(self, listen: frozenset[str], unlisten: frozenset[str]) -> None:
        super().__init__()
        self.listen = listen
        self.unlisten = unlisten

    def statement(self, routes: Routes) -> Statement | None:
        parts = [sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in sorted(self.listen)]
        parts += [sql.SQL("UNLISTEN {}").format(sql.Identifier(c)) for c in sorted(self.unlisten)]
        return (sql.SQL("; ").join(parts), None) if parts else None

    def apply(self, served: Served) -> Any:
        served.resynced(self.listen, self.unlisten)

    def refused(self, error: BaseException, requeue: Callable[[list[Notify]], None]) -> None:
        log.warning(
            "catching up with channel changes made under backpressure failed: %s (the "
            "next reconnection LISTENs every wanted channel)",
            " ".join(str(error).split()),
        )
        self.future.set_result(None)

    def interrupted(self, reason: BaseException, routes: Routes) -> None:
        self.future.set_result(None)  # nobody waits; the new session LISTENs what is wanted


MAX_BATCH = 1000
"""Most notifies sent in one transaction when callers queue them faster than they commit."""


def gather_notifies(
    first: Notify, queue: collections.deque[Command], *, keep_handler_calls_apart: bool
) -> Command:
    """Take the notifies queued right behind ``first`` to share its transaction.

    Stops at anything else (order is kept), at a retry, at a (channel, payload) pair already
    taken (the server folds identical notifications of one transaction), after
    :data:`MAX_BATCH`, and, with ``keep_handler_calls_apart``, at a call made by an executor
    handler (the listening session must leave those to the side session).

    :returns: ``first`` alone, or a :class:`NotifyBatch` of it and those taken (all taken).
    """
    if not queue or type(queue[0]) is not Notify:
        return first
    candidates: list[Notify] = []
    taken = {(first.channel, first.payload)}
    while queue and len(candidates) < MAX_BATCH - 1:
        candidate = queue[0]
        if type(candidate) is not Notify or candidate.alone:
            break
        if keep_handler_calls_apart and candidate.from_handler:
            break
        pair = (candidate.channel, candidate.payload)
        if pair in taken:
            break
        queue.popleft()
        candidates.append(candidate)
        taken.add(pair)
    # None is alone, so taking them is their futures' part of take(), done for all at once.
    started = start_all([candidate.future for candidate in candidates])
    batch = [first, *itertools.compress(candidates, started)]
    return first if len(batch) == 1 else NotifyBatch(batch)
