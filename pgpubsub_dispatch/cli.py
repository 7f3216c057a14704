r"""The ``pgpubsub-dispatch`` command line: print notifications, or send them.

Also runnable as ``python -m pgpubsub_dispatch``::

    pgpubsub-dispatch listen CHANNEL... [--dsn DSN] [--count N] [--timeout S] [--json|--pretty]
    pgpubsub-dispatch notify CHANNEL [PAYLOAD | -] [--dsn DSN]

``listen`` writes one line per notification to standard output, flushed at once, in one of two
forms. When standard output is a terminal it writes a line for people (``--pretty`` forces it)::

    12:00:01 orders [pid 4242] {"id": 1}

the local time of receipt, the channel, the sender's pid and the payload. A payload that parses
as JSON is shown re-encoded on one line; any other payload is shown as it is, unless it is
empty, has surrounding blanks or holds control characters (a newline, an escape sequence), in
which case it is shown as a quoted JSON string with those characters escaped. Channel names
with blanks or control characters are quoted likewise. Nothing in a notification can move the
cursor or recolour the terminal.

Otherwise (piped, or with ``--json``) it writes one JSON object per line (UTF-8, non-ASCII
characters written as they are, so every channel name round-trips exactly)::

    {"channel": "orders", "payload": "{\"id\": 1}", "json": {"id": 1}, "pid": 4242,
     "received_at": "2024-05-01T12:00:00.000001+00:00"}

(shown on two lines here; always one line in the output). ``payload`` is always the raw text
(a ``str``). ``json`` is present only when that text is valid JSON (RFC 8259: no ``NaN`` or
``Infinity``), and holds the parsed value, which may be any JSON type, ``null`` included: test
for the key, not for its value. ``pid`` is the sending backend's process id; ``received_at`` is
the ISO 8601 UTC time at which the notification reached this process.

Once every channel is LISTENed, ``listen`` writes the line ``listening on "orders", "My Chan"``
(each name as a JSON string) to standard error: a notification committed after that line
appears is printed.

``notify CHANNEL PAYLOAD`` sends one notification; ``PAYLOAD`` defaults to ``""``.
``notify CHANNEL -`` sends one notification per line of standard input (UTF-8), the line without
its ``\n`` or ``\r\n``: an empty line is an empty payload, and empty input sends nothing.
Lines are sent as they are read (so ``tail -f log | pgpubsub-dispatch notify logs -`` works),
each batch read at once in as few transactions as the server allows, and identical lines are
all delivered. A line that is not valid UTF-8, holds NUL or is 8000 bytes or more stops the
command with exit 2 and its line number; the lines before it have been sent, none after it. To
send a literal ``-``, pipe it in.

Channel names are exact and case-sensitive (they are always quoted), at most 63 bytes in UTF-8.
A name starting with ``-`` goes after ``--``: ``pgpubsub-dispatch listen -- -odd``.

The DSN (a libpq connection string or URI) is ``--dsn``, else the ``DATABASE_URL`` environment
variable, else ``""``: libpq's own environment (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGDATABASE``, ``PGPASSWORD``, ``~/.pgpass``, ...). No password is ever printed: error messages
are scrubbed of the DSN's password.

Exit codes:

- 0 (:data:`EXIT_OK`): ``notify`` sent its notifications; ``listen`` received ``--count``
  notifications, or ran for ``--timeout`` seconds without ``--count``, or was stopped by SIGINT
  or SIGTERM, or its standard output was closed by the reader (a broken pipe).
- 1 (:data:`EXIT_INCOMPLETE`): ``listen --count N --timeout S`` received fewer than ``N``
  notifications in ``S`` seconds.
- 2 (:data:`EXIT_ERROR`): bad usage or input (an invalid channel name or payload, an invalid
  DSN, unreadable standard input), a connection failure, an error reported by the server, or a
  connection lost while listening: one line ``pgpubsub-dispatch: error: ...`` on standard error
  (argparse's usage errors add a usage line before it). Never a traceback.
- 130 or 143 (128 + the signal number): ``notify`` interrupted by SIGINT or SIGTERM before it
  could confirm that every notification was sent.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import logging
import math
import os
import queue
import re
import signal
import sys
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from types import FrameType
from typing import Any, BinaryIO, NamedTuple, TextIO, Union

import psycopg2
import psycopg2.extensions

from . import signals
from ._names import MAX_PAYLOAD_BYTES, check_channel, check_payload
from .dispatcher import Dispatcher
from .errors import PubSubError
from .notification import Notification

__all__ = [
    "DSN_ENVIRON",
    "EXIT_ERROR",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "PROG",
    "build_parser",
    "json_line",
    "main",
    "pretty_line",
    "redact",
    "resolve_dsn",
]

PROG = "pgpubsub-dispatch"
"""The program name used in usage and error messages, whatever the way it was started."""

DSN_ENVIRON = "DATABASE_URL"
"""Environment variable holding the DSN when ``--dsn`` is not given."""

EXIT_OK = 0
"""Success; for ``listen``, also a stop by signal, ``--timeout`` or a closed standard output."""

EXIT_INCOMPLETE = 1
"""``listen --count N --timeout S`` received fewer than ``N`` notifications in ``S`` seconds."""

EXIT_ERROR = 2
"""Bad usage or input, connection failure, server error: one line on standard error."""

_STOP_TIMEOUT = 5.0  # seconds to let the dispatcher UNLISTEN and close before exiting anyway
_POLL_INTERVAL = 0.5  # seconds between checks that the dispatcher is still running
_STDIN_CHUNK = 65536  # bytes read from standard input at most at once (one batch of lines)


class CommandError(Exception):
    """A failure reported as one ``pgpubsub-dispatch: error: <message>`` line with exit code 2."""


class _Received(NamedTuple):
    """A notification as captured on the dispatcher thread, for the main thread to print."""

    channel: str
    payload: str
    pid: int
    received_at: datetime  # aware, UTC


class _ConnectionLost(NamedTuple):
    """The dispatcher reported its connection gone (it may reconnect, or stop)."""

    error: BaseException


class _Reconnected(NamedTuple):
    """The dispatcher listens again on a new session (notifications may have been missed)."""

    backend_pid: int


# Not ``X | Y``: this alias is evaluated at run time, and Python 3.9 has no ``|`` on types.
_Event = Union[_Received, _ConnectionLost, _Reconnected]


# --------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (the console script and ``-m`` entry).

    :param argv: the arguments after the program name; ``None`` means ``sys.argv[1:]``.
    :returns: the exit code: :data:`EXIT_OK` (0), :data:`EXIT_INCOMPLETE` (1, ``listen`` with
        ``--count`` and ``--timeout`` that did not get its count), :data:`EXIT_ERROR` (2, bad
        usage or input, connection or server failure, reported as one line on standard error)
        or 128 + the signal number (``notify`` interrupted by SIGINT or SIGTERM). ``--help``
        and ``--version`` print and return 0.
    :raises: nothing for expected failures: they become exit codes. An unexpected exception
        (a bug) propagates with its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage error: argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    dsn, source = resolve_dsn(args.dsn)
    try:
        with _library_logging(args.verbose, dsn):
            return _run(args, dsn, source)
    except KeyboardInterrupt as exc:  # a second signal while cleaning up
        return _interrupted_exit(args.command, exc)


def _run(args: argparse.Namespace, dsn: str, source: str) -> int:
    """Run the parsed command; every expected failure becomes one error line and exit 2."""
    try:
        _check_dsn(dsn, source)
        if args.command == "listen":
            return _listen(
                dsn,
                source,
                args.channels,
                count=args.count,
                timeout=args.timeout,
                output=args.output or _default_output(),
            )
        return _notify(dsn, source, args.channel, args.payload)
    except KeyboardInterrupt as exc:
        return _interrupted_exit(args.command, exc)
    except CommandError as exc:
        _report(str(exc), dsn)
    except psycopg2.Error as exc:
        _report(_describe_server_error(exc), dsn)
    except PubSubError as exc:
        _report(_describe_chain(exc), dsn)
    except (OSError, TimeoutError, concurrent.futures.TimeoutError) as exc:
        _report(_describe_chain(exc) or type(exc).__name__, dsn)
    return EXIT_ERROR


def _interrupted_exit(command: str, interruption: KeyboardInterrupt) -> int:
    """0 for ``listen`` (a signal is how it normally ends), else 128 + the signal number."""
    if command == "listen":
        return EXIT_OK
    return 128 + getattr(interruption, "signum", signal.SIGINT)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``pgpubsub-dispatch`` (its ``--help`` is the manual).

    :returns: a parser whose namespace has ``command`` (``"listen"`` or ``"notify"``), ``dsn``
        (``str`` or ``None``), ``verbose`` (``int``), and either ``channels``, ``count``,
        ``timeout``, ``output`` (listen; ``output`` is ``"json"``, ``"pretty"``, or ``None``
        to choose by whether standard output is a terminal) or ``channel``, ``payload``
        (notify).
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PostgreSQL LISTEN/NOTIFY from the command line.",
        epilog=(
            "exit codes: 0 success (listen: also stopped by SIGINT/SIGTERM, --timeout without "
            "--count, or a closed output); 1 listen --count not reached within --timeout; "
            "2 bad usage or input, connection failure or server error (one line on stderr)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dsn",
        help=(
            "libpq connection string or URI (default: $DATABASE_URL, else libpq's PGHOST, "
            "PGPORT, PGUSER, PGDATABASE... environment). Prefer PGPASSWORD or ~/.pgpass to a "
            "password here: other users can see command lines."
        ),
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show the library's log on stderr: -v for info, -vv for debug",
    )

    listen = commands.add_parser(
        "listen",
        parents=[common],
        help="print notifications: readable lines on a terminal, JSON lines when piped",
        description=(
            "Print one line per notification on stdout until SIGINT/SIGTERM, --count or "
            "--timeout. On a terminal (or with --pretty): 'HH:MM:SS CHANNEL [pid N] PAYLOAD'. "
            'Piped (or with --json): a JSON object {"channel", "payload" (the raw text), '
            '"json" (only when the payload parses as JSON: the parsed value), "pid", '
            "\"received_at\" (ISO 8601, UTC)}. The line 'listening on ...' on stderr means "
            "every channel is listened to. Channel names are exact and case-sensitive; put one "
            "starting with '-' after '--'."
        ),
        epilog=(
            "exit codes: 0 stopped by a signal, by --count, or by --timeout without --count; "
            "1 --timeout elapsed before --count notifications; 2 error."
        ),
    )
    listen.add_argument("channels", nargs="+", metavar="CHANNEL", help="channel to listen to")
    listen.add_argument(
        "--count", type=_positive_int, metavar="N", help="exit 0 after N notifications"
    )
    listen.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help=(
            "stop S seconds after listening began (connecting is bounded by libpq's "
            "connect_timeout instead): exit 0, or 1 if --count was given and not reached"
        ),
    )
    output = listen.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        help="JSON lines, even on a terminal (the default when stdout is not a terminal)",
    )
    output.add_argument(
        "--pretty",
        dest="output",
        action="store_const",
        const="pretty",
        help="readable lines, even when piped (the default when stdout is a terminal)",
    )

    notify = commands.add_parser(
        "notify",
        parents=[common],
        help="send a notification, or one per line of standard input",
        description=(
            "Send one notification, or with PAYLOAD '-' one per line of standard input, as the "
            "lines are read; exit 0 once all have committed."
        ),
    )
    notify.add_argument("channel", metavar="CHANNEL", help="channel to notify (exact name)")
    notify.add_argument(
        "payload",
        nargs="?",
        default="",
        metavar="PAYLOAD",
        help=(
            "payload text (default: empty); '-' sends each line of standard input (UTF-8, "
            "without its line ending) as a notification of its own"
        ),
    )
    return parser


def resolve_dsn(option: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Choose the DSN: ``--dsn``, else ``$DATABASE_URL``, else libpq's environment.

    :param option: the value of ``--dsn``, ``None`` when not given (an empty string is a choice:
        libpq's environment).
    :param environ: the environment to read; ``None`` means ``os.environ``.
    :returns: ``(dsn, source)``: the DSN for ``psycopg2.connect`` (``""`` lets libpq read
        ``PGHOST``, ``PGDATABASE``, ...) and where it came from, for messages: ``"--dsn"``,
        ``"DATABASE_URL"`` or ``"libpq environment"``.
    """
    env = os.environ if environ is None else environ
    if option is not None:
        return option, "--dsn"
    from_env = env.get(DSN_ENVIRON)
    if from_env:
        return from_env, DSN_ENVIRON
    return "", "libpq environment"


