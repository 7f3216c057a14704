"""The notification type handlers receive.

Handlers receive the ``psycopg2.extensions.Notify`` objects psycopg2 builds as they are, with no
copy: ``channel`` (``str``), ``payload`` (``str``) and ``pid`` (``int``, the sending backend's
pid). :class:`Notification` describes that shape for type checkers; any object with those three
attributes satisfies it. Handlers subscribed with ``decode=`` receive a
:class:`DecodedNotification` instead, which also carries the decoded ``value``.

A type only: no code of it runs on any thread.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar, runtime_checkable

__all__ = ["DecodedNotification", "Notification"]


@runtime_checkable
class Notification(Protocol):
    """A notification as delivered to handlers.

    Attributes:
        channel: the channel name, exactly as sent (case-sensitive).
        payload: the payload text, ``""`` when none was given.
        pid: the process id of the server backend that sent it; equal to the dispatcher's own
            ``backend_pid`` for its own notifications.
    """

    @property
    def channel(self) -> str:
        """The channel name, exactly as sent."""
        ...

    @property
    def payload(self) -> str:
        """The payload text (``""`` when none was given)."""
        ...

    @property
    def pid(self) -> int:
        """The sending backend's process id."""
        ...


T = TypeVar("T")


class DecodedNotification(Generic[T]):
    """A notification with its payload decoded, as handlers subscribed with ``decode=`` get it.

    ``bus.subscribe(channel, handler, decode=json.loads)`` (or ``decode="json"``) calls
    ``handler`` with one of these instead of the raw notification. It satisfies
    :class:`Notification`, so code that reads ``channel``, ``payload`` and ``pid`` keeps working.
    Immutable.

    :param channel: the channel name (``str``).
    :param payload: the raw payload text (``str``).
    :param pid: the sending backend's process id (``int``).
    :param value: what the ``decode`` callable returned for ``payload``.

    Attributes:
        channel: the channel name, exactly as sent.
        payload: the raw payload text, as received.
        pid: the process id of the server backend that sent it.
        value: the decoded payload (``T``: whatever ``decode`` returns; for JSON, a ``dict``,
            ``list``, ``str``, ``int``, ``float``, ``bool`` or ``None``).
    """

    __slots__ = ("channel", "payload", "pid", "value")

    channel: str
    payload: str
    pid: int
    value: T

    def __init__(self, channel: str, payload: str, pid: int, value: T) -> None:
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "pid", pid)
        object.__setattr__(self, "value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a DecodedNotification is immutable (cannot set {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DecodedNotification):
            return NotImplemented
        return (self.channel, self.payload, self.pid, self.value) == (
            other.channel,
            other.payload,
            other.pid,
            other.value,
        )

    __hash__ = None  # type: ignore[assignment]  # the value may be a dict

    def __repr__(self) -> str:
        return (
            f"DecodedNotification(channel={self.channel!r}, payload={self.payload!r}, "
            f"pid={self.pid!r}, value={self.value!r})"
        )
