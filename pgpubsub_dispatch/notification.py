"""The notification type handlers receive.

Handlers receive the ``psycopg2.extensions.Notify`` objects psycopg2 builds as they are, with no
copy: ``channel`` (``str``), ``payload`` (``str``) and ``pid`` (``int``, the sending backend's
pid). :class:`Notification` describes that shape for type checkers; any object with those three
attributes satisfies it.

A type only: no code of it runs on any thread.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Notification"]


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
