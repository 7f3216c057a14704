"""The entry point: parse the command line (argparse), run the command, map failures to codes.

Runs on the main thread.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
from collections.abc import Sequence
from typing import Any

import psycopg2

from ..errors import PubSubError
from ._common import (
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    EXIT_OK,
    PROG,
    CommandError,
    describe_chain,
    describe_server_error,
    report,
)
from ._dsn import check_dsn, library_logging, resolve_dsn
from ._install import install
from ._listen import listen
from ._notify import notify
from ._output import default_output
from ._running import interrupted_exit

__all__ = ["build_parser", "main"]

_EXIT_CODES = (
    f"exit codes: {EXIT_OK} success (listen: also stopped by SIGINT/SIGTERM, by --count, by "
    f"--timeout without --count, or by a closed output); {EXIT_INCOMPLETE} listen --count not "
    f"reached within --timeout; {EXIT_ERROR} bad usage or input, connection failure or server "
    "error (one line on stderr); 130 (SIGINT) or 143 (SIGTERM) notify interrupted before it "
    "could confirm that everything was sent."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code (the console script and ``-m`` entry).

    :param argv: the arguments after the program name; ``None`` means ``sys.argv[1:]``.
    :returns: the exit code: ``EXIT_OK`` (0), ``EXIT_INCOMPLETE`` (1, ``listen`` with
        ``--count`` and ``--timeout`` that did not get its count), ``EXIT_ERROR`` (2, bad
        usage or input, connection or server failure, reported as one line on standard error)
        or 128 + the signal number (``notify`` interrupted by SIGINT or SIGTERM: 130 or 143).
        ``--help`` and ``--version`` print and return 0.
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
        with library_logging(args.verbose, dsn):
            return _run(args, dsn, source)
    except KeyboardInterrupt as exc:  # a second signal while cleaning up
        return interrupted_exit(args.command, exc)


def _run(args: argparse.Namespace, dsn: str, source: str) -> int:
    """Run the parsed command; every expected failure becomes one error line and exit 2."""
    try:
        check_dsn(dsn, source)
        if args.command == "listen":
            return listen(
                dsn,
                source,
                args.channels,
                count=args.count,
                timeout=args.timeout,
                output=args.output or default_output(),
            )
        if args.command == "install":
            return install(dsn, source, args.schema)
        return notify(dsn, source, args.channel, args.payload)
    except KeyboardInterrupt as exc:
        return interrupted_exit(args.command, exc)
    except CommandError as exc:
        report(str(exc), dsn)
    except psycopg2.Error as exc:
        report(describe_server_error(exc), dsn)
    except PubSubError as exc:
        report(describe_chain(exc), dsn)
    except (OSError, TimeoutError, concurrent.futures.TimeoutError) as exc:
        report(describe_chain(exc) or type(exc).__name__, dsn)
    return EXIT_ERROR


class _Parser(argparse.ArgumentParser):
    """An argument parser whose ``-v`` counts both before and after the command."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.verbose = getattr(parsed, "verbose", 0) + vars(parsed).pop("verbose_after", 0)
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``pgpubsub-dispatch`` (its ``--help`` is the manual).

    ``--dsn`` and ``-v`` are accepted before the command and after it (after wins for
    ``--dsn``; every ``-v`` counts).

    :returns: a parser whose namespace has ``command`` (``"listen"``, ``"notify"`` or
        ``"install"``, which has ``schema``), ``dsn``
        (``str`` or ``None``), ``verbose`` (``int``), and either ``channels``, ``count``,
        ``timeout``, ``output`` (listen; ``output`` is ``"json"``, ``"pretty"``, or ``None``
        to choose by whether standard output is a terminal) or ``channel``, ``payload``
        (notify).
    """
    parser = _Parser(
        prog=PROG,
        description="PostgreSQL LISTEN/NOTIFY from the command line.",
        epilog=_EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_global_options(parser, dsn_default=None, verbose_dest="verbose", verbose_default=0)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=argparse.ArgumentParser
    )

    # After the command too; SUPPRESS keeps a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(
        common,
        dsn_default=argparse.SUPPRESS,
        verbose_dest="verbose_after",
        verbose_default=argparse.SUPPRESS,
    )
    _add_listen(commands, common)
    _add_notify(commands, common)
    _add_install(commands, common)
    return parser


def _add_global_options(
    parser: argparse.ArgumentParser, *, dsn_default: Any, verbose_dest: str, verbose_default: Any
) -> None:
    parser.add_argument(
        "--dsn",
        default=dsn_default,
        help=(
            "libpq connection string or URI (default: $DATABASE_URL, else libpq's PGHOST, "
            "PGPORT, PGUSER, PGDATABASE... environment). Prefer PGPASSWORD or ~/.pgpass to a "
            "password here: other users can see command lines."
        ),
    )
    parser.add_argument(
        "-v",
        "--verbose",
        dest=verbose_dest,
        action="count",
        default=verbose_default,
        help="show the library's log on stderr: -v for info, -vv for debug",
    )


def _add_listen(commands: Any, common: argparse.ArgumentParser) -> None:
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
            f"exit codes: {EXIT_OK} stopped by a signal (SIGINT, SIGTERM), by --count, or by "
            f"--timeout without --count; {EXIT_INCOMPLETE} --timeout elapsed before --count "
            f"notifications; {EXIT_ERROR} error."
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


def _add_notify(commands: Any, common: argparse.ArgumentParser) -> None:
    notify = commands.add_parser(
        "notify",
        parents=[common],
        help="send a notification, or one per line of standard input",
        description=(
            "Send one notification, or with PAYLOAD '-' one per line of standard input, as the "
            "lines are read; exit 0 once all have committed."
        ),
        epilog=(
            f"exit codes: {EXIT_OK} sent; {EXIT_ERROR} error; 130 (SIGINT) or 143 (SIGTERM) "
            "interrupted before every notification was confirmed sent."
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


def _add_install(commands: Any, common: argparse.ArgumentParser) -> None:
    install = commands.add_parser(
        "install",
        parents=[common],
        help="create (or update) the gap-free channels' log: tables and functions",
        description=(
            "Create, if missing, the schema, the tables pgpubsub_channels, pgpubsub_log and "
            "pgpubsub_readers, and (re)create the functions pgpubsub_notify(channel, payload) "
            "and pgpubsub_prune(older_than, keep_last), in one transaction. Idempotent: run "
            "it again after upgrading. EXECUTE on the functions is revoked from PUBLIC; grant "
            "it to the roles that send."
        ),
        epilog=f"exit codes: {EXIT_OK} installed; {EXIT_ERROR} error.",
    )
    install.add_argument(
        "--schema",
        default="pgpubsub",
        metavar="NAME",
        help="the schema's exact name (default: pgpubsub)",
    )


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
