"""The exceptions this package raises, all in one place.

Every class derives from :class:`PubSubError`, so ``except PubSubError`` catches anything of
ours, and also from the built-in class a user would naturally catch (``ValueError`` for bad
input, ``RuntimeError`` for a dispatcher that cannot serve a call). Errors reported by the
server are not wrapped: they reach the caller as the ``psycopg2.Error`` subclass psycopg2 raised.

Plain classes: raised on whichever thread detects the problem, and always delivered to the
thread that made the call.
"""

from __future__ import annotations

import psycopg2

__all__ = [
    "ConnectionLost",
    "DeafSession",
    "DispatcherStopped",
    "InvalidChannelName",
    "NoServerAvailable",
    "NotConnected",
    "PayloadTooLarge",
    "PubSubClosed",
    "PubSubError",
    "WouldDeadlock",
]


class PubSubError(Exception):
    """Base class of every exception defined by pgpubsub_dispatch."""


class InvalidChannelName(PubSubError, ValueError):
    """A channel name the server would reject, truncate or fold.

    Raised before anything is sent, by every entry point that takes a channel (``listen``,
    ``unlisten``, ``notify``, ``subscribe``, ``on``, ``unsubscribe``, ``signal``), when the name is
    not a ``str``, is empty, contains NUL, or is longer than 63 bytes in UTF-8 (PostgreSQL's
    NAMEDATALEN - 1; ``LISTEN`` would silently truncate it, so two names could collide). Once
    the dispatcher has connected, also when the database encoding cannot represent the name
    (the server would refuse it), by ``listen``, ``subscribe`` and ``notify``; ``start()``
    raises it for such a recorded name. ``unlisten``, ``unsubscribe`` and ``signal`` accept
    such a name: no session can be listening to it.
    """


class PayloadTooLarge(PubSubError, ValueError):
    """A payload of 8000 bytes or more in the database encoding (UTF-8 until it is known).

    PostgreSQL refuses payloads that are not shorter than 8000 bytes (``payload string too
    long``, SQLSTATE 22023); this is raised in the caller's thread before anything is sent.
    """


class DispatcherStopped(PubSubError, RuntimeError):
    """The dispatcher cannot serve the call: it is not running, or stopped while it waited.

    Raised by ``notify`` on a dispatcher that is not running, and by any call that was waiting
    on the command queue when ``stop()`` ran or the connection was lost. ``__cause__`` holds
    the connection error when there was one.
    """


class DeafSession(PubSubError, RuntimeError):
    """The dispatcher's session does not receive notifications sent from other sessions.

    Found by the dispatcher's probe: a notification committed on a private probe channel by a
    short-lived connection of its own (same parameters, so through the same pooler) did not
    arrive within the probe's wait. The usual cause is a connection pooler in transaction or
    statement mode (PgBouncer ``pool_mode = transaction``): LISTEN needs session pooling.
    Raised by ``start()`` (nothing is left running); once running, it is the ``error`` of the
    ``deaf`` signal and of the reconnection that follows, and ``stats().deaf`` is ``True``.
    """


class NoServerAvailable(PubSubError, RuntimeError):
    """No PostgreSQL server could be found or started by :mod:`pgpubsub_dispatch.devserver`."""


class NotConnected(PubSubError, TimeoutError):
    """The dispatcher is running but has no connection to the server right now.

    Raised by ``notify`` when its ``timeout`` passes while the dispatcher is reconnecting (the
    notification was not sent), and by a ``notify`` made from a handler while disconnected.
    A ``TimeoutError``, so code that handles timeouts handles it too. ``__cause__`` holds the
    last connection error when known.
    """


class PubSubClosed(DispatcherStopped, psycopg2.InterfaceError):
    """A call on a closed :class:`~pgpubsub_dispatch.PubSub` (the 2015 API).

    Raised by its ``get_event``, ``get_events``, ``events`` (also one already waiting when
    ``close()`` is called from another thread), ``listen``, ``unlisten`` and ``notify`` after
    ``close()``. It is a ``psycopg2.InterfaceError``, which the 2015 ``pgpubsub`` raised for the
    same calls on its closed connection (``connection already closed``), and a
    :class:`DispatcherStopped`.
    """


class ConnectionLost(DispatcherStopped, psycopg2.OperationalError):
    """The 2015 API's session was lost, and it does not reconnect (the default).

    Raised by a :class:`~pgpubsub_dispatch.PubSub` made with ``reconnect=False`` once its server
    session is gone: by ``get_event``, ``get_events`` and ``events`` when no notification
    received before the loss is left to return, and by ``listen``, ``unlisten`` and ``notify``.
    It is a ``psycopg2.OperationalError``, as the 2015 ``pgpubsub`` raised; ``__cause__`` holds
    the error that ended the session.
    """


class WouldDeadlock(PubSubError, RuntimeError):
    """A call that would wait forever: it waits for the dispatcher thread, from that thread.

    Raised, before anything waits, by reading a stream (``stream.get()`` with a timeout other
    than 0, ``for notification in stream``) in a handler running on the dispatcher thread: the
    stream is filled by that very thread, so it would never be. Read streams in another thread
    (or in asyncio), or give the dispatcher an ``executor``.
    """
