"""The 2015 ``pgpubsub`` 0.0.5 API, kept working on top of :class:`Dispatcher`.

A program written for it runs with its import changed to ``import pgpubsub_dispatch as
pgpubsub``::

    pubsub = pgpubsub.connect(dbname="test")       # or pgpubsub.PubSub(your_connection)
    pubsub.listen("test")
    pubsub.notify("test", "message 1")
    pubsub.get_event()                             # Notify(pid, 'test', 'message 1')

What it is made of, and which thread runs what:

- a :class:`Dispatcher` (``reconnect=False`` unless asked) whose thread receives notifications
  and calls :meth:`_Inbox.put`, the only code of this module that runs on it;
- an :class:`_Inbox`, the queue between that thread and the callers' threads, guarded by its
  own condition variable. It references neither the :class:`PubSub` nor its
  :class:`Connection`, so the dispatcher thread never keeps them alive;
- a :class:`Connection`, ``pubsub.conn``: the psycopg2-connection stand-in. It owns the session:
  when it is garbage-collected without ``close()`` (as a 2015 connection was closed when
  collected), a ``weakref.finalize`` stops the dispatcher and closes the plain connection it
  opened, from a short-lived thread, so that a collection in any thread never blocks.

Differences from 2015, all for safety: channel names are read as SQL identifiers by a parser,
never pasted into SQL (a name that is not one identifier raises ``InvalidChannelName``); any
thread may call any method; a notification received before a lost connection is still returned
before the error.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions

from . import _timeouts, signals
from ._names import read_identifier
from .dispatcher import Dispatcher
from .errors import (
    ConnectionLost,
    DispatcherStopped,
    InvalidChannelName,
    NotConnected,
    PubSubClosed,
)
from .notification import Notification

__all__ = ["Connection", "PubSub", "connect"]

_DISPATCHER_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(Dispatcher).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)
"""Keywords of :class:`Dispatcher` itself, which a plain psycopg2 connection must not get."""

_NOT_A_LISTENING_CONNECTION = frozenset({"notifies", "poll", "fileno", "isexecuting"})
"""Attributes a plain connection has but that would silently say nothing here: the session
that listens is the dispatcher's, which no other thread may touch."""


