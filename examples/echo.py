"""Echo: the 2015 ``pgpubsub`` echo example, on the ancestor's API that this package keeps.

It LISTENs on a channel and re-NOTIFYs every payload it receives. A listening session also
receives its own notifications, with its own backend pid, so it skips those: without that
check, an echo that answers on a channel it listens to would answer itself forever.

Run it as it is, and stop it with Ctrl-C or SIGTERM (exit 0)::

    python examples/echo.py postgresql://me@localhost/mydb            # echo on channel "echo"
    python examples/echo.py --channel requests --to replies           # answer on another one
    psql -c "SELECT pg_notify('echo', 'hello')"                       # from anywhere else
    pgpubsub-dispatch listen echo                                     # to watch both copies

The DSN is the argument, else what :func:`pgpubsub_dispatch.devserver.server` finds, like every
example (``PGPUBSUB_DSN``, ``DATABASE_URL``, libpq's environment, else a throwaway server; see
README.rst, "Servers for examples and tests"). It prints ``echo: listening ...`` once
listening, then one line per payload it echoed. If the connection is lost it reconnects by
itself and prints ``echo: reconnected ...``; messages sent while it was disconnected are not
echoed. Exit 2 if no server could be had or reached.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import psycopg2

import pgpubsub_dispatch as pgpubsub
from pgpubsub_dispatch import NoServerAvailable, devserver


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "dsn",
        nargs="?",
        help="libpq connection string or URI (default: $PGPUBSUB_DSN, $DATABASE_URL, libpq's "
        "PG* environment, else a throwaway server)",
    )
    parser.add_argument("--channel", default="echo", help="channel to listen to (default: echo)")
    parser.add_argument("--to", help="channel to echo to (default: the same channel)")
    args = parser.parse_args(argv)
    reply_channel = args.to or args.channel

    # SIGTERM ends the loop like Ctrl-C (SIGINT) does, so that close() runs either way; both
    # are set explicitly, since a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with devserver.server(args.dsn) as dsn:
            return echo(dsn, args.channel, reply_channel)
    except NoServerAvailable as exc:
        print(f"echo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while the throwaway server starts
        return 0


def echo(dsn: str, channel: str, reply_channel: str) -> int:
    """Echo what ``channel`` receives to ``reply_channel`` until SIGINT or SIGTERM."""
    try:
        # Same arguments as psycopg2.connect; reconnect=True opts in to reconnection, which
        # changes the backend pid: hence own_pids below, re-read after each reconnection.
        pubsub = pgpubsub.connect(dsn, reconnect=True)
    except (psycopg2.OperationalError, TimeoutError) as exc:
        print(f"echo: cannot connect: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0

    def on_reconnected(sender: pgpubsub.Dispatcher, backend_pid: int) -> None:
        print(f"echo: reconnected as backend pid {backend_pid}", flush=True)

    # The connection is re-established by itself; messages sent meanwhile are lost.
    pgpubsub.reconnected.connect(on_reconnected, sender=pubsub.dispatcher)
    try:
        # The ancestor's listen() reads an SQL identifier; quoted, it is the exact name given.
        pubsub.listen('"' + channel.replace('"', '""') + '"')
        own_pid = pubsub.conn.get_backend_pid()
        print(f"echo: listening on {channel!r} as backend pid {own_pid}", flush=True)
        own_pids = {own_pid}  # after a reconnection, the session (and its pid) is new
        for e in pubsub.events():
            if e is None:
                continue  # a timeout: only yielded with events(yield_timeouts=True)
            if pubsub.backend_pid is not None:
                own_pids.add(pubsub.backend_pid)
            if e.pid in own_pids:
                continue  # our own echo coming back: answering it would loop forever
            pubsub.notify(reply_channel, e.payload)
            print(f"echoed {e.payload!r} from pid {e.pid} to {reply_channel!r}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        pubsub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
