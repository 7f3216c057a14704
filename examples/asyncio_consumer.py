"""Notifications in asyncio: ``async for`` over a stream, without ever blocking the event loop.

It opens one stream of the channels it is given, prints each notification as it arrives, and
ends after ``--count`` notifications, or on Ctrl-C or SIGTERM. The dispatcher's thread does the
listening; the event loop only awaits. Run it as it is, from the repository's root::

    python examples/asyncio_consumer.py --count 2 --send hello --send world
    python examples/asyncio_consumer.py postgresql://me@localhost/mydb --channel orders
    DATABASE_URL=postgresql://me@localhost/mydb python examples/asyncio_consumer.py --count 3

then, from anywhere else::

    psql -c "SELECT pg_notify('orders', 'order 42')"
    pgpubsub-dispatch notify orders 'order 42'

``--send TEXT`` (repeatable) makes it send notifications itself once it listens, on the first
channel: with no server configured it starts a throwaway one that no other program can reach.
The DSN is the argument, else what :func:`pgpubsub_dispatch.devserver.server` finds, like every
example (``PGPUBSUB_DSN``, ``DATABASE_URL``, libpq's environment, or that throwaway server; see
README.rst, "Servers for examples and tests"). It prints ``listening on ...`` once
notifications flow. Exit 0 after ``--count`` notifications or on SIGINT/SIGTERM; 2 if no server
could be had or reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

import psycopg2

from pgpubsub_dispatch import Dispatcher, NoServerAvailable, NotificationStream, devserver


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "dsn",
        nargs="?",
        help="libpq connection string or URI (default: $PGPUBSUB_DSN, $DATABASE_URL, libpq's "
        "PG* environment, else a throwaway server)",
    )
    parser.add_argument(
        "--channel",
        dest="channels",
        action="append",
        metavar="NAME",
        help="channel to listen to (exact, case-sensitive; repeatable; default: orders)",
    )
    parser.add_argument(
        "--count", type=int, metavar="N", help="exit after N notifications (default: never)"
    )
    parser.add_argument(
        "--send",
        action="append",
        default=[],
        metavar="TEXT",
        help="send TEXT on the first channel once listening (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        with devserver.server(args.dsn) as dsn:
            return asyncio.run(run(dsn, args.channels or ["orders"], args.count, args.send))
    except NoServerAvailable as exc:
        print(f"asyncio_consumer: {exc}", file=sys.stderr)
        return 2


async def run(dsn: str, channels: list[str], count: int | None, send: list[str]) -> int:
    """Start a dispatcher, consume until ``count`` or a signal, stop it; return the exit code."""
    stopped_by = stop_on_signals()
    bus = Dispatcher(dsn, application_name="pgpubsub-asyncio", connect_timeout=10)
    try:
        # start(), stop(), and opening or closing a stream wait for the server: they run in a
        # worker thread, so that the event loop goes on meanwhile.
        await asyncio.to_thread(bus.start)
        stream = bus.stream(*channels)
        await asyncio.to_thread(stream.open)
        try:
            print(f"listening on {', '.join(map(repr, stream.channels))}", flush=True)
            for text in send:
                await asyncio.to_thread(bus.notify, channels[0], text)
            received = await consume(stream, count)
        finally:
            await asyncio.to_thread(stream.close)
        print(f"received {received} notification{'' if received == 1 else 's'}", flush=True)
        return 0
    except asyncio.CancelledError:
        if not stopped_by:
            raise  # cancelled by someone else: let them know
        print(f"stopped by {stopped_by[0]}", flush=True)
        return 0
    except (psycopg2.OperationalError, TimeoutError) as exc:
        print(f"asyncio_consumer: cannot connect: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        await asyncio.to_thread(bus.stop, 10)  # UNLISTEN, close the connection, end the thread


async def consume(stream: NotificationStream, count: int | None) -> int:
    """Print notifications of ``stream`` as they arrive, until ``count``; return how many."""
    received = 0
    async for notification in stream:  # awaits without blocking the event loop
        print(
            f"{notification.channel}: {notification.payload!r} from pid {notification.pid}",
            flush=True,
        )
        received += 1
        if received == count:
            break
    return received


def stop_on_signals() -> list[str]:
    """Make SIGINT and SIGTERM cancel the current task; the list gets the signal's name."""
    task = asyncio.current_task()
    assert task is not None, "call it from a task"
    stopped_by: list[str] = []

    def stop(signum: signal.Signals) -> None:
        stopped_by.append(signum.name)
        task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
            loop.add_signal_handler(signum, stop, signum)
    return stopped_by


if __name__ == "__main__":
    sys.exit(main())
