"""The receive workloads: throughput, backlog drain and latency, alone or beside a busy thread.

Every workload measures each receiver in turn (never two at once: the machine may have two
cores), with a fresh connection and a fresh channel each time, in an order rotated by one
receiver every run so no receiver always goes first. Notifications come from the sender
processes of :mod:`.senders`.

- *throughput*: the receiver is consuming; the senders commit ``throughput_count``
  notifications, 100 per transaction. Rate = notifications / time from the first to the last
  handler call. ``cpu_us`` = the receiving process's CPU time per notification over the same
  span: the receiver's own cost, whoever set the pace (not recorded beside a busy thread).
  The senders' own rate is recorded too, and how long after them the receiver finished: a
  receiver that finishes just after the senders kept up with them, and its rate is the
  machine's (server and senders), not its own.
- *backlog*: the receiver LISTENs but does not read (see :meth:`.Receiver.hold`); the senders
  commit ``backlog_count`` notifications; after a short settle the receiver is released.
  Rate = notifications / time from the release to the last handler call; ``cpu_us`` as above.
- *latency*: one notification per transaction at ``latency_rate`` per second; latency = the
  handler's ``time.monotonic_ns()`` minus the sender's, taken just before it sent the statement
  (so it includes the sender's commit round trip, the same for every receiver: its median is
  recorded as ``sender_round_trip_us``). The samples come in ``latency_blocks`` blocks, the
  receivers taking turns block by block (each block on a fresh connection and channel, its
  first ``latency_warmup`` samples discarded), so a drift of the machine spreads evenly.
- *busy-*: the same with one CPU-bound pure-Python thread running in the receiving process.
  A busy throughput measurement that has not finished after ``busy_cap_seconds`` is rated on
  what was received by then (``capped`` in the JSON).
- *executor* (our ``Dispatcher`` only): ``executor=ThreadPoolExecutor(executor_workers)``, one
  handler on as many channels, each call sleeping ``executor_handler_seconds`` (the GIL is
  free meanwhile, as in a handler doing I/O); one sender process commits ``executor_count``
  notifications, the channels taking turns. Rate = notifications / time from the first
  handler call's start to the last one's end. The *ideal* rate, of workers always busy, is
  ``workers / the handlers' mean measured duration`` (a 0.1 ms sleep lasts longer on a busy
  machine). ``ordered`` says whether every channel's notifications were handled in the order
  sent.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import math
import os
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from .config import Settings
from .receivers import Receiver
from .senders import SenderPool
from .sinks import CountingSink, LatencySink

__all__ = ["RECEIVE_RUNNERS", "BusyThread", "Context", "Figures"]

Figures = dict[str, Any]
"""One measurement's raw figures (JSON-ready), or ``{"error": text}``."""

_SETTLE_SECONDS = 0.2
_counter = itertools.count()


