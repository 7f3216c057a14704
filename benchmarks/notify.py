"""``notify()`` throughput: our ``Dispatcher`` from 1, 8 and 32 threads against plain psycopg2.

Every configuration sends to a fresh channel nobody listens to, for ``notify_seconds``, each
call with a distinct payload of ``payload_bytes`` (64), and returns once committed (with the
server's default ``synchronous_commit``: each transaction waits for its WAL flush, as an
application's would):

- ``psycopg2-1`` (the baseline of the ratios): one autocommit psycopg2 connection, one thread,
  one ``SELECT pg_notify(%s, %s)`` per statement;
- ``dispatcher-N``: N threads calling ``Dispatcher.notify()`` on one started dispatcher;
- ``psycopg2-shared-N`` (for reference): N threads sharing one psycopg2 connection, a lock
  around each statement;
- ``floor-N`` (for reference): N threads handing their notifies to one thread that owns an
  asynchronous psycopg2 connection, the least such a design costs in CPython: a deque, a
  wake-up socket written only when the owner is idle, one lock per call to wait on, every
  queued notify sent in one statement, nothing checked, no reconnection, no heartbeat, no
  delivery. The ``Dispatcher`` is this design; the gap between the two rows is what its
  features cost, and this row's own ratio is what the design allows on the machine.

Rate = calls completed / time from the common start to the last thread's end. The baseline
is measured first and again last, and its rate is the mean of the two: its commits wait for
the WAL flush, whose speed drifts on a shared machine.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable

import psycopg2
import psycopg2.extensions

from .workloads import Context, Figures

__all__ = ["BASELINE", "notify", "notify_labels"]

BASELINE = "psycopg2-1"

_SQL = "SELECT pg_notify(%s, %s)"


def notify_labels(threads: tuple[int, ...]) -> dict[str, str]:
    """Row labels of the notify configurations, baseline first."""
    labels = {BASELINE: "psycopg2 1 conn, 1 thread"}
    for n in threads:
        labels[f"dispatcher-{n}"] = f"Dispatcher, {n} thread{'s' if n > 1 else ''}"
    for n in threads:
        if n > 1:
            labels[f"psycopg2-shared-{n}"] = f"psycopg2 1 conn+lock, {n} thr"
    for n in threads:
        labels[f"floor-{n}"] = f"floor: owner thread, {n} thr"
    return labels


def _hammer(threads: int, seconds: float, call: Callable[[str], None], size: int = 64) -> Figures:
    """Call ``call(payload)`` from ``threads`` threads for ``seconds``; return the rate.

    Every payload is distinct and ``size`` characters long.
    """
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    ends = [0.0] * threads
    errors: list[BaseException] = []
    end = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        done, stop = 0, end[0]
        try:
            while time.monotonic() < stop:
                call(f"{index} {done} ".ljust(size, "x"))
                done += 1
        except BaseException as exc:
            errors.append(exc)
        counts[index] = done
        ends[index] = time.monotonic()

    workers = [
        threading.Thread(target=worker, args=(i,), name=f"bench-notify-{i}", daemon=True)
        for i in range(threads)
    ]
    for thread in workers:
        thread.start()
    started = time.monotonic()
    end[0] = started + seconds
    barrier.wait()
    for thread in workers:
        thread.join(seconds + 30)
    if errors:
        raise RuntimeError(f"{len(errors)} notify calls failed, first: {errors[0]!r}")
    elapsed = max(ends) - started
    return {"rate": sum(counts) / elapsed, "calls": sum(counts), "elapsed_s": elapsed}


def _psycopg2(ctx: Context, threads: int) -> Figures:
    conn = psycopg2.connect(ctx.dsn)
    conn.autocommit = True
    channel, s = ctx.channel("notify"), ctx.settings
    try:
        cur = conn.cursor()
        if threads == 1:
            return _hammer(
                1, s.notify_seconds, lambda p: cur.execute(_SQL, (channel, p)), s.payload_bytes
            )
        lock = threading.Lock()

        def locked(payload: str) -> None:
            with lock:
                cur.execute(_SQL, (channel, payload))

        return _hammer(threads, s.notify_seconds, locked, s.payload_bytes)
    finally:
        conn.close()


def _dispatcher(ctx: Context, threads: int) -> Figures:
    from pgpubsub_dispatch import Dispatcher

    channel, s = ctx.channel("notify"), ctx.settings
    with Dispatcher(ctx.dsn) as bus:
        return _hammer(threads, s.notify_seconds, lambda p: bus.notify(channel, p), s.payload_bytes)


_BATCH_SQL = "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)"


class _Floor:
    """The least a thread that owns the connection and serves other threads' notifies can do.

    Callers queue ``(payload, lock)`` and wait on the lock; the owner sends everything queued
    in one statement (one transaction), waits for it, and releases the callers. The wake-up
    socket is written only when the owner said it would sleep (as the ``Dispatcher``'s).
    """

    def __init__(self, dsn: str, channel: str) -> None:
        self.channel = channel
        self.conn = psycopg2.connect(dsn, async_=True)
        self._wait_idle()
        self.cursor = self.conn.cursor()
        self.queue: collections.deque[tuple[str, threading.Lock]] = collections.deque()
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.armed = False
        self.running = True
        self.thread = threading.Thread(target=self._run, name="bench-floor", daemon=True)
        self.thread.start()

    def _wait_idle(self) -> None:
        conn = self.conn
        while True:
            state = conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            reading = state == psycopg2.extensions.POLL_READ
            select.select([conn] if reading else [], [] if reading else [conn], [])

    def _run(self) -> None:
        queue, waiting = self.queue, select.poll()
        waiting.register(self.reader, select.POLLIN)
        while self.running:
            self.armed = False
            if not queue:
                waiting.poll(100)
                with contextlib.suppress(BlockingIOError):
                    self.reader.recv(4096)
                continue
            batch = [queue.popleft() for _ in range(len(queue))]
            payloads = [payload for payload, _ in batch]
            self.cursor.execute(_BATCH_SQL, ([self.channel] * len(batch), payloads))
            self._wait_idle()
            for _, done in batch:
                done.release()

    def notify(self, payload: str) -> None:
        done = threading.Lock()
        done.acquire()
        self.queue.append((payload, done))
        if not self.armed:
            self.armed = True
            self.writer.send(b"\0")
        done.acquire()

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.conn.close()
        self.reader.close()
        self.writer.close()


def _floor(ctx: Context, threads: int) -> Figures:
    s = ctx.settings
    floor = _Floor(ctx.dsn, ctx.channel("notify"))
    try:
        return _hammer(threads, s.notify_seconds, floor.notify, s.payload_bytes)
    finally:
        floor.close()


def notify(ctx: Context) -> dict[str, Figures]:
    """Measure every configuration once, the baseline twice (see the module docstring)."""
    labels = notify_labels(ctx.settings.notify_threads)
    results: dict[str, Figures] = {}
    for key, label in labels.items():
        kind, _, n = key.rpartition("-")
        threads = int(n)
        run = {"dispatcher": _dispatcher, "floor": _floor}.get(kind, _psycopg2)
        body = lambda t=threads, run=run: run(ctx, t)  # noqa: E731
        results[key] = ctx.measure("notify", key, label, body, "{rate:>12,.0f} calls/s")
    first = results[BASELINE]
    again = ctx.measure(
        "notify",
        BASELINE,
        labels[BASELINE] + " (again)",
        lambda: _psycopg2(ctx, 1),
        "{rate:>12,.0f} calls/s",
    )
    if "error" not in first and "error" not in again:
        results[BASELINE] = {
            "rate": (first["rate"] + again["rate"]) / 2,
            "calls": first["calls"] + again["calls"],
            "rate_first": first["rate"],
            "rate_last": again["rate"],
        }
    return results
