"""``python -m benchmarks``: run the suite, print the table, optionally write JSON.

The server: ``--dsn``, else ``PGPUBSUB_DSN``, else libpq's ``PG*`` environment, else a
throwaway embedded server (:func:`pgpubsub_dispatch.devserver.server`).
Exit status: 0 when every measurement succeeded, 1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence

from .config import WORKLOADS, settings_for
from .report import format_facts, format_table, sender_notes, write_json
from .runner import ONCE_PER_INVOCATION, run_benchmarks


def _workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(WORKLOADS)}"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Compare pgpubsub_dispatch's Dispatcher with a bare psycopg2 loop, psycopg 3, asyncpg "
            "and a naive blinker loop: receive throughput, backlog drain, latency (alone and "
            "beside a CPU-bound thread), notify() throughput, memory and idle CPU."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: under a minute")
    parser.add_argument(
        "--runs", type=_positive, help="repeat every workload N times (default 5, quick 1)"
    )
    parser.add_argument("--json", metavar="PATH", help="write every run's raw figures here")
    parser.add_argument(
        "--dsn",
        help="libpq DSN (default: PGPUBSUB_DSN, else PG* variables, else a throwaway server)",
    )
    parser.add_argument(
        "--only",
        type=_workloads,
        default=list(WORKLOADS),
        metavar="WORKLOAD,...",
        help=f"run only these: {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--senders", type=_positive, help="sender processes for the batched workloads (default 2)"
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    from pgpubsub_dispatch import devserver

    with devserver.server() as found:
        yield found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; return the exit status."""
    args = parse_args(argv)
    settings = settings_for(args.quick, args.runs, args.senders)
    with _server(args.dsn) as dsn:
        document = run_benchmarks(dsn, settings, args.only, argv=sys.argv)
    print()
    print(format_facts(document["machine"]))
    once = ", ".join(sorted(ONCE_PER_INVOCATION & set(document["workloads"])))
    print(
        f"{settings.runs} run(s){'' if settings.runs == 1 else ', medians'}"
        f"{f' ({once}: first run only)' if once and settings.runs > 1 else ''}; "
        "ratio = median of the runs' (figure / the same run's bare psycopg2 loop figure; "
        "notify: / one psycopg2 connection, one thread); "
        f"whole run {document['elapsed_s']:.0f} s"
    )
    for receiver, reason in document["skipped"].items():
        print(f"skipped {receiver}: {reason}")
    print()
    print(format_table(document["summary"]))
    print()
    for note in sender_notes(document["runs"], settings):
        print(note)
    if args.json:
        write_json(args.json, document)
        print(f"raw figures: {args.json}")
    for error in document["errors"]:
        print(f"FAILED: {error}", file=sys.stderr)
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