@dataclasses.dataclass
class Context:
    """What a workload needs: where to connect, sizes, senders, which run this is.

    Attributes:
        dsn: the server.
        settings: sizes and rates.
        pool: the sender processes.
        run: index of the current run (0-based).
        receivers: the receivers that can run here, baseline first.
        log: prints one progress line.
    """

    dsn: str
    settings: Settings
    pool: SenderPool
    run: int
    receivers: list[type[Receiver]]
    log: Callable[[str], None]

    def channel(self, workload: str) -> str:
        """A channel name never used before by this process."""
        return f"bench_{os.getpid()}_{next(_counter)}_{workload.replace('-', '_')}"

    def order(self) -> list[type[Receiver]]:
        """The receivers in this run's order (rotated by one each run)."""
        if not self.receivers:
            return []
        shift = self.run % len(self.receivers)
        return self.receivers[shift:] + self.receivers[:shift]

    def measure(
        self, workload: str, name: str, label: str, body: Callable[[], Figures], show: str
    ) -> Figures:
        """Run ``body``; on failure record ``{"error": ...}`` instead of crashing the run."""
        try:
            figures = body()
        except Exception as exc:
            self.log(f"{workload:16} {label:24} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            return {"error": f"{type(exc).__name__}: {exc}"}
        try:
            shown = show.format(**figures)
        except (KeyError, TypeError, ValueError):
            shown = repr(figures)
        self.log(f"{workload:16} {label:24} {shown}")
        return figures


class BusyThread:
    """A CPU-bound pure-Python thread (a counting loop), for ``with`` blocks.

    Attributes:
        iterations_per_s: how fast it counted, a sign of how much of the GIL it got.
    """

    def __init__(self) -> None:
        self._running = False
        self._thread = threading.Thread(target=self._spin, name="bench-busy", daemon=True)
        self.iterations_per_s = 0.0

    def _spin(self) -> None:
        count = 0
        started = time.perf_counter()
        while self._running:
            count += 1
        self.iterations_per_s = count / (time.perf_counter() - started)

    def __enter__(self) -> BusyThread:
        self._running = True
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._running = False
        self._thread.join()


def _busy(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    return BusyThread() if enabled else contextlib.nullcontext()


@contextlib.contextmanager
def _opened(receiver: Receiver) -> Iterator[Receiver]:
    try:
        receiver.open()
        yield receiver
    finally:
        receiver.close()


def _check(receiver: Receiver) -> None:
    if receiver.error is not None:
        raise RuntimeError(f"the receiver failed: {receiver.error!r}") from receiver.error


# ------------------------------------------------------------------------------ throughput


def _throughput_once(ctx: Context, cls: type[Receiver], busy: bool) -> Figures:
    s = ctx.settings
    count = s.throughput_count
    sink = CountingSink(count)
    channel = ctx.channel("throughput")
    receiver = cls(ctx.dsn, channel, sink)
    busy_rate = None
    with _opened(receiver):
        with _busy(busy) as spinner:
            cpu = time.process_time()
            receiver.start()
            job = ctx.pool.batched(channel, count, s.per_transaction, s.transactions_per_trip)
            finished = sink.wait(s.busy_cap_seconds if busy else s.wait_seconds)
            stopped_ns, received = time.monotonic_ns(), sink.count
            cpu = time.process_time() - cpu
        if spinner is not None:
            busy_rate = spinner.iterations_per_s
        sent = job.wait(s.wait_seconds)
    _check(receiver)
    if finished:
        elapsed = (sink.last_ns - sink.first_ns) / 1e9
        received = count
    elif busy and received > 1:
        elapsed = (stopped_ns - sink.first_ns) / 1e9
    else:
        raise TimeoutError(f"received {received} of {count} notifications in time")
    return {
        "rate": (received - 1) / elapsed,
        "cpu_us": None if busy else cpu * 1e6 / received,
        "received": received,
        "elapsed_s": elapsed,
        "capped": not finished,
        "sender_rate": sent.rate,
        "receiver_behind_senders_s": ((sink.last_ns or stopped_ns) - sent.finished_ns) / 1e9,
        "busy_iterations_per_s": busy_rate,
    }


def throughput(ctx: Context, busy: bool = False) -> dict[str, Figures]:
    """Receive rate with the senders committing 100 notifications per transaction."""
    workload = "busy-throughput" if busy else "throughput"
    return {
        cls.key: ctx.measure(
            workload,
            cls.key,
            cls.label,
            lambda cls=cls: _throughput_once(ctx, cls, busy),  # type: ignore[misc]
            "{rate:>12,.0f} notif/s  (senders {sender_rate:,.0f}/s)"
            + ("" if busy else "  {cpu_us:.2f} µs CPU each"),
        )
        for cls in ctx.order()
    }


# ---------------------------------------------------------------------------------- backlog


def _backlog_once(ctx: Context, cls: type[Receiver]) -> Figures:
    s = ctx.settings
    count = s.backlog_count
    sink = CountingSink(count)
    channel = ctx.channel("backlog")
    receiver = cls(ctx.dsn, channel, sink)
    with _opened(receiver):
        receiver.hold()
        sent = ctx.pool.batched(channel, count, s.per_transaction, s.transactions_per_trip).wait(
            s.wait_seconds
        )
        time.sleep(_SETTLE_SECONDS)  # let the server push what the socket takes, as for all
        if sink.count:
            raise RuntimeError(f"the receiver read {sink.count} notifications while held")
        released, cpu = time.monotonic_ns(), time.process_time()
        receiver.start()
        finished = sink.wait(s.wait_seconds)
        cpu = time.process_time() - cpu
    _check(receiver)
    if not finished:
        raise TimeoutError(f"drained {sink.count} of {count} notifications in time")
    elapsed = (sink.last_ns - released) / 1e9
    return {
        "rate": count / elapsed,
        "cpu_us": cpu * 1e6 / count,
        "elapsed_s": elapsed,
        "sender_rate": sent.rate,
    }


def backlog(ctx: Context) -> dict[str, Figures]:
    """Drain rate of notifications that were all waiting before the receiver read any."""
    return {
        cls.key: ctx.measure(
            "backlog",
            cls.key,
            cls.label,
            lambda cls=cls: _backlog_once(ctx, cls),  # type: ignore[misc]
            "{rate:>12,.0f} notif/s  {cpu_us:.2f} µs CPU each",
        )
        for cls in ctx.order()
    }


# ---------------------------------------------------------------------------------- latency


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _latency_block(ctx: Context, cls: type[Receiver], busy: bool, samples: int) -> Figures:
    """One block: a fresh receiver and channel, ``latency_warmup`` + ``samples`` sent."""
    s = ctx.settings
    total = s.latency_warmup + samples
    sink = LatencySink(total)
    channel = ctx.channel("latency")
    receiver = cls(ctx.dsn, channel, sink)
    with _opened(receiver):
        with _busy(busy):
            receiver.start()
            job = ctx.pool.paced(channel, total, s.latency_rate)
            finished = sink.wait(total / s.latency_rate + s.wait_seconds)
        sent = job.wait(s.wait_seconds)
    _check(receiver)
    if not finished:
        raise TimeoutError(f"received {sink.count} of {total} notifications in time")
    return {"samples": sink.latencies_us(s.latency_warmup), "round_trip": sent.round_trip_us}


def _latency_figures(samples: list[float], round_trips: list[float]) -> Figures:
    ordered = sorted(samples)
    return {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
        "samples": len(ordered),
        "sender_round_trip_us": statistics.median(round_trips) if round_trips else None,
    }


def latency(ctx: Context, busy: bool = False) -> dict[str, Figures]:
    """Commit-to-handler latency at a modest rate, one notification per transaction.

    The samples of each receiver are taken in ``latency_blocks`` blocks, the receivers taking
    turns block by block, so a drift of the machine's latency during the workload (other
    processes, the server's background work) spreads over every receiver alike.
    """
    s = ctx.settings
    workload = "busy-latency" if busy else "latency"
    blocks = max(1, min(s.latency_blocks, s.latency_samples))
    order = ctx.order()
    samples: dict[str, list[float]] = {cls.key: [] for cls in order}
    trips: dict[str, list[float]] = {cls.key: [] for cls in order}
    failed: dict[str, str] = {}
    for block in range(blocks):
        size = s.latency_samples // blocks + (1 if block < s.latency_samples % blocks else 0)
        for cls in order:
            if cls.key in failed:
                continue
            try:
                got = _latency_block(ctx, cls, busy, size)
            except Exception as exc:
                failed[cls.key] = f"{type(exc).__name__}: {exc}"
                continue
            samples[cls.key].extend(got["samples"])
            if got["round_trip"] is not None:
                trips[cls.key].append(got["round_trip"])
    results: dict[str, Figures] = {}
    for cls in order:
        error = failed.get(cls.key)
        if error is None and not samples[cls.key]:
            error = "RuntimeError: no samples"

        def body(error: str | None = error, key: str = cls.key) -> Figures:
            if error is not None:
                raise RuntimeError(error)
            return _latency_figures(samples[key], trips[key])

        results[cls.key] = ctx.measure(
            workload,
            cls.key,
            cls.label,
            body,
            "p50 {p50:,.0f} p90 {p90:,.0f} p99 {p99:,.0f} max {max:,.0f} µs",
        )
    return results


# --------------------------------------------------------------------------------- executor


class _ExecutorSink:
    """The executor workload's handler: sleeps, times itself, checks each channel's order."""

    def __init__(self, target: int, sleep_seconds: float) -> None:
        self.target = target
        self.sleep_seconds = sleep_seconds
        self.durations: collections.deque[float] = collections.deque()  # thread-safe appends
        self.last: dict[str, int] = {}  # channel -> last number seen (one task per channel)
        self.out_of_order = 0
        self.first_start = 0.0
        self.last_end = 0.0
        self.event = threading.Event()

    def __call__(self, notification: Any) -> None:
        started = time.perf_counter()
        time.sleep(self.sleep_seconds)
        ended = time.perf_counter()
        number = int(notification.payload.lstrip("x"))
        if number <= self.last.get(notification.channel, -1):
            self.out_of_order += 1
        self.last[notification.channel] = number
        if not self.durations:
            self.first_start = started
        self.durations.append(ended - started)
        if len(self.durations) >= self.target:
            self.last_end = ended
            self.event.set()


def _executor_once(ctx: Context) -> Figures:
    from pgpubsub_dispatch import Dispatcher

    s = ctx.settings
    workers, count = s.executor_workers, s.executor_count
    sink = _ExecutorSink(count, s.executor_handler_seconds)
    channel = ctx.channel("executor")
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        bus = Dispatcher(ctx.dsn, executor=pool)
        for index in range(workers):
            bus.subscribe(f"{channel}_{index}", sink)
        bus.start()
        try:
            cpu = time.process_time()
            job = ctx.pool.batched(  # one process, so numbers are committed in order
                channel, count, s.per_transaction, s.transactions_per_trip, 1, channels=workers
            )
            finished = sink.event.wait(s.wait_seconds)
            cpu = time.process_time() - cpu
            job.wait(s.wait_seconds)
        finally:
            bus.stop(timeout=10)
    if not finished:
        raise TimeoutError(f"handled {len(sink.durations)} of {count} notifications in time")
    elapsed = sink.last_end - sink.first_start
    mean = statistics.fmean(sink.durations)
    return {
        "rate": count / elapsed,
        "ideal_rate": workers / mean,
        "handler_us": mean * 1e6,
        "cpu_us": cpu * 1e6 / count,
        "ordered": sink.out_of_order == 0,
        "out_of_order": sink.out_of_order,
        "elapsed_s": elapsed,
    }


def executor(ctx: Context) -> dict[str, Figures]:
    """Handlers on an executor: the rate against that of workers always busy (see above)."""
    s = ctx.settings
    label = f"Dispatcher, {s.executor_workers} workers"
    figures = ctx.measure(
        "executor",
        "dispatcher",
        label,
        lambda: _executor_once(ctx),
        "{rate:>12,.0f} notif/s  ideal {ideal_rate:,.0f}/s  handler {handler_us:.0f} µs  "
        "ordered {ordered}",
    )
    if "error" in figures:
        return {"dispatcher": figures}
    if not figures["ordered"]:
        figures = {"error": f"{figures['out_of_order']} notifications handled out of order"}
        return {"dispatcher": figures}
    return {"ideal": {"rate": figures["ideal_rate"]}, "dispatcher": figures}


RECEIVE_RUNNERS: dict[str, Callable[[Context], dict[str, Figures]]] = {
    "throughput": throughput,
    "backlog": backlog,
    "latency": latency,
    "busy-throughput": lambda ctx: throughput(ctx, busy=True),
    "busy-latency": lambda ctx: latency(ctx, busy=True),
}
"""Receive workloads by name."""