def redact(message: str, dsn: str) -> str:
    """Return ``message`` with every trace of the password of ``dsn`` replaced by ``***``.

    libpq echoes parts of a malformed DSN in its errors (``invalid percent-encoded token:
    "s3cret%zz"``, a whole URI), so every message that may quote the DSN passes through here.

    :param message: text about to be shown.
    :param dsn: the DSN in use, valid or not.
    :returns: the text, with the password (as parsed, and as written in the DSN) masked.
    """
    for secret in sorted(_passwords(dsn), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


# --------------------------------------------------------------------------------------------
# listen


def _listen(
    dsn: str,
    source: str,
    channels: Sequence[str],
    *,
    count: int | None,
    timeout: float | None,
    output: str,
) -> int:
    """Print notifications of ``channels`` in ``output`` form; see the module docstring."""
    wanted = list(dict.fromkeys(_checked_channel(channel) for channel in channels))
    _ensure_utf8(sys.stdout)
    events: queue.Queue[_Event] = queue.Queue()

    def enqueue(notification: Notification) -> None:  # runs on the dispatcher thread
        received_at = datetime.now(timezone.utc)
        events.put(
            _Received(notification.channel, notification.payload, notification.pid, received_at)
        )

    def on_disconnected(sender: object, error: BaseException | None = None) -> None:
        if error is not None:  # runs on the dispatcher thread
            events.put(_ConnectionLost(error))

    def on_reconnected(sender: object, backend_pid: int) -> None:
        events.put(_Reconnected(backend_pid))

    bus = Dispatcher(dsn)
    for channel in wanted:
        bus.subscribe(channel, enqueue)
    signals.disconnected.connect(on_disconnected, sender=bus, weak=False)
    signals.reconnected.connect(on_reconnected, sender=bus, weak=False)
    try:
        with _stop_on_signal(bus):
            try:
                _start(bus, dsn, source)
                listening = f"listening on {', '.join(_quoted(channel) for channel in wanted)}"
                _say(listening)
                return _print_events(
                    events,
                    bus,
                    dsn,
                    count=count,
                    timeout=timeout,
                    listening=listening,
                    format_line=pretty_line if output == "pretty" else json_line,
                )
            finally:
                _stop_quietly(bus)
    finally:
        signals.disconnected.disconnect(on_disconnected, sender=bus)
        signals.reconnected.disconnect(on_reconnected, sender=bus)


def _print_events(
    events: queue.Queue[_Event],
    bus: Dispatcher,
    dsn: str,
    *,
    count: int | None,
    timeout: float | None,
    listening: str,
    format_line: Callable[[Notification, datetime], str],
) -> int:
    """Print events, each as ``format_line`` makes it, until ``count`` or ``timeout``.

    :returns: the exit code.

    After a reconnection, ``listening`` is written to stderr again, with a note that
    notifications sent while disconnected may have been missed.

    :raises CommandError: when the dispatcher stops on its own (its connection is lost and it
        does not reconnect). A loss it recovers from is only a warning on stderr.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    printed = 0
    lost: BaseException | None = None
    while count is None or printed < count:
        wait = _POLL_INTERVAL
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return EXIT_OK if count is None else EXIT_INCOMPLETE
        try:
            event = events.get(timeout=wait)
        except queue.Empty:
            if not bus.running:
                raise CommandError(_lost_message(lost)) from lost
            continue
        if isinstance(event, _ConnectionLost):
            lost = event.error
            if not bus.running:
                raise CommandError(_lost_message(lost)) from lost
            _report(_lost_message(lost), dsn, "warning")
            continue
        if isinstance(event, _Reconnected):
            _say(f"{listening} again (reconnected; notifications sent meanwhile may be missing)")
            continue
        if not _print_line(format_line(event, event.received_at)):
            return EXIT_OK  # the reader closed our standard output: nobody is listening
        printed += 1
    return EXIT_OK


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


def _default_output() -> str:
    """``"pretty"`` when standard output is a terminal, else ``"json"``."""
    try:
        return "pretty" if sys.stdout is not None and sys.stdout.isatty() else "json"
    except (ValueError, OSError):  # closed or detached
        return "json"


def _print_line(line: str) -> bool:
    """Write one line to stdout, flushed at once; ``False`` when standard output is closed."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return False
    return True


def _lost_message(error: BaseException | None) -> str:
    if error is None:
        return "the dispatcher stopped unexpectedly"
    return f"connection lost: {_describe_chain(error)}"


def _start(bus: Dispatcher, dsn: str, source: str) -> None:
    """Start ``bus``; a failure to connect says where to, and where the DSN came from."""
    try:
        bus.start()
    except psycopg2.OperationalError as exc:
        if exc.pgcode:  # the session is up but LISTEN failed (e.g. on a hot standby)
            raise
        raise CommandError(
            f"cannot connect to {_target(dsn)} (DSN from {source}): {_one_line(str(exc))}"
        ) from exc


def _stop_quietly(bus: Dispatcher) -> None:
    """Stop ``bus``, bounded; a failure to close cleanly does not matter when exiting."""
    with contextlib.suppress(
        PubSubError, psycopg2.Error, OSError, TimeoutError, concurrent.futures.TimeoutError
    ):
        bus.stop(timeout=_STOP_TIMEOUT)


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so ``finally`` blocks run, quietly."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signal(bus: Dispatcher) -> Iterator[None]:
    """For the block, SIGINT and SIGTERM stop ``bus`` and raise :class:`_Interrupted`.

    The stop is requested from a helper thread, at once: the main thread may be inside
    ``bus.start()`` waiting for a connection that never answers, and only a stop request ends
    that wait. A signal the parent process ignores stays ignored. The previous handlers are
    restored afterwards, so calling :func:`main` in-process is safe; outside the main thread,
    Python cannot install handlers and nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SimpleQueue.put is reentrant, hence safe in a signal handler; Event.set is not.
    requests: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def stop_when_asked() -> None:
        if requests.get():
            _stop_quietly(bus)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        requests.put(True)
        raise _Interrupted(signum)

    threading.Thread(target=stop_when_asked, name=f"{PROG}-signals", daemon=True).start()
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        requests.put(False)


# --------------------------------------------------------------------------------------------
# notify


def _notify(dsn: str, source: str, channel: str, payload: str) -> int:
    """Send ``payload``, or with ``-`` each line of standard input; return :data:`EXIT_OK`."""
    channel = _checked_channel(channel)
    if payload == "-":
        read = _stdin_reader()
    else:
        _checked_payload(payload, "invalid payload")
    bus = Dispatcher(dsn)
    with _stop_on_signal(bus):
        try:
            _start(bus, dsn, source)
            if payload == "-":
                _notify_lines(bus, channel, read)
            else:
                bus.notify(channel, payload)
        finally:
            _stop_quietly(bus)
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
    return _checked_payload(text, f"invalid payload at line {number} of standard input")


def _checked_payload(payload: str, context: str) -> str:
    try:
        return check_payload(payload)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"{context}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Validation, DSN and messages


def _checked_channel(channel: str) -> str:
    try:
        return check_channel(channel)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"invalid channel name: {exc}") from exc


def _check_dsn(dsn: str, source: str) -> None:
    """Reject a malformed DSN before any thread starts, naming where it came from."""
    try:
        psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        reason = _one_line(str(exc)).removeprefix("invalid dsn: ")
        raise CommandError(f"invalid connection string (from {source}): {reason}") from exc


# Where a password can be written in a DSN that libpq may fail to parse (and then quote back):
_URI_USERINFO_PASSWORD = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:([^/?#]*)@")
_URI_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#\s]*)")
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")


def _passwords(dsn: str) -> set[str]:
    """Every form in which the password of ``dsn`` could be quoted back (none if it has none)."""
    found: set[str] = set()
    with contextlib.suppress(psycopg2.ProgrammingError):
        found.add(psycopg2.extensions.parse_dsn(dsn).get("password", ""))
    for pattern in (_URI_USERINFO_PASSWORD, _URI_QUERY_PASSWORD):
        for match in pattern.finditer(dsn):
            found.update({match.group(1), urllib.parse.unquote(match.group(1))})
    for match in _KEYWORD_PASSWORD.finditer(dsn):
        written = match.group(1)
        found.update({written, written.strip("'")})
    found.discard("")
    return found


class _Redacting(logging.Formatter):
    """``pgpubsub-dispatch: <level>: <message>``, with the DSN's password masked."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    def format(self, record: logging.LogRecord) -> str:
        return redact(f"{PROG}: {record.levelname.lower()}: {super().format(record)}", self._dsn)


@contextlib.contextmanager
def _library_logging(verbosity: int, dsn: str) -> Iterator[None]:
    """Show the ``pgpubsub_dispatch`` log on stderr for the block, passwords masked.

    By default only errors (a bug in the library): this module reports connection failures
    itself, in one line, and the library's warnings about them would repeat it. ``-v`` shows
    info, ``-vv`` debug. The logger's previous level is restored afterwards.
    """
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("pgpubsub_dispatch")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting(dsn))
    handler.setLevel(level)
    previous = logger.level
    if verbosity:
        logger.setLevel(level)
    logger.addHandler(handler)  # also keeps logging's last-resort stderr handler quiet
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


