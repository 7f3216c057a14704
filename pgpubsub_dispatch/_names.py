"""Channel-name and payload rules, checked in the caller's thread before anything is sent.

The limits are the server's (see ``pg-rules``: PostgreSQL's NOTIFY reference page and
"Identifiers and Key Words"): a channel is an identifier of at most 63 bytes (NAMEDATALEN - 1),
and a payload must be shorter than 8000 bytes, in the database encoding. The dispatcher's session
always speaks UTF-8 (``client_encoding`` is pinned), so names are checked in UTF-8 bytes; once
the dispatcher has connected, :class:`DatabaseEncoding` also checks that a channel name is
representable in the database encoding and counts payload bytes in it (``pg-rules``: "Client
encoding", "Payload size").
"""

from __future__ import annotations

import dataclasses
import re

import psycopg2.extensions

from .errors import InvalidChannelName, PayloadTooLarge

__all__ = [
    "MAX_CHANNEL_BYTES",
    "MAX_IDENTIFIER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "DatabaseEncoding",
    "check_channel",
    "check_identifier",
    "check_notification",
    "check_payload",
    "read_identifier",
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
        size = len(name) if name.isascii() else len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise error(f"{what} is not valid UTF-8: {name!r}") from exc
    if size > MAX_IDENTIFIER_BYTES:
        raise error(
            f"{what} is {size} bytes in UTF-8; PostgreSQL allows at most "
            f"{MAX_IDENTIFIER_BYTES} and would truncate it: {name!r}"
        )
    return name


# PostgreSQL's lexer (scan.l): ident_start [A-Za-z\200-\377_], ident_cont adds [0-9$]. In a
# UTF-8 session every byte of a non-ASCII character is in \200-\377, so any such character is
# a letter to it.
_UNQUOTED = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z_0-9$\u0080-\U0010ffff]*")
_QUOTED = re.compile(r'"((?:[^"]|"")+)"')
_SQL_SPACE = " \t\n\r\f\v"  # the lexer's whitespace
_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def read_identifier(text: object, what: str, error: type[ValueError] = ValueError) -> str:
    """Return the name the server would read from ``text`` written as one SQL identifier.

    The rules of PostgreSQL's "Identifiers and Key Words", without ever running SQL:

    * unquoted (``NewOrders``): a letter or ``_``, then letters, digits, ``_`` or ``$``; folded
      to lower case as the server's ``downcase_identifier`` does, ASCII ``A``-``Z`` only
      (``neworders``);
    * double-quoted (``"NewOrders"``): exact, with ``""`` read as one ``"``;
    * whitespace around either is ignored, as in SQL.

    Anything else (``a;b``, ``a b``, an unbalanced ``"``, ``""``, ``U&"..."``) is refused, so no
    text can add SQL. The result is then checked like any exact name (:func:`check_identifier`:
    at most 63 bytes in UTF-8, which the server would truncate instead).

    :param text: the identifier as it would be written in SQL.
    :param what: how to call it in messages (``"channel name"``).
    :param error: the ``ValueError`` subclass to raise.
    :returns: the exact name (``str``).
    :raises error: if ``text`` is not one identifier, or names one that :func:`check_identifier`
        refuses; also if it is not a ``str``, when ``error`` is a subclass.
    :raises TypeError: if it is not a ``str`` and ``error`` is plain ``ValueError``.
    """
    if not isinstance(text, str):
        return check_identifier(text, what, error)
    written = text.strip(_SQL_SPACE)
    quoted = _QUOTED.fullmatch(written)
    if quoted is not None:
        return check_identifier(quoted.group(1).replace('""', '"'), what, error)
    if _UNQUOTED.fullmatch(written) is not None:
        return check_identifier(written.translate(_ASCII_FOLD), what, error)
    raise error(
        f"{what} {text!r} is not an SQL identifier: write it unquoted (letters, digits, _ and $, "
        f'not starting with a digit; folded to lower case) or in double quotes ("Exact Name", '
        f'with "" for a quote)'
    )


def check_channel(channel: object) -> str:
    """Return ``channel`` unchanged if the server would accept it exactly as given.

    :param channel: the candidate channel name.
    :returns: the same ``str``.
    :raises InvalidChannelName: if it is not a ``str``, is empty, contains NUL, is not
        encodable as UTF-8 (a lone surrogate), or is longer than 63 bytes in UTF-8.
    """
    return check_identifier(channel, "channel name", InvalidChannelName)


