"""A long-running service: handlers, ``start()``, and a clean ``stop()`` on SIGTERM or SIGINT.

It works through jobs announced on a channel: each notification on ``jobs`` is a job, logged
and then acknowledged by a notification on ``jobs.done`` sent from inside the handler. A job
with an empty payload makes the handler raise: the error is logged with its traceback and the
service goes on. Run it as it is::

    python examples/service.py postgresql://me@localhost/mydb
    DATABASE_URL=postgresql://me@localhost/mydb python examples/service.py
    PGHOST=localhost PGDATABASE=mydb python examples/service.py --channel jobs --channel urgent

then, from anywhere else::

    psql -c "SELECT pg_notify('jobs', 'resize image 42')"
    pgpubsub-dispatch notify jobs 'resize image 42'
    pgpubsub-dispatch listen jobs.done              # to see the acknowledgements

The DSN is the argument, else what :func:`pgpubsub_dispatch.devserver.server` finds, like every
example (``PGPUBSUB_DSN``, ``DATABASE_URL``, libpq's environment, else a throwaway server whose
address it logs; see README.rst, "Servers for examples and tests"). It logs ``listening on
...`` once notifications flow, and stops cleanly on SIGTERM (``kill``, ``docker stop``,
systemd) or SIGINT (Ctrl-C): exit 0. A lost connection is re-established by the dispatcher,
which logs it; the service then logs ``listening again ...``. Exit 2 if no server could be
had or reached at start, 1 if the dispatcher stops by itself.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import psycopg2

from pgpubsub_dispatch import (
    Dispatcher,
    NoServerAvailable,
    Notification,
    devserver,
    disconnected,
    reconnected,
)

log = logging.getLogger("service")


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
        help="channel announcing jobs (exact, case-sensitive; repeatable; default: jobs)",
    )
    parser.add_argument(
        "--done-channel", default="jobs.done", metavar="NAME", help="default: jobs.done"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with devserver.server(args.dsn) as dsn:
            return serve(dsn, args.channels or ["jobs"], args.done_channel)
    except NoServerAvailable as exc:
        log.error("%s", exc)
        return 2


def serve(dsn: str, channels: list[str], done_channel: str) -> int:
    bus = Dispatcher(dsn, application_name="pgpubsub-service", connect_timeout=10)

    def work(notification: Notification) -> None:  # runs on the dispatcher's thread
        if not notification.payload:
            raise ValueError(f"empty job on {notification.channel!r}")
        log.info(
            "job %r on %r from pid %d", notification.payload, notification.channel, notification.pid
        )
        # Called from a handler, notify() runs in place on the dispatcher's thread.
        bus.notify(done_channel, notification.payload)

    for channel in channels:
        bus.subscribe(channel, work)

    stop_requested = threading.Event()
    failed: list[BaseException] = []

    # Lifecycle signals: their receivers run on the dispatcher's thread. When the connection
    # is lost the dispatcher reconnects by itself and LISTENs again (it logs both); what it
    # cannot know is what the service missed meanwhile.
    def on_reconnected(sender: Dispatcher, backend_pid: int) -> None:
        log.info(
            "listening again as backend pid %d; jobs announced while disconnected were lost "
            "(a real service would look for them in its jobs table now)",
            backend_pid,
        )

    def on_disconnected(sender: Dispatcher, error: BaseException | None) -> None:
        if error is not None and not sender.running:  # it stopped for good: a bug
            failed.append(error)
            stop_requested.set()

    # blinker holds receivers weakly unless told otherwise; these are local functions.
    reconnected.connect(on_reconnected, sender=bus, weak=False)
    disconnected.connect(on_disconnected, sender=bus, weak=False)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Event.set() takes a lock that Event.wait() holds for an instant in this very
        # (main) thread, where Python runs signal handlers: set it from another thread so
        # that the handler can never deadlock.
        threading.Thread(target=stop_requested.set, name="stop-request").start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        bus.start()
    except (psycopg2.OperationalError, TimeoutError) as exc:
        log.error("cannot connect: %s", " ".join(str(exc).split()))
        return 2
    log.info(
        "listening on %s as backend pid %s; stop with SIGTERM or Ctrl-C",
        ", ".join(repr(c) for c in sorted(bus.channels)),
        bus.backend_pid,
    )
    stop_requested.wait()
    if failed:
        log.error("the dispatcher stopped: %s", failed[0])
        return 1
    log.info("stopping")
    bus.stop(timeout=10)  # UNLISTEN, close the connection, end the thread
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
