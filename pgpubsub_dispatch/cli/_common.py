"""What every command of the command line shares: exit codes, the error type, messages.

Runs on the main thread (``_say`` and ``report`` also on the signal helper thread of
:mod:`._running`, which only writes to standard error).
"""

from __future__ import annotations

import contextlib
import sys

import psycopg2

from .._names import check_channel, check_payload
from .._secrets import Secrets

PROG = "pgpubsub-dispatch"
"""The program name used in usage and error messages, whatever the way it was started."""

EXIT_OK = 0
"""Success; for ``listen``, also a stop by signal, ``--timeout`` or a closed standard output."""

EXIT_INCOMPLETE = 1
"""``listen --count N --timeout S`` received fewer than ``N`` notifications in ``S`` seconds."""

EXIT_ERROR = 2
"""Bad usage or input, connection failure, server error: one line on standard error."""


class CommandError(Exception):
    """A failure reported as one ``pgpubsub-dispatch: error: <message>`` line with exit code 2."""


def one_line(text: str) -> str:
    """libpq's multi-line messages (``...failed\\n\\tIs the server running...``) as one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def describe_server_error(exc: psycopg2.Error) -> str:
    """The message of ``exc`` on one line, with its SQLSTATE when the server gave one."""
    message = one_line(str(exc)) or type(exc).__name__
    return f"{message} (SQLSTATE {exc.pgcode})" if exc.pgcode else message


def describe_chain(exc: BaseException) -> str:
    """The message of ``exc`` followed by its cause's, e.g. ``DispatcherStopped`` and why."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = one_line(str(current))
        if text and not any(text in part for part in parts):  # "lost: <cause>", then <cause>
            parts.append(text)
        current = current.__cause__
    return ": ".join(parts) or type(exc).__name__


def say(line: str) -> None:
    """Write one line to standard error, flushed at once."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nowhere left to tell
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def report(message: str, dsn: str, level: str = "error") -> None:
    """Write ``pgpubsub-dispatch: <level>: <message>`` to standard error, password masked."""
    say(f"{PROG}: {level}: {Secrets(dsn).redact(one_line(message))}")


def checked_channel(channel: str) -> str:
    """``channel`` if the server accepts it as a name, else :class:`CommandError` saying why."""
    try:
        return check_channel(channel)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"invalid channel name: {exc}") from exc


def checked_payload(payload: str, context: str) -> str:
    """``payload`` if the server accepts it, else :class:`CommandError` after ``context``."""
    try:
        return check_payload(payload)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"{context}: {exc}") from exc