_TARGET_PARAMETERS = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "service": "PGSERVICE",
}


def _target(dsn: str) -> str:
    """Where libpq will connect, as ``host=... port=... dbname=... user=...`` (no password)."""
    try:
        given = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        given = {}
    words = []
    for name, variable in _TARGET_PARAMETERS.items():
        value = given.get(name) or os.environ.get(variable)
        if value:
            words.append(f"{name}={value}")
    return " ".join(words) or "libpq's defaults"


def _one_line(text: str) -> str:
    """libpq's multi-line messages (``...failed\\n\\tIs the server running...``) as one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _describe_server_error(exc: psycopg2.Error) -> str:
    message = _one_line(str(exc)) or type(exc).__name__
    return f"{message} (SQLSTATE {exc.pgcode})" if exc.pgcode else message


def _describe_chain(exc: BaseException) -> str:
    """The message of ``exc`` followed by its cause's, e.g. ``DispatcherStopped`` and why."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = _one_line(str(current))
        if text and not any(text in part for part in parts):  # "lost: <cause>", then <cause>
            parts.append(text)
        current = current.__cause__
    return ": ".join(parts) or type(exc).__name__


def _report(message: str, dsn: str, level: str = "error") -> None:
    """Write ``pgpubsub-dispatch: <level>: <message>`` to standard error, password scrubbed."""
    _say(f"{PROG}: {level}: {redact(_one_line(message), dsn)}")


def _say(line: str) -> None:
    """Write one line to standard error, flushed at once."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nowhere left to tell
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _quoted(channel: str) -> str:
    return json.dumps(channel, ensure_ascii=False)


def _ensure_utf8(stream: TextIO) -> None:
    """JSON lines are UTF-8 whatever the locale says (non-ASCII is written unescaped)."""
    if isinstance(stream, io.TextIOWrapper) and stream.encoding.lower().replace("-", "") != "utf8":
        stream.reconfigure(encoding="utf-8")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on a broken pipe."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pgpubsub-dispatch")
    except Exception:  # not installed (running from a source tree): still answer
        return "unknown"