class _Inbox:
    """Notifications waiting for a :class:`PubSub`, and why none may ever come.

    Filled by the dispatcher thread (:meth:`put`, :meth:`lost`); read by callers' threads.
    Every field is guarded by ``_ready``.
    """

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._items: collections.deque[Notification] = collections.deque()
        self._closed = False
        self._lost: BaseException | None = None

    def put(self, notification: Notification) -> None:
        """Queue a notification (the dispatcher's handler)."""
        with self._ready:
            self._items.append(notification)
            self._ready.notify_all()

    def lost(self, sender: object, error: BaseException | None = None, **_: object) -> None:
        """Receiver of ``disconnected``: remember why the session ended, wake every waiter."""
        if error is None or getattr(sender, "running", False):
            return  # stopped by close(), which says so itself; or reconnecting, as asked
        with self._ready:
            self._lost = error
            self._ready.notify_all()

    def close(self) -> None:
        """Refuse every later call and wake every waiter."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def broken(self) -> bool:
        """Whether the session was lost."""
        return self._lost is not None

    def check(self) -> None:
        """Raise if no call may be served any more.

        :raises PubSubClosed: after :meth:`close`.
        :raises ConnectionLost: after a lost session.
        """
        if self._closed:
            raise PubSubClosed("connection already closed")
        if self._lost is not None:
            error = ConnectionLost(f"the connection to the server was lost: {self._lost}")
            error.__cause__ = self._lost
            raise error

    def take(self, timeout: float | None, limit: int | None) -> list[Notification]:
        """Wait up to ``timeout`` seconds for a notification, then return up to ``limit``.

        :param timeout: seconds; ``None`` or infinity waits as long as it takes.
        :returns: the oldest waiting notifications, ``[]`` if none came in time.
        :raises ValueError: if ``timeout`` is negative or NaN (as 2015's ``select()`` did).
        :raises PubSubClosed, ConnectionLost: as :meth:`check`; notifications received before
            a lost session are returned first.
        """
        deadline = _timeouts.deadline(_timeouts.check_timeout(timeout, "select_timeout"))
        with self._ready:
            while True:
                if self._closed:
                    self.check()
                if self._items:
                    count = len(self._items) if limit is None else min(limit, len(self._items))
                    return [self._items.popleft() for _ in range(count)]
                self.check()
                remaining = _timeouts.remaining(deadline)
                if remaining == 0.0:
                    return []
                self._ready.wait(remaining)


class _Plain:
    """The plain psycopg2 connection behind ``pubsub.conn``: opened on first use, or adopted."""

    def __init__(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        adopted: psycopg2.extensions.connection | None,
    ) -> None:
        self.args = args
        self.kwargs = kwargs
        self.conn = adopted
        self.adopted = adopted is not None
        self.autocommit = True if adopted is None else bool(adopted.autocommit)
        self.lock = threading.Lock()


class Connection:
    """``pubsub.conn``: what 2015 programs did with the psycopg2 connection of a ``PubSub``.

    - :meth:`get_backend_pid` is the pid of the session that listens, which is also the one
      :meth:`PubSub.notify` sends from: the pid your own notifications carry.
    - :meth:`cursor`, ``autocommit``, :meth:`commit`, :meth:`rollback` and every other
      attribute of a psycopg2 connection (``dsn``, ``server_version``, ``info``, ...) are those
      of a plain connection: the one given to ``PubSub(conn)``, or, after :func:`connect`, one
      opened with the same arguments on first use (in autocommit, as 2015's ``connect`` set
      it). It is never the dispatcher's connection, which only the dispatcher thread uses.
    - ``notifies``, ``poll``, ``fileno`` and ``isexecuting`` raise ``AttributeError``: the
      listening session is not this one; use :meth:`PubSub.get_event`.
    - :attr:`closed` and :meth:`close` are the whole ``PubSub``'s (``close()`` is
      :meth:`PubSub.close`).

    Thread safe. Dropping every reference to it (and so to its ``PubSub``) without ``close()``
    releases the server sessions and the thread (see the module documentation).
    """

    def __init__(self, dispatcher: Dispatcher, inbox: _Inbox, plain: _Plain) -> None:
        self._dispatcher = dispatcher
        self._inbox = inbox
        self._plain = plain
        self._finalizer = weakref.finalize(self, _release_in_background, dispatcher, inbox, plain)

    def get_backend_pid(self) -> int:
        """Return the ``int`` pid of the listening session, which your notify() sends from.

        :raises NotConnected: while reconnecting (only with ``reconnect=True``).
        :raises PubSubClosed: after ``close()``.
        :raises ConnectionLost: after a lost connection (with ``reconnect=False``).
        """
        pid = self._dispatcher.backend_pid
        if pid is not None:
            return pid
        self._inbox.check()
        if self._dispatcher.running:
            raise NotConnected("reconnecting: there is no server session right now")
        raise PubSubClosed("connection already closed")

    @property
    def closed(self) -> int:
        """As psycopg2's: ``0`` while open, ``1`` after ``close()``, ``2`` after a lost session."""
        if self._inbox.closed:
            return 1
        return 2 if self._inbox.broken else 0

    @property
    def autocommit(self) -> bool:
        """The plain connection's autocommit (``True`` unless you change it)."""
        with self._plain.lock:
            conn = self._plain.conn
            return bool(conn.autocommit) if conn is not None else self._plain.autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        with self._plain.lock:
            self._plain.autocommit = bool(value)
            if self._plain.conn is not None:
                self._plain.conn.autocommit = bool(value)

    def cursor(self, *args: Any, **kwargs: Any) -> psycopg2.extensions.cursor:
        """Return a cursor of the plain connection (opened now if it is not yet).

        :param args: as :meth:`psycopg2.extensions.connection.cursor`.
        :param kwargs: as :meth:`psycopg2.extensions.connection.cursor`.
        :returns: a ``psycopg2.extensions.cursor`` (or the ``cursor_factory``'s class).
        :raises PubSubClosed: after ``close()``.
        :raises psycopg2.OperationalError: if the plain connection cannot be opened.
        """
        cursor: psycopg2.extensions.cursor = self.plain().cursor(*args, **kwargs)
        return cursor

    def commit(self) -> None:
        """Commit the plain connection's transaction (a no-op in autocommit)."""
        self.plain().commit()

    def rollback(self) -> None:
        """Roll back the plain connection's transaction (a no-op in autocommit)."""
        self.plain().rollback()

    def close(self) -> None:
        """Close the ``PubSub``: the same as :meth:`PubSub.close`. Idempotent."""
        self._inbox.close()
        self._finalizer.detach()
        _release(self._dispatcher, self._inbox, self._plain, close_adopted=True)

    def plain(self) -> psycopg2.extensions.connection:
        """Return the plain psycopg2 connection, opening it on first use.

        :returns: the connection given to ``PubSub(conn)``, or the one opened with
            :func:`connect`'s arguments.
        :raises PubSubClosed: after ``close()``.
        :raises psycopg2.OperationalError: if it cannot be opened.
        """
        if self._inbox.closed:
            raise PubSubClosed("connection already closed")
        with self._plain.lock:
            if self._plain.conn is None:
                conn = psycopg2.connect(*self._plain.args, **self._plain.kwargs)
                conn.autocommit = self._plain.autocommit
                self._plain.conn = conn
            return self._plain.conn

    def __getattr__(self, name: str) -> Any:
        """Any other attribute of a psycopg2 connection, from the plain connection.

        :raises AttributeError: for private names, for ``notifies``, ``poll``, ``fileno`` and
            ``isexecuting`` (see the class documentation), and for what psycopg2 lacks.
        """
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _NOT_A_LISTENING_CONNECTION:
            raise AttributeError(
                f"pubsub.conn.{name} is not available: notifications are received by the"
                " dispatcher's own session; use pubsub.get_event(), get_events() or events()"
            )
        return getattr(self.plain(), name)

    def __repr__(self) -> str:
        return f"<pgpubsub_dispatch.compat.Connection closed={self.closed}>"


