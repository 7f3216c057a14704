"""Gap-free channels against plain ones, in one run: ``python -m benchmarks.gapless``.

Workloads (each plain and gap-free, same shape, same server, one after the other):

- ``receive``: another session sends ``--count`` notifications in transactions of 100
  (``pg_notify`` or ``pgpubsub_notify`` over ``unnest``); send rate = notifications / the
  sender's time; receive rate = notifications / time from the first send to the last handler
  call of a started ``Dispatcher`` (a counting handler).
- ``plain with gap-free configured``: the plain receive again, on a dispatcher that also has a
  gap-free channel (idle): what the ordering stage costs plain channels when it is in use.
- ``catch-up``: ``--count`` rows committed while no dispatcher runs, then delivered by one
  started with ``since=0``: the rate of the catch-up reads.
- ``notify()``: ``Dispatcher.notify`` from 1 and 8 threads for ``--seconds``.
- ``concurrent senders``: 4 sessions, one notification per transaction, all on one channel or
  each on its own (gap-free senders on one channel wait for each other's counter row).

The log is installed in a throwaway schema, dropped at the end. The server: ``--dsn``, else
``devserver.server()`` (``PGPUBSUB_DSN``, ..., or a throwaway embedded server).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg2
from psycopg2 import sql

from pgpubsub_dispatch import Dispatcher, devserver, gapless

__all__ = ["main"]

_BATCH = 100


class _Counter:
    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = threading.Event()
        self.last = 0.0

    def __call__(self, notification: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.last = time.perf_counter()
            self.done.set()


def _send_batches(dsn: str, query: Any, channel: str, count: int) -> float:
    """Send ``count`` notifications in transactions of 100; return the seconds it took."""
    conn = psycopg2.connect(dsn)
    try:
        payloads = [f"{n:064d}" for n in range(count)]
        started = time.perf_counter()
        with conn.cursor() as cur:
            for first in range(0, count, _BATCH):
                chunk = payloads[first : first + _BATCH]
                cur.execute(query, ([channel] * len(chunk), chunk))
                conn.commit()
        return time.perf_counter() - started
    finally:
        conn.close()


def _queries(schema: str) -> dict[str, Any]:
    return {
        "plain": "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)",
        "gap-free": sql.SQL(
            "SELECT {}.pgpubsub_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)"
        ).format(sql.Identifier(schema)),
    }


def _receive(dsn: str, schema: str, kind: str, count: int, extra_gapless: bool) -> dict[str, float]:
    channel = f"bench_{uuid.uuid4().hex[:8]}"
    counter = _Counter(count)
    if kind == "gap-free":
        config: Any = gapless.Config([channel], schema=schema)
    elif extra_gapless:
        config = gapless.Config([channel + "_idle"], schema=schema)
    else:
        config = None
    bus = Dispatcher(dsn, gapless=config)
    bus.subscribe(channel, counter)
    if extra_gapless:
        bus.subscribe(channel + "_idle", lambda n: None)
    with bus:
        started = time.perf_counter()
        sending = _send_batches(dsn, _queries(schema)[kind], channel, count)
        if not counter.done.wait(120):
            raise RuntimeError(f"{kind}: received {counter.count} of {count}")
        receiving = counter.last - started
    return {"send": count / sending, "receive": count / receiving}


def _catch_up(dsn: str, schema: str, count: int) -> float:
    channel = f"bench_{uuid.uuid4().hex[:8]}"
    _send_batches(dsn, _queries(schema)["gap-free"], channel, count)
    counter = _Counter(count)
    bus = Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema, since={channel: 0}))
    bus.subscribe(channel, counter)
    started = time.perf_counter()
    with bus:
        if not counter.done.wait(120):
            raise RuntimeError(f"catch-up: received {counter.count} of {count}")
    return count / (counter.last - started)


def _hammer(threads: int, seconds: float, call: Callable[[int, int], None]) -> float:
    """Call ``call(thread, n)`` from ``threads`` threads for ``seconds``; calls per second."""
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        n = 0
        while time.perf_counter() < stop[0]:
            call(index, n)
            n += 1
        counts[index] = n

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    started = time.perf_counter()
    stop[0] = started + seconds
    barrier.wait()
    for worker_thread in workers:
        worker_thread.join()
    return sum(counts) / (time.perf_counter() - started)


def _bus_notify(dsn: str, schema: str, kind: str, threads: int, seconds: float) -> float:
    channel = f"bench_{uuid.uuid4().hex[:8]}"
    config = gapless.Config([channel], schema=schema) if kind == "gap-free" else None
    with Dispatcher(dsn, gapless=config) as bus:
        return _hammer(threads, seconds, lambda i, n: bus.notify(channel, f"{i}:{n}"))


def _concurrent(dsn: str, schema: str, kind: str, channels: int, seconds: float) -> float:
    senders = 4
    names = [f"bench_{uuid.uuid4().hex[:8]}" for _ in range(channels)]
    conns = [psycopg2.connect(dsn) for _ in range(senders)]
    for conn in conns:
        conn.autocommit = True
    query = (
        "SELECT pg_notify(%s, %s)"
        if kind == "plain"
        else sql.SQL("SELECT {}.pgpubsub_notify(%s, %s)").format(sql.Identifier(schema))
    )

    def send(index: int, n: int) -> None:
        with conns[index].cursor() as cur:
            cur.execute(query, (names[index % channels], f"{index}:{n}"))

    try:
        return _hammer(senders, seconds, send)
    finally:
        for conn in conns:
            conn.close()


def run(dsn: str, count: int, seconds: float) -> list[tuple[str, float, float]]:
    """Every workload; rows of (workload, plain, gap-free), rates per second."""
    schema = f"pgpubsub_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(dsn)
    gapless.install(conn, schema=schema)
    rows: list[tuple[str, float, float]] = []
    try:
        plain = _receive(dsn, schema, "plain", count, extra_gapless=False)
        free = _receive(dsn, schema, "gap-free", count, extra_gapless=False)
        rows.append((f"send, {_BATCH} per transaction", plain["send"], free["send"]))
        rows.append((f"receive, {_BATCH} per transaction", plain["receive"], free["receive"]))
        mixed = _receive(dsn, schema, "plain", count, extra_gapless=True)
        rows.append(("receive plain, gap-free also in use", plain["receive"], mixed["receive"]))
        rows.append(
            ("catch-up after downtime (gap-free)", float("nan"), _catch_up(dsn, schema, count))
        )
        for threads in (1, 8):
            rows.append(
                (
                    f"Dispatcher.notify(), {threads} thread{'s' if threads > 1 else ''}",
                    _bus_notify(dsn, schema, "plain", threads, seconds),
                    _bus_notify(dsn, schema, "gap-free", threads, seconds),
                )
            )
        for channels in (1, 4):
            rows.append(
                (
                    f"4 sessions, 1 per txn, {channels} channel{'s' if channels > 1 else ''}",
                    _concurrent(dsn, schema, "plain", channels, seconds),
                    _concurrent(dsn, schema, "gap-free", channels, seconds),
                )
            )
    finally:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.commit()
        conn.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gap-free benchmarks and print a table; return 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gapless", description=__doc__)
    parser.add_argument("--dsn", default=None, help="the server (default: devserver.server())")
    parser.add_argument("--count", type=int, default=50_000, help="notifications per receive")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per notify() run")
    args = parser.parse_args(argv)
    with devserver.server(args.dsn) as dsn:
        rows = run(dsn, args.count, args.seconds)
    print(f"{'workload':44} {'plain':>12} {'gap-free':>12} {'ratio':>7}")
    for name, plain, free in rows:
        plain_text = "-" if plain != plain else f"{plain:,.0f}/s"
        ratio = "-" if plain != plain else f"{free / plain:.2f}"
        print(f"{name:44} {plain_text:>12} {free:>10,.0f}/s {ratio:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
