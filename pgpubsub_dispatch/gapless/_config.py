"""What a dispatcher knows of its gap-free channels, checked once, and the notification type.

Built in the caller's thread by ``Dispatcher(..., gapless=...)`` and read-only afterwards, so
any thread may read it; the positions themselves live in :mod:`._sequencer`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from .._names import check_channel, check_identifier, utf8_size
from ..errors import PayloadTooLarge

__all__ = [
    "DEFAULT_SCHEMA",
    "DEFAULT_WINDOW_SECONDS",
    "MAX_GAPLESS_PAYLOAD_BYTES",
    "Config",
    "GaplessNotification",
    "check_gapless_payload",
    "config_from",
]

DEFAULT_SCHEMA = "pgpubsub"
"""The schema :func:`install` creates the log in unless told otherwise."""

DEFAULT_WINDOW_SECONDS = 86_400.0
"""How long a dispatcher's registration protects the rows it has not delivered: one day."""

MIN_WINDOW_SECONDS = 60.0
"""The shortest window accepted (a running dispatcher refreshes its registration every 15 s)."""

MAX_GAPLESS_PAYLOAD_BYTES = 16 * 1024 * 1024
"""Longest payload on a gap-free channel, in UTF-8 bytes (16 MiB). The row holds it, so the
server would take up to 1 GB; the limit keeps what one dispatcher holds in memory while
catching up bounded (a read stops after 8 MiB of payloads, plus one row)."""


class GaplessNotification:
    """A notification of a gap-free channel, as handlers receive it.

    Attributes:
        channel: the channel (``str``).
        payload: the payload as sent (``str``; beyond 8000 bytes too).
        pid: the pid of the server session that sent it (``int``).
        position: its position on the channel (``int``): 1, 2, 3, ... in commit order. Persist
            it to resume from it later (``gapless.Config(..., since={channel: position})``).
    """

    __slots__ = ("channel", "payload", "pid", "position")

    def __init__(self, channel: str, payload: str, pid: int, position: int) -> None:
        self.channel = channel
        self.payload = payload
        self.pid = pid
        self.position = position

    def __repr__(self) -> str:
        more = "..." if len(self.payload) > 40 else ""
        return (
            f"GaplessNotification(channel={self.channel!r}, position={self.position}, "
            f"pid={self.pid}, payload={self.payload[:40]!r}{more})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GaplessNotification):
            return NotImplemented
        return (self.channel, self.payload, self.pid, self.position) == (
            other.channel,
            other.payload,
            other.pid,
            other.position,
        )

    def __hash__(self) -> int:
        return hash((self.channel, self.position, self.pid))


@dataclasses.dataclass(frozen=True)
class Config:
    """Gap-free channels of one dispatcher: ``Dispatcher(dsn, gapless=Config(...))``.

    :param channels: the gap-free channels (exact names). A plain list of names
        (``gapless=["orders"]``) is the same as ``Config(["orders"])``.
    :param since: ``{channel: position}`` to start after, for a consumer that persists the
        last position it handled; a channel not in it starts at the channel's current position
        when the dispatcher first reads it (nothing older is replayed).
    :param schema: the schema :func:`~pgpubsub_dispatch.gapless.install` created the log in.
    :param reader: this dispatcher's name in ``pgpubsub_readers`` (what pruning consults).
        Default: ``host:pid:random``, new for every ``Dispatcher``. Give a stable name to a
        consumer that resumes from a persisted position, so its rows are kept while it is away.
        A name belongs to one running dispatcher at a time (two would overwrite each other's
        position, and pruning would protect only the one written last).
    :param window: seconds; the rows this reader has not delivered are kept at most this long
        (older ones may be pruned: the reader is then told with the ``gap`` signal), and its
        registration lapses once it has not been seen for this long. ``None``: no limit (its
        rows are kept until ``gapless.forget_reader`` removes it). Default one day; at least 60.
    :raises InvalidChannelName: for a bad channel name (also one in ``since`` that is not in
        ``channels``: ``ValueError``).
    :raises TypeError, ValueError: for a bad position, schema, reader or window.
    """

    channels: frozenset[str]
    since: Mapping[str, int]
    schema: str
    reader: str
    window: float | None

    def __init__(
        self,
        channels: Iterable[str],
        *,
        since: Mapping[str, int] | None = None,
        schema: str = DEFAULT_SCHEMA,
        reader: str | None = None,
        window: float | None = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        if isinstance(channels, str):
            raise TypeError("channels must be an iterable of names, not one str")
        names = frozenset(check_channel(channel) for channel in channels)
        if not names:
            raise ValueError("gapless needs at least one channel")
        starts = dict(since or {})
        for channel, position in starts.items():
            if channel not in names:
                raise ValueError(f"since names {channel!r}, which is not a gap-free channel")
            if isinstance(position, bool) or not isinstance(position, int) or position < 0:
                raise ValueError(f"since[{channel!r}] must be an int >= 0, not {position!r}")
        check_identifier(schema, "schema name")
        if reader is None:
            reader = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        elif not isinstance(reader, str) or not reader or "\x00" in reader:
            raise ValueError(f"reader must be a non-empty str without NUL, not {reader!r}")
        if window is not None and (
            isinstance(window, bool)
            or not isinstance(window, (int, float))
            or math.isnan(window)
            or window < MIN_WINDOW_SECONDS
        ):
            raise ValueError(
                f"window must be None or a number of seconds >= {MIN_WINDOW_SECONDS:.0f}, "
                f"not {window!r}"
            )
        object.__setattr__(self, "channels", names)
        object.__setattr__(self, "since", starts)
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "reader", reader)
        object.__setattr__(self, "window", None if window is None else float(window))


def config_from(gapless: Any) -> Config | None:
    """``Dispatcher``'s ``gapless=`` argument as a :class:`Config` (``None``: no such channel).

    :raises TypeError: for something that is neither a :class:`Config`, an iterable of names,
        nor ``None``.
    """
    if gapless is None:
        return None
    if isinstance(gapless, Config):
        return gapless
    if isinstance(gapless, (str, bytes)) or not isinstance(gapless, Iterable):
        raise TypeError(
            f"gapless must be a gapless.Config or an iterable of channel names, not {gapless!r}"
        )
    return Config(gapless)


def check_gapless_payload(payload: object) -> str:
    """Return ``payload`` if a gap-free channel takes it (up to 16 MiB in UTF-8).

    :raises TypeError: if it is not a ``str``.
    :raises ValueError: if it contains NUL or is not encodable as UTF-8.
    :raises PayloadTooLarge: if it is over :data:`MAX_GAPLESS_PAYLOAD_BYTES`.
    """
    size = utf8_size(payload)
    assert isinstance(payload, str)
    if size > MAX_GAPLESS_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"payload is {size} bytes in UTF-8; a gap-free channel takes at most "
            f"{MAX_GAPLESS_PAYLOAD_BYTES}"
        )
    return payload
