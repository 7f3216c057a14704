"""``notify()`` throughput: our ``Dispatcher`` from 1, 8 and 32 threads against plain psycopg2.

Every configuration sends to a fresh channel nobody listens to, for ``notify_seconds``, each
call with a distinct payload of ``payload_bytes`` (64), and returns once committed (with the
server's default ``synchronous_commit``: each transaction waits for its WAL flush, as an
application's would):

- ``psycopg2-1`` (the baseline of the ratios): one autocommit psycopg2 connection, one thread,
  one ``SELECT pg_notify(%s, %s)`` per statement;
- ``dispatcher-N``: N threads calling ``Dispatcher.notify()`` on one started dispatcher;
- ``psycopg2-shared-N`` (for reference): N threads sharing one psycopg2 connection, a lock
  around each statement.

Rate = calls completed / time from the common start to the last thread's end. The baseline
is measured first and again last, and its rate is the mean of the two: its commits wait for
the WAL flush, whose speed drifts on a shared machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg2

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


def notify(ctx: Context) -> dict[str, Figures]:
    """Measure every configuration once, the baseline twice (see the module docstring)."""
    labels = notify_labels(ctx.settings.notify_threads)
    results: dict[str, Figures] = {}
    for key, label in labels.items():
        kind, _, n = key.rpartition("-")
        threads = int(n)
        body = (
            (lambda t=threads: _dispatcher(ctx, t))
            if kind == "dispatcher"
            else (lambda t=threads: _psycopg2(ctx, t))
        )
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