class PubSub:
    """A polling-style subscriber: notifications wait in a queue until you ask for them.

    ``PubSub(conn)``, as in 2015, with your psycopg2 connection; or built by :func:`connect`.
    Every method may be called from any thread.

    With a psycopg2 connection, a dispatcher session is opened with the same parameters
    (``conn.get_dsn_parameters()`` and ``conn.info.password``) to LISTEN and to notify from, so
    no other thread ever uses it. Your connection is not used for either (no LISTEN runs on it,
    its ``notifies`` stays empty): ``pubsub.conn`` gives it for ``cursor()`` and the rest (see
    :class:`Connection`), and :meth:`close` closes it, as 2015 did. If the ``PubSub`` is dropped
    without ``close()``, your connection stays open (it is yours).

    :param conn: an open psycopg2 connection (autocommit or not), or a :class:`Dispatcher` that
        the ``PubSub`` then owns and starts if it is not running.
    :param reconnect: what to do when the session is lost. ``False`` (default, as 2015):
        ``get_event``, ``get_events`` and ``events`` raise :class:`ConnectionLost` (a
        ``psycopg2.OperationalError``) once the notifications received before are returned.
        ``True``: reconnect and LISTEN again; the session's pid then changes (see the README,
        "The ancestor's API"). Ignored when ``conn`` is a :class:`Dispatcher`.
    :raises psycopg2.InterfaceError: if ``conn`` is closed.
    :raises psycopg2.OperationalError: if the dispatcher session cannot connect.
    :raises TypeError: if ``conn`` is neither a psycopg2 connection nor a :class:`Dispatcher`.
    """

    def __init__(
        self, conn: psycopg2.extensions.connection | Dispatcher, *, reconnect: bool = False
    ) -> None:
        if isinstance(conn, Dispatcher):
            dispatcher, plain = conn, _Plain((), {}, None)
        elif isinstance(conn, psycopg2.extensions.connection):
            if conn.closed:
                raise psycopg2.InterfaceError("connection already closed")
            params: dict[str, Any] = dict(conn.get_dsn_parameters())
            if conn.info.password:
                params["password"] = conn.info.password
            dispatcher, plain = Dispatcher(reconnect=reconnect, **params), _Plain((), {}, conn)
        else:
            raise TypeError(
                f"PubSub() takes a psycopg2 connection or a Dispatcher, not {type(conn).__name__}"
            )
        inbox = _Inbox()
        if not dispatcher.running:
            dispatcher.start()
        signals.disconnected.connect(inbox.lost, sender=dispatcher)  # weak: no reference back
        self.dispatcher: Dispatcher = dispatcher
        """The underlying :class:`Dispatcher`, for code that grows beyond the polling style."""
        self._inbox = inbox
        self._enqueue = inbox.put  # one handler object, to unsubscribe it exactly
        self.conn: Connection = Connection(dispatcher, inbox, plain)
        """The psycopg2-connection stand-in (see :class:`Connection`)."""

    @property
    def backend_pid(self) -> int | None:
        """The ``int`` pid of the listening session, ``None`` once closed or lost."""
        return self.dispatcher.backend_pid

    def listen(self, channel: str) -> None:
        """LISTEN to ``channel``, read as SQL reads an identifier (see the README's table).

        ``listen("NewOrders")`` listens to ``neworders`` (unquoted names fold to lower case);
        ``listen('"NewOrders"')`` to ``NewOrders``. Its notifications are queued for
        :meth:`get_event`. Returns once the LISTEN has committed.

        :param channel: an SQL identifier, unquoted or double-quoted.
        :raises InvalidChannelName: if it is not one identifier (``a;b``, ``"a``), or names a
            channel longer than 63 bytes in UTF-8; nothing is sent.
        :raises PubSubClosed: after :meth:`close`.
        :raises ConnectionLost: after a lost connection (with ``reconnect=False``).
        :raises psycopg2.Error: if the server refuses the LISTEN.
        """
        name = read_identifier(channel, "channel name", InvalidChannelName)
        self._inbox.check()
        self._call(self.dispatcher.subscribe, name, self._enqueue)

    def unlisten(self, channel: str) -> None:
        """UNLISTEN ``channel`` (read as :meth:`listen` reads it), or every channel with ``"*"``.

        Notifications already queued stay queued.

        :param channel: an SQL identifier, or ``"*"`` for all channels, as ``UNLISTEN *``.
        :raises InvalidChannelName: if it is neither; nothing is sent.
        :raises PubSubClosed, ConnectionLost: as :meth:`listen`.
        """
        if isinstance(channel, str) and channel.strip() == "*":
            names = sorted(self.dispatcher.channels)
        else:
            names = [read_identifier(channel, "channel name", InvalidChannelName)]
        self._inbox.check()
        for name in names:
            self._call(self.dispatcher.unsubscribe, name, self._enqueue)

    def notify(self, channel: str, payload: str = "") -> None:
        """Send ``pg_notify(channel, payload)``; returns once committed.

        The channel is exact, as ``pg_notify`` took it in 2015 (``notify("NewOrders", ...)``
        reaches ``listen('"NewOrders"')``, not ``listen("NewOrders")``). Own notifications are
        delivered: after ``notify`` on a channel this object listens to, :meth:`get_event`
        returns it, with ``pid == pubsub.conn.get_backend_pid()``.

        :param channel: exact channel name, at most 63 bytes in UTF-8.
        :param payload: text shorter than 8000 bytes in UTF-8, without NUL.
        :raises InvalidChannelName, PayloadTooLarge, TypeError, ValueError: on bad input.
        :raises PubSubClosed, ConnectionLost: as :meth:`listen`.
        :raises psycopg2.Error: what the server raised.
        """
        self._inbox.check()
        self._call(self.dispatcher.notify, channel, payload)

    def get_event(self, select_timeout: float | None = 0) -> Notification | None:
        """Return the oldest waiting notification, waiting up to ``select_timeout`` seconds.

        :param select_timeout: seconds to wait when none is waiting (default 0: never block).
        :returns: a notification, or ``None`` if none came in time.
        :raises PubSubClosed: after :meth:`close`, also from another thread while waiting.
        :raises ConnectionLost: after a lost connection, once none received before is left.
        """
        found = self._inbox.take(select_timeout, 1)
        return found[0] if found else None

    def get_events(self, select_timeout: float | None = 0) -> list[Notification] | None:
        """Return every waiting notification, waiting up to ``select_timeout`` s for the first.

        :param select_timeout: seconds to wait when none is waiting (default 0: never block).
        :returns: a list of notifications, oldest first, or ``None`` (as in 2015) if none came.
        :raises PubSubClosed, ConnectionLost: as :meth:`get_event`.
        """
        return self._inbox.take(select_timeout, None) or None

    def events(
        self, select_timeout: float | None = 5, yield_timeouts: bool = False
    ) -> Iterator[Notification | None]:
        """Yield notifications as they arrive, forever (stop iterating to end).

        :param select_timeout: seconds to wait each time (default 5).
        :param yield_timeouts: when ``True``, yield ``None`` after each ``select_timeout``
            seconds without a notification (so a loop can do other work); else keep waiting.
        :returns: an iterator of notifications (and ``None`` per timeout if asked).
        :raises PubSubClosed: after :meth:`close`, also from another thread while waiting (the
            loop ends at once, where 2015's ended within one ``select_timeout``).
        :raises ConnectionLost: after a lost connection, once none received before is left.
        """
        while True:
            found = self._inbox.take(select_timeout, None)
            if found:
                yield from found
            elif yield_timeouts:
                yield None

    def close(self) -> None:
        """Stop the dispatcher, close its session and the plain connection. Idempotent.

        A call waiting in another thread (``events()``, ``get_event(timeout)``) ends at once
        with :class:`PubSubClosed`.
        """
        self.conn.close()

    def _call(self, method: Any, *args: Any) -> None:
        """Run a dispatcher method, turning "stopped" into the 2015 API's errors."""
        try:
            method(*args)
        except DispatcherStopped as exc:
            self._inbox.check()  # closed, or lost, meanwhile: say so as 2015 would have
            if not self.dispatcher.running:
                raise ConnectionLost("the connection to the server was lost") from exc
            raise

    def __enter__(self) -> PubSub:
        """Return ``self``: ``with pgpubsub_dispatch.connect(...) as pubsub:``."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close (see :meth:`close`)."""
        self.close()


