"""Notifications in asyncio: ``async for`` over a stream, or an ``async def`` handler.

It opens one stream of the channels it is given, prints each notification as it arrives, and
ends after ``--count`` notifications, or on Ctrl-C or SIGTERM. With ``--handler``, an ``async
def`` handler subscribed to each channel does the printing instead, on this program's event
loop. Either way the dispatcher's thread does the listening, and the event loop never waits for
it. Run it as it is, from the repository's root::

    python examples/asyncio_consumer.py --count 2 --send hello --send world
    python examples/asyncio_consumer.py --handler --count 2 --send hello --send world
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

from pgpubsub_dispatch import (
    Dispatcher,
    NoServerAvailable,
    Notification,
    NotificationStream,
    devserver,
)


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
    parser.add_argument(
        "--handler",
        action="store_true",
        help="print from an async def handler subscribed to each channel, not from a stream",
    )
    args = parser.parse_args(argv)
    channels = args.channels or ["orders"]
    try:
        with devserver.server(args.dsn) as dsn:
            return asyncio.run(run(dsn, channels, args.count, args.send, handler=args.handler))
    except NoServerAvailable as exc:
        print(f"asyncio_consumer: {exc}", file=sys.stderr)
        return 2


async def run(
    dsn: str, channels: list[str], count: int | None, send: list[str], *, handler: bool = False
) -> int:
    """Start a dispatcher, consume until ``count`` or a signal, stop it; return the exit code."""
    stopped_by = stop_on_signals()
    bus = Dispatcher(dsn, application_name="pgpubsub-asyncio", connect_timeout=10)
    try:
        # start(), stop(), and opening or closing a stream wait for the server: they run in a
        # worker thread, so that the event loop goes on meanwhile.
        await asyncio.to_thread(bus.start)
        if handler:
            received = await handle(bus, channels, count, send)
        else:
            stream = bus.stream(*channels)
            await asyncio.to_thread(stream.open)
            try:
                await announce(bus, stream.channels, send)
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


async def announce(bus: Dispatcher, channels: Sequence[str], send: list[str]) -> None:
    """Say that notifications flow, then send ``send`` on the first channel."""
    print(f"listening on {', '.join(map(repr, channels))}", flush=True)
    for text in send:
        await asyncio.to_thread(bus.notify, channels[0], text)


async def handle(bus: Dispatcher, channels: list[str], count: int | None, send: list[str]) -> int:
    """Print notifications from an ``async def`` handler until ``count``; return how many."""
    loop = asyncio.get_running_loop()
    enough = asyncio.Event()
    received = 0

    async def print_it(notification: Notification) -> None:  # runs on this event loop
        nonlocal received
        if received == count:
            return  # more came in before it was unsubscribed
        print(
            f"{notification.channel}: {notification.payload!r} from pid {notification.pid}",
            flush=True,
        )
        received += 1
        if received == count:
            enough.set()

    for channel in channels:  # subscribe in a worker thread, naming this loop
        await asyncio.to_thread(bus.subscribe, channel, print_it, loop=loop)
    try:
        await announce(bus, channels, send)
        await enough.wait()
    finally:
        for channel in channels:
            await asyncio.to_thread(bus.unsubscribe, channel, print_it)
    return received


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