def utf8_size(payload: object) -> int:
    """The size in UTF-8 bytes of a payload PostgreSQL's ``text`` can hold.

    :raises TypeError: if it is not a ``str`` (encode bytes yourself, or use JSON).
    :raises ValueError: if it contains NUL or is not encodable as UTF-8.
    """
    if not isinstance(payload, str):
        raise TypeError(f"payload must be a str, not {type(payload).__name__}")
    if "\x00" in payload:
        raise ValueError("payload must not contain NUL (PostgreSQL text cannot hold it)")
    if payload.isascii():  # the common case: one byte a character, no encoding needed
        return len(payload)
    try:
        return len(payload.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError("payload is not valid UTF-8 (it holds a lone surrogate)") from exc


def check_payload(payload: object, encoding: DatabaseEncoding | None = None) -> str:
    """Return ``payload`` unchanged if the server would accept it.

    :param payload: the candidate payload.
    :param encoding: the database's encoding when known; ``None`` counts UTF-8 bytes.
    :returns: the same ``str``.
    :raises TypeError: if it is not a ``str`` (encode bytes yourself, or use JSON).
    :raises ValueError: if it contains NUL or is not encodable as UTF-8.
    :raises PayloadTooLarge: if it is 8000 bytes or more in the database encoding (UTF-8 when
        ``encoding`` is ``None``).
    """
    size = utf8_size(payload)
    assert isinstance(payload, str)
    where = "UTF-8"
    if encoding is not None and encoding.codec not in (None, "utf_8"):
        where = f"the database encoding {encoding.name}"
        # A character the database cannot hold is the server's to refuse (22P05), clearly.
        size = len(payload.encode(encoding.codec, errors="replace"))
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"payload is {size} bytes in {where}; PostgreSQL requires fewer than "
            f"{MAX_PAYLOAD_BYTES + 1}"
        )
    return payload


def check_notification(channel: object, payload: object, encoding: DatabaseEncoding | None) -> None:
    """Check a channel and a payload for ``pg_notify`` as :func:`check_channel`,
    :func:`check_payload` and :meth:`DatabaseEncoding.check_channel` do, in one call.

    Plain ASCII, the common case, is checked inline: every server encoding holds ASCII as
    one byte a character. ``notify()`` from many threads is bound by the GIL, so the Python
    each call runs counts (five calls here were about 1.5 µs a notify).

    :raises InvalidChannelName, TypeError, ValueError, PayloadTooLarge: as those functions.
    """
    if (
        type(channel) is str
        and type(payload) is str
        and 0 < len(channel) <= MAX_IDENTIFIER_BYTES
        and len(payload) <= MAX_PAYLOAD_BYTES
        and channel.isascii()
        and payload.isascii()
        and "\x00" not in channel
        and "\x00" not in payload
    ):
        return
    name = check_channel(channel)
    check_payload(payload, encoding)
    if encoding is not None:
        encoding.check_channel(name)


@dataclasses.dataclass(frozen=True)
class DatabaseEncoding:
    """A database's encoding (``server_encoding``), which names and payloads are stored in.

    :param name: PostgreSQL's name for it (``UTF8``, ``LATIN1``, ``SQL_ASCII``, ...).
    :param codec: the Python codec of the bytes the server stores; ``None`` when Python has
        none (then the server alone judges). ``SQL_ASCII`` stores the client's bytes as they
        come, so UTF-8 ones.
    """

    name: str
    codec: str | None

    @classmethod
    def of(cls, server_encoding: str) -> DatabaseEncoding:
        """The encoding PostgreSQL reports as ``server_encoding`` (``str``)."""
        if server_encoding.upper() == "SQL_ASCII":
            return cls(server_encoding, "utf_8")
        return cls(server_encoding, psycopg2.extensions.encodings.get(server_encoding.upper()))

    def check_channel(self, channel: str) -> str:
        """Return ``channel`` if this database can hold it as a name; see :func:`check_channel`.

        :raises InvalidChannelName: if it has a character this encoding cannot represent (the
            server would refuse the LISTEN or NOTIFY), or is longer than 63 bytes in it.
        """
        if self.codec is None or self.codec == "utf_8":
            return channel
        try:
            size = len(channel.encode(self.codec))
        except UnicodeEncodeError as exc:
            raise InvalidChannelName(
                f"channel name {channel!r} cannot be represented in the database encoding "
                f"{self.name} ({exc.object[exc.start : exc.end]!r} has no equivalent there)"
            ) from None
        if size > MAX_IDENTIFIER_BYTES:
            raise InvalidChannelName(
                f"channel name is {size} bytes in the database encoding {self.name}; "
                f"PostgreSQL allows at most {MAX_IDENTIFIER_BYTES}: {channel!r}"
            )
        return channel