def connect(*args: Any, reconnect: bool = False, **kwargs: Any) -> PubSub:
    """Connect and return a :class:`PubSub`, with the arguments of :func:`psycopg2.connect`.

    :param args: at most one positional argument, the libpq DSN or URI.
    :param reconnect: ``False`` (default, as 2015): a lost connection ends ``events()`` and
        ``get_event()`` with :class:`ConnectionLost`. ``True``: reconnect and LISTEN again, with
        a new backend pid (see :class:`PubSub`).
    :param kwargs: libpq parameters (``host``, ``dbname`` or ``database``, ``user``, ...), and
        any keyword-only option of :class:`Dispatcher` (``heartbeat_interval``, ...).
    :returns: a connected :class:`PubSub`.
    :raises psycopg2.OperationalError: if the connection fails.
    """
    dispatcher = Dispatcher(*args, reconnect=reconnect, **kwargs)
    plain_kwargs = {k: v for k, v in kwargs.items() if k not in _DISPATCHER_OPTIONS}
    pubsub = PubSub(dispatcher)
    _open_plain_like(pubsub.conn, args, plain_kwargs)
    return pubsub


def _open_plain_like(conn: Connection, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Make ``conn`` open its plain connection, when first needed, with these arguments."""
    conn._plain.args, conn._plain.kwargs = args, kwargs


def _release(dispatcher: Dispatcher, inbox: _Inbox, plain: _Plain, *, close_adopted: bool) -> None:
    """Stop the dispatcher and close the plain connection (an adopted one only if asked)."""
    inbox.close()
    signals.disconnected.disconnect(inbox.lost, sender=dispatcher)
    dispatcher.stop()
    with plain.lock:
        conn = plain.conn
    if conn is not None and (close_adopted or not plain.adopted):
        with contextlib.suppress(psycopg2.Error):
            conn.close()


def _release_in_background(dispatcher: Dispatcher, inbox: _Inbox, plain: _Plain) -> None:
    """The finalizer of a dropped :class:`Connection`: release without blocking the collector.

    Garbage collection can run in any thread, even one holding a lock the dispatcher thread
    needs to end, so the stop runs in a short-lived thread. At interpreter exit no thread can
    be started any more; the release then runs in place.
    """

    def release() -> None:
        _release(dispatcher, inbox, plain, close_adopted=False)

    try:
        threading.Thread(target=release, name="pgpubsub-compat-release", daemon=True).start()
    except RuntimeError:
        release()
