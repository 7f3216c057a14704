"""Channel-name and payload rules, checked in the caller's thread before anything is sent.

The limits are the server's (see ``pg-rules``: PostgreSQL's NOTIFY reference page and
"Identifiers and Key Words"): a channel is an identifier of at most 63 bytes (NAMEDATALEN - 1),
and a payload must be shorter than 8000 bytes. Both are counted in UTF-8 bytes, not characters.
"""

from __future__ import annotations

from .errors import InvalidChannelName, PayloadTooLarge

__all__ = [
    "MAX_CHANNEL_BYTES",
    "MAX_IDENTIFIER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "check_channel",
    "check_identifier",
    "check_payload",
]

MAX_IDENTIFIER_BYTES = 63
"""Longest identifier in UTF-8 bytes (PostgreSQL's NAMEDATALEN - 1)."""

MAX_CHANNEL_BYTES = MAX_IDENTIFIER_BYTES
"""Longest channel name in UTF-8 bytes: a channel is an identifier."""

MAX_PAYLOAD_BYTES = 7999
"""Longest payload in UTF-8 bytes (the server requires fewer than 8000)."""


def check_identifier(name: object, what: str, error: type[ValueError] = ValueError) -> str:
    """Return ``name`` if the server takes it, quoted, as one exact identifier.

    :param name: the candidate identifier (channel, table, schema name).
    :param what: how to call it in messages (``"channel name"``).
    :param error: the ``ValueError`` subclass to raise.
    :returns: the same ``str``.
    :raises error: if it is empty, contains NUL, is not encodable as UTF-8 (a lone
        surrogate), or is longer than 63 bytes in UTF-8; also if it is not a ``str``, when
        ``error`` is a subclass (``InvalidChannelName``).
    :raises TypeError: if it is not a ``str`` and ``error`` is plain ``ValueError``.
    """
    if not isinstance(name, str):
        message = f"{what} must be a str, not {type(name).__name__}: {name!r}"
        raise (TypeError if error is ValueError else error)(message)
    if not name:
        raise error(f"{what} must not be empty")
    if "\x00" in name:
        raise error(f"{what} must not contain NUL: {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise error(f"{what} is not valid UTF-8: {name!r}") from exc
    if size > MAX_IDENTIFIER_BYTES:
        raise error(
            f"{what} is {size} bytes in UTF-8; PostgreSQL allows at most "
            f"{MAX_IDENTIFIER_BYTES} and would truncate it: {name!r}"
        )
    return name


def check_channel(channel: object) -> str:
    """Return ``channel`` unchanged if the server would accept it exactly as given.

    :param channel: the candidate channel name.
    :returns: the same ``str``.
    :raises InvalidChannelName: if it is not a ``str``, is empty, contains NUL, is not
        encodable as UTF-8 (a lone surrogate), or is longer than 63 bytes in UTF-8.
    """
    return check_identifier(channel, "channel name", InvalidChannelName)


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
