"""The commands that cross from callers' threads to the dispatcher thread.

Each carries a :class:`concurrent.futures.Future`: the dispatcher thread sets its result or
exception, the caller waits on it. A command is plain data; what it does lives in the
dispatcher's ``_loop_*`` methods, so that all code touching the connection is in one place.
Arguments are validated when a command is built, in the caller's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ._names import check_channel, check_payload

__all__ = [
    "Command",
    "Handler",
    "Heartbeat",
    "Listen",
    "Notify",
    "NotifyBatch",
    "QueueUsage",
    "Subscribe",
    "Unlisten",
    "Unsubscribe",
]

Handler = Callable[[Any], object]
"""A receiver: any callable taking one positional argument, the notification."""


class Command:
    """Base of every command: the future the caller waits on."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[Any] = Future()


class Listen(Command):
    """LISTEN ``channel`` and remember that it was asked for explicitly."""

    __slots__ = ("channel",)

    def __init__(self, channel: str) -> None:
        super().__init__()
        self.channel = check_channel(channel)


class Unlisten(Command):
    """UNLISTEN ``channel`` and drop its notifications already received."""

    __slots__ = ("channel",)

    def __init__(self, channel: str) -> None:
        super().__init__()
        self.channel = check_channel(channel)


class Notify(Command):
    """``pg_notify(channel, payload)``, committed before the caller's call returns.

    The dispatcher may send several queued notifies in one transaction, never two identical
    ones (the server would fold them). ``alone`` marks one to be sent in a transaction of its
    own: set when a shared transaction failed, so each is retried by itself.
    """

    __slots__ = ("alone", "channel", "payload")

    def __init__(self, channel: str, payload: str) -> None:
        super().__init__()
        self.channel = check_channel(channel)
        self.payload = check_payload(payload)
        self.alone = False


class NotifyBatch(Command):
    """Queued notifies sent together in one transaction (built on the dispatcher thread)."""

    __slots__ = ("notifies",)

    def __init__(self, notifies: list[Notify]) -> None:
        super().__init__()
        self.notifies = notifies


class Subscribe(Command):
    """Connect ``handler`` to the channel's signal, LISTENing first if needed."""

    __slots__ = ("channel", "handler")

    def __init__(self, channel: str, handler: Handler) -> None:
        super().__init__()
        self.channel = check_channel(channel)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self.handler = handler


class Unsubscribe(Command):
    """Disconnect ``handler``; UNLISTEN when nothing else wants the channel."""

    __slots__ = ("channel", "handler")

    def __init__(self, channel: str, handler: Handler) -> None:
        super().__init__()
        self.channel = check_channel(channel)
        self.handler = handler


class Heartbeat(Command):
    """The dispatcher's own liveness probe: queue usage and ``pg_listening_channels()``."""

    __slots__ = ()


class QueueUsage(Command):
    """``SELECT pg_notification_queue_usage()``: its result is the fraction (0.0 to 1.0)."""

    __slots__ = ()
