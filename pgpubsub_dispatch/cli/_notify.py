r"""``pgpubsub-dispatch notify``: send one notification, or one per line of standard input.

Runs on the main thread: it reads standard input and waits for each batch of lines to commit
(the dispatcher thread sends them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import BinaryIO

from .._names import MAX_PAYLOAD_BYTES
from ..dispatcher import Dispatcher
from ._common import EXIT_OK, CommandError, checked_channel, checked_payload
from ._running import start, stop_on_signal, stop_quietly

__all__ = ["notify"]

_STDIN_CHUNK = 65536  # bytes read from standard input at most at once (one batch of lines)


def notify(dsn: str, source: str, channel: str, payload: str) -> int:
    """Send ``payload``, or with ``-`` each line of standard input; return ``EXIT_OK``.

    :param dsn: the DSN to connect with; ``source`` says where it came from, for messages.
    :param channel: the channel to notify.
    :param payload: the payload, or ``"-"`` for one notification per line of standard input.
    :returns: ``EXIT_OK`` (0) once every notification has committed.
    :raises CommandError: for a bad channel name or payload (a bad line stops at that line,
        the lines before it sent), no standard input, or a failure to connect.
    :raises psycopg2.Error: what the server raised.
    :raises Interrupted: on SIGINT or SIGTERM.
    """
    channel = checked_channel(channel)
    if payload == "-":
        read = _stdin_reader()
    else:
        checked_payload(payload, "invalid payload")
    bus = Dispatcher(dsn)
    with stop_on_signal(bus):
        try:
            start(bus, dsn, source)
            if payload == "-":
                _notify_lines(bus, channel, read)
            else:
                bus.notify(channel, payload)
        finally:
            stop_quietly(bus)
    return EXIT_OK


def _stdin_reader() -> Callable[[], bytes]:
    """A function returning the next bytes standard input has (at least one; ``b""`` at its end).

    It returns what is available without waiting for more, so lines typed or produced slowly
    are sent as they come, and a file is read in large chunks.
    """
    stdin = sys.stdin
    if stdin is None:
        raise CommandError("payload '-' needs a standard input, and there is none")
    buffer: BinaryIO | None = getattr(stdin, "buffer", None)
    if buffer is None:  # a text stream standing in for stdin (main() called in-process)
        data = [stdin.read().encode("utf-8", "surrogateescape")]
        return lambda: data.pop() if data else b""
    read = getattr(buffer, "read1", buffer.read)
    return lambda: bytes(read(_STDIN_CHUNK))


def _notify_lines(bus: Dispatcher, channel: str, read: Callable[[], bytes]) -> None:
    """Send each line that ``read`` gives as a notification: what one read gives, at once.

    :raises CommandError: at the first line that is not a valid payload, once the lines
        before it have been sent.
    """
    pending = b""  # the start of a line whose end has not been read yet
    number = 0  # of the last line taken
    while True:
        chunk = read()
        *lines, pending = (pending + chunk).split(b"\n")
        if not chunk and pending:  # the last line has no newline: it is a line all the same
            lines, pending = [*lines, pending], b""
        batch: list[tuple[str, str]] = []
        error: CommandError | None = None
        for line in lines:
            number += 1
            try:
                batch.append((channel, _line_payload(line, number)))
            except CommandError as exc:
                error = exc
                break
        if error is None and len(pending) > MAX_PAYLOAD_BYTES + len(b"\r"):
            error = CommandError(
                f"invalid payload at line {number + 1} of standard input: it is over "
                f"{MAX_PAYLOAD_BYTES} bytes; PostgreSQL requires fewer than {MAX_PAYLOAD_BYTES + 1}"
            )
        if batch:
            bus.notify_many(batch)
        if error is not None:
            raise error
        if not chunk:
            return


def _line_payload(line: bytes, number: int) -> str:
    """Line ``number`` of standard input (without its newline) as a payload, ``\\r`` removed."""
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"standard input is not valid UTF-8 at line {number}: {exc}") from exc
    return checked_payload(text, f"invalid payload at line {number} of standard input")
