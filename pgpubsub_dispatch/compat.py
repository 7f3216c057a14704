"""The 2015 ``pgpubsub`` API, kept working on top of :class:`Dispatcher`.

::

    import pgpubsub_dispatch as pgpubsub
    pubsub = pgpubsub.connect(dbname="test")
    pubsub.listen("test")
    pubsub.notify("test", "message 1")
    pubsub.get_event()          # Notify(pid, 'test', 'message 1')

Unlike the original, it is safe to use from several threads, and channel names are exact and
quoted (``listen("Chan")`` listens to ``Chan``, not ``chan``).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from .dispatcher import Dispatcher
from .errors import DispatcherStopped, NotConnected

__all__ = ["PubSub", "connect"]


class _BackendPidView:
    """The part of a psycopg2 connection the ancestor's examples used: its backend pid."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def get_backend_pid(self) -> int:
        """Return the ``int`` pid of the server session.

        :raises NotConnected: while the dispatcher is reconnecting.
        :raises DispatcherStopped: after :meth:`PubSub.close`.
        """
        pid = self._dispatcher.backend_pid
        if pid is not None:
            return pid
        if self._dispatcher.running:
            raise NotConnected("reconnecting: there is no server session right now")
        raise DispatcherStopped("the PubSub connection is closed")


class PubSub:
    """A polling-style subscriber: notifications wait in a queue until you ask for them.

    Built by :func:`connect`. Every method may be called from any thread.

    :param dispatcher: a started :class:`Dispatcher`; the PubSub owns it and stops it on
        :meth:`close`.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._enqueue = self._events.put  # one handler object, to unsubscribe it exactly
        self._closed = False
        self.conn = _BackendPidView(dispatcher)
        """Offers ``get_backend_pid()``, as the psycopg2 connection of the original did."""

    @property
    def backend_pid(self) -> int | None:
        """The ``int`` pid of the server session, ``None`` once closed."""
        return self.dispatcher.backend_pid

    def listen(self, channel: str) -> None:
        """LISTEN to ``channel``; its notifications are queued for :meth:`get_event`.

        :param channel: exact, case-sensitive channel name (at most 63 bytes in UTF-8).
        :raises InvalidChannelName: if the name is not acceptable.
        :raises psycopg2.Error: if the server refuses the LISTEN.
        :raises DispatcherStopped: after :meth:`close`.
        """
        self._check_open()
        self.dispatcher.subscribe(channel, self._enqueue)

    def unlisten(self, channel: str) -> None:
        """UNLISTEN ``channel``; notifications already queued stay queued.

        :raises InvalidChannelName: if the name is not acceptable.
        :raises DispatcherStopped: after :meth:`close`.
        """
        self._check_open()
        self.dispatcher.unsubscribe(channel, self._enqueue)

    def notify(self, channel: str, payload: str = "") -> None:
        """Send a notification; returns once committed (see :meth:`Dispatcher.notify`).

        Own notifications are delivered: after ``notify`` on a channel this object listens to,
        :meth:`get_event` returns it.

        :raises InvalidChannelName, PayloadTooLarge, TypeError, ValueError: on bad input.
        :raises DispatcherStopped: after :meth:`close`.
        :raises psycopg2.Error: what the server raised.
        """
        self._check_open()
        self.dispatcher.notify(channel, payload)

    def get_event(self) -> Any | None:
        """Return the oldest waiting notification, or ``None`` if none waits. Never blocks."""
        try:
            return self._events.get_nowait()
        except queue.Empty:
            return None

    def get_events(self) -> list[Any]:
        """Return every waiting notification, oldest first, as a list (maybe empty)."""
        events: list[Any] = []
        while True:
            event = self.get_event()
            if event is None:
                return events
            events.append(event)

    def events(
        self, select_timeout: float = 5, yield_timeouts: bool = False
    ) -> Iterator[Any | None]:
        """Yield notifications as they arrive, forever (stop iterating to end).

        :param select_timeout: seconds to wait for each notification.
        :param yield_timeouts: when ``True``, yield ``None`` after each ``select_timeout``
            seconds without a notification (so a loop can do other work); else keep waiting.
        :returns: an iterator of notifications (and ``None`` per timeout if asked).
        """
        while True:
            try:
                yield self._events.get(timeout=select_timeout)
            except queue.Empty:
                if yield_timeouts:
                    yield None

    def close(self) -> None:
        """Stop the dispatcher and close the connection. Idempotent."""
        self._closed = True
        self.dispatcher.stop()

    def _check_open(self) -> None:
        if self._closed:
            raise DispatcherStopped("this PubSub is closed")

    def __enter__(self) -> PubSub:
        """Return ``self``: ``with pgpubsub_dispatch.connect(...) as pubsub:``."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close (see :meth:`close`)."""
        self.close()


def connect(*args: Any, **kwargs: Any) -> PubSub:
    """Connect and return a :class:`PubSub`, with the arguments of :func:`psycopg2.connect`.

    :param args: at most one positional argument, the libpq DSN or URI.
    :param kwargs: libpq parameters (``host``, ``dbname`` or ``database``, ``user``, ...).
    :returns: a connected :class:`PubSub`.
    :raises psycopg2.OperationalError: if the connection fails.
    """
    dispatcher = Dispatcher(*args, **kwargs)
    dispatcher.start()
    return PubSub(dispatcher)
