"""How ``listen`` writes a notification: JSON lines, readable lines, nothing a terminal acts on.

Also owns standard output: its encoding, line-by-line flushing, and a reader that went away.
Runs on the main thread (the dispatcher thread only queues what it receives).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import unicodedata
from datetime import datetime, timezone
from typing import Any, TextIO

from ..notification import Notification

__all__ = ["default_output", "ensure_utf8", "json_line", "pretty_line", "print_line", "quoted"]


def json_line(notification: Notification, received_at: datetime) -> str:
    """Format a notification as ``listen --json`` prints it: one JSON object, on one line.

    :param notification: what was received (``channel``, ``payload``, ``pid``).
    :param received_at: when it was received (an aware ``datetime``; printed in UTC).
    :returns: ``{"channel", "payload", ["json",] "pid", "received_at"}`` without a newline,
        UTF-8 characters unescaped. ``payload`` is the raw text; ``json`` is there only when the
        payload is valid JSON, holding the parsed value (possibly ``null``).
    """
    record: dict[str, Any] = {"channel": notification.channel, "payload": notification.payload}
    parsed = _parse_json(notification.payload)
    if parsed is not _NOT_JSON:
        record["json"] = parsed
    record["pid"] = notification.pid
    record["received_at"] = received_at.astimezone(timezone.utc).isoformat(timespec="microseconds")
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):  # 1e999 parsed as inf, or nesting too deep to write
        record.pop("json", None)
        return json.dumps(record, ensure_ascii=False)


def pretty_line(notification: Notification, received_at: datetime) -> str:
    """Format a notification as ``listen --pretty`` prints it, for people, on one line.

    :param notification: what was received (``channel``, ``payload``, ``pid``).
    :param received_at: when it was received (an aware ``datetime``; shown in local time).
    :returns: ``HH:MM:SS CHANNEL [pid N] PAYLOAD`` without a newline. A JSON payload is shown
        re-encoded on one line; other text as it is, or quoted and escaped as a JSON string
        when it is empty, has surrounding blanks or holds characters a terminal would act on
        (control characters, line separators, bidirectional overrides). The channel is
        quoted likewise when it holds blanks. The result never holds a control character.
    """
    parsed = _parse_json(notification.payload)
    payload = _shown_text(notification.payload)
    if parsed is not _NOT_JSON:
        with contextlib.suppress(ValueError, RecursionError):
            payload = _escape_unsafe(json.dumps(parsed, ensure_ascii=False, allow_nan=False))
    channel = notification.channel
    if not channel or any(char.isspace() or _unsafe(char) for char in channel):
        channel = _quoted_for_terminal(channel)
    clock = received_at.astimezone().strftime("%H:%M:%S")
    return f"{clock} {channel} [pid {notification.pid}] {payload}"


_NOT_JSON = object()


def _parse_json(text: str) -> Any:
    """The value of ``text`` as strict JSON (no ``NaN``/``Infinity``), else ``_NOT_JSON``."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# What a terminal may act on instead of showing: C0 and C1 controls and DEL (Cc), line and
# paragraph separators, and the bidirectional controls that can make text read backwards.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES or char in _BIDI_CONTROLS


def _escape_unsafe(text: str) -> str:
    """``text`` with every unsafe character written as a JSON escape (``\\n``, ``\\u009b``)."""
    return "".join(
        _SHORT_ESCAPES.get(char, f"\\u{ord(char):04x}") if _unsafe(char) else char for char in text
    )


def _quoted_for_terminal(text: str) -> str:
    """``text`` as a JSON string literal, safe to show on a terminal."""
    return _escape_unsafe(json.dumps(text, ensure_ascii=False))


def _shown_text(text: str) -> str:
    """A non-JSON payload as shown: as it is when plain, else quoted (see :func:`pretty_line`)."""
    if text and text.strip() == text and not any(_unsafe(char) for char in text):
        return text
    return _quoted_for_terminal(text)


def default_output() -> str:
    """``"pretty"`` when standard output is a terminal, else ``"json"``."""
    try:
        return "pretty" if sys.stdout is not None and sys.stdout.isatty() else "json"
    except (ValueError, OSError):  # closed or detached
        return "json"


def print_line(line: str) -> bool:
    """Write one line to stdout, flushed at once; ``False`` when standard output is closed."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return False
    return True


def quoted(channel: str) -> str:
    """``channel`` as a JSON string (as ``listening on ...`` shows each name)."""
    return json.dumps(channel, ensure_ascii=False)


def ensure_utf8(stream: TextIO) -> None:
    """JSON lines are UTF-8 whatever the locale says (non-ASCII is written unescaped)."""
    if isinstance(stream, io.TextIOWrapper) and stream.encoding.lower().replace("-", "") != "utf8":
        stream.reconfigure(encoding="utf-8")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on a broken pipe."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
