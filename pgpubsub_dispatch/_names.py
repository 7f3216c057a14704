"""Channel-name and payload rules, checked in the caller's thread before anything is sent.

The limits are the server's (see ``pg-rules``: PostgreSQL's NOTIFY reference page and
"Identifiers and Key Words"): a channel is an identifier of at most 63 bytes (NAMEDATALEN - 1),
and a payload must be shorter than 8000 bytes. Both are counted in UTF-8 bytes, not characters.
"""

from __future__ import annotations

from .errors import InvalidChannelName, PayloadTooLarge

__all__ = ["MAX_CHANNEL_BYTES", "MAX_PAYLOAD_BYTES", "check_channel", "check_payload"]

MAX_CHANNEL_BYTES = 63
"""Longest channel name in UTF-8 bytes (PostgreSQL's NAMEDATALEN - 1)."""

MAX_PAYLOAD_BYTES = 7999
"""Longest payload in UTF-8 bytes (the server requires fewer than 8000)."""


def check_channel(channel: object) -> str:
    """Return ``channel`` unchanged if the server would accept it exactly as given.

    :param channel: the candidate channel name.
    :returns: the same ``str``.
    :raises InvalidChannelName: if it is not a ``str``, is empty, contains NUL, is not
        encodable as UTF-8 (a lone surrogate), or is longer than 63 bytes in UTF-8.
    """
    if not isinstance(channel, str):
        raise InvalidChannelName(
            f"channel name must be a str, not {type(channel).__name__}: {channel!r}"
        )
    if not channel:
        raise InvalidChannelName("channel name must not be empty")
    if "\x00" in channel:
        raise InvalidChannelName(f"channel name must not contain NUL: {channel!r}")
    try:
        size = len(channel.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidChannelName(f"channel name is not valid UTF-8: {channel!r}") from exc
    if size > MAX_CHANNEL_BYTES:
        raise InvalidChannelName(
            f"channel name is {size} bytes in UTF-8; PostgreSQL allows at most "
            f"{MAX_CHANNEL_BYTES} and would truncate it: {channel!r}"
        )
    return channel


def check_payload(payload: object) -> str:
    """Return ``payload`` unchanged if the server would accept it.

    :param payload: the candidate payload.
    :returns: the same ``str``.
    :raises TypeError: if it is not a ``str`` (encode bytes yourself, or use JSON).
    :raises ValueError: if it contains NUL or is not encodable as UTF-8.
    :raises PayloadTooLarge: if it is 8000 bytes or more in UTF-8.
    """
    if not isinstance(payload, str):
        raise TypeError(f"payload must be a str, not {type(payload).__name__}")
    if "\x00" in payload:
        raise ValueError("payload must not contain NUL (PostgreSQL text cannot hold it)")
    try:
        size = len(payload.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError("payload is not valid UTF-8 (it holds a lone surrogate)") from exc
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"payload is {size} bytes in UTF-8; PostgreSQL requires fewer than "
            f"{MAX_PAYLOAD_BYTES + 1}"
        )
    return payload
