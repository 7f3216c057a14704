"""Sizes and rates of every workload, for the full and the ``--quick`` mode."""

from __future__ import annotations

import dataclasses

__all__ = ["RECEIVE_WORKLOADS", "WORKLOADS", "Settings", "settings_for"]

RECEIVE_WORKLOADS = ("throughput", "backlog", "latency", "busy-throughput", "busy-latency")
"""Workloads that compare every receiver (the bare psycopg2 loop is the baseline)."""

WORKLOADS = (*RECEIVE_WORKLOADS, "notify", "executor", "memory", "idle")
"""Every workload, in the order they run; names accepted by ``--only``."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run needs to know about sizes, rates and durations.

    Attributes:
        quick: the smoke mode (small sizes, one run by default).
        runs: how many times every workload is repeated (medians are reported).
        senders: sender processes for the batched workloads.
        per_transaction: ``pg_notify`` calls committed per sender transaction.
        transactions_per_trip: sender transactions sent in one query string (one round trip).
        payload_bytes: payload size of the batched workloads.
        throughput_count: notifications per receive-throughput measurement.
        backlog_count: notifications waiting before a backlog drain starts.
        latency_samples: latency samples per receiver (after the warm-up ones).
        latency_warmup: samples sent first in each block and discarded.
        latency_blocks: blocks the samples are split into, receivers taking turns per block.
        latency_rate: notifications per second from the latency sender (one per transaction).
        busy_cap_seconds: longest a throughput measurement with a busy thread may take; a
            receiver that has not finished by then is rated on what it received.
        notify_seconds: duration of each ``notify()`` measurement.
        notify_threads: thread counts for ``Dispatcher.notify()``.
        executor_count: notifications handled in each executor measurement.
        executor_workers: the executor's threads (and the channels the notifications take
            turns on).
        executor_handler_seconds: what each handler sleeps (``time.sleep``: the GIL is free).
        memory_count: notifications received in each memory measurement.
        memory_warmup: notifications received before the memory baseline is taken.
        backpressure_count: notifications committed while executor handlers are blocked, in
            the memory workload's backpressure variant.
        idle_seconds: duration of the idle CPU measurement (made once per invocation).
        wait_seconds: longest any single receive measurement may take before it is failed.
    """

    quick: bool
    runs: int
    senders: int = 2
    per_transaction: int = 100
    transactions_per_trip: int = 10
    payload_bytes: int = 64
    throughput_count: int = 200_000
    backlog_count: int = 50_000
    latency_samples: int = 2_000
    latency_warmup: int = 20
    latency_blocks: int = 4
    latency_rate: float = 1_000.0
    busy_cap_seconds: float = 8.0
    notify_seconds: float = 2.0
    notify_threads: tuple[int, ...] = (1, 8, 32)
    executor_count: int = 20_000
    executor_workers: int = 4
    executor_handler_seconds: float = 0.0001
    memory_count: int = 1_000_000
    memory_warmup: int = 20_000
    backpressure_count: int = 300_000
    idle_seconds: float = 30.0
    wait_seconds: float = 60.0


def settings_for(quick: bool, runs: int | None = None, senders: int | None = None) -> Settings:
    """Return the :class:`Settings` of the full mode, or of the quick mode when ``quick``.

    :param quick: the smoke mode (whole run under a minute).
    :param runs: repeat count; default 5 (full) or 1 (quick).
    :param senders: sender processes; default 2.
    """
    settings = Settings(quick=False, runs=5)
    if quick:
        settings = dataclasses.replace(
            settings,
            quick=True,
            runs=1,
            throughput_count=20_000,
            backlog_count=20_000,
            latency_samples=300,
            latency_warmup=10,
            latency_blocks=2,
            busy_cap_seconds=2.0,
            notify_seconds=0.5,
            executor_count=2_000,
            memory_count=100_000,
            memory_warmup=5_000,
            backpressure_count=30_000,
            idle_seconds=3.0,
            wait_seconds=30.0,
        )
    if runs is not None:
        settings = dataclasses.replace(settings, runs=runs)
    if senders is not None:
        settings = dataclasses.replace(settings, senders=senders)
    return settings
