"""Handlers on an executor: slow handlers never stall receipt; order per channel; backpressure."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pgpubsub_dispatch import Dispatcher

from .support.notifying import Collector, send
from .support.waiting import BOUND, wait_until


def unique(prefix: str = "x") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def test_a_slow_channel_does_not_delay_another(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    slow, fast = unique("slow"), unique("fast")
    slow_done: list[float] = []
    all_slow_done = threading.Event()
    fast_seen = threading.Event()
    fast_at: list[float] = []

    def sleepy(notification: Any) -> None:
        time.sleep(0.01)  # the slow handler under test: 10 ms of work
        slow_done.append(time.monotonic())
        if len(slow_done) == 50:
            all_slow_done.set()

    def quick(notification: Any) -> None:
        fast_at.append(time.monotonic())
        fast_seen.set()

    with Dispatcher(dsn, executor=pool) as bus:
        bus.subscribe(slow, sleepy)
        bus.subscribe(fast, quick)
        with sender.cursor() as cur:
            cur.execute("BEGIN")
            for i in range(50):
                cur.execute("SELECT pg_notify(%s, %s)", (slow, str(i)))
            cur.execute("SELECT pg_notify(%s, 'now')", (fast,))
            cur.execute("COMMIT")
        assert fast_seen.wait(BOUND)
        # 50 x 10 ms of slow work queued ahead of it; the fast channel went first anyway.
        assert len(slow_done) < 25, len(slow_done)
        assert all_slow_done.wait(BOUND)


def test_order_is_kept_per_channel(dsn: str, sender: Any, pool: ThreadPoolExecutor) -> None:
    channels = [unique(f"c{i}") for i in range(3)]
    got = {channel: Collector() for channel in channels}
    with Dispatcher(dsn, executor=pool) as bus:
        for channel in channels:
            bus.subscribe(channel, got[channel])
        with sender.cursor() as cur:
            cur.execute("BEGIN")
            for i in range(200):
                for channel in channels:
                    cur.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
            cur.execute("COMMIT")
        for channel in channels:
            assert [n.payload for n in got[channel].wait(200)] == [str(i) for i in range(200)]


def test_backpressure_drops_nothing_and_still_serves_commands(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    channel, other = unique(), unique("other")
    release = threading.Event()
    got: list[str] = []
    done = threading.Event()

    def gated(notification: Any) -> None:
        release.wait(BOUND)
        got.append(notification.payload)
        if len(got) == 300:
            done.set()

    with Dispatcher(dsn, executor=pool, max_pending=5) as bus:
        bus.subscribe(channel, gated)
        with sender.cursor() as cur:
            cur.execute("BEGIN")
            for i in range(300):
                cur.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
            cur.execute("COMMIT")
        wait_until(lambda: bus.stats().backpressure, "backpressure")
        stats = bus.stats()
        assert stats.backpressure and stats.pending <= 5
        bus.notify(other, "commands still work", timeout=BOUND)
        release.set()
        assert done.wait(BOUND)
        assert got == [str(i) for i in range(300)]
        assert bus.stats().dropped == 0


def test_unlisten_drops_work_not_yet_started(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    channel = unique()
    entered, release = threading.Event(), threading.Event()
    got: list[str] = []

    def first_blocks(notification: Any) -> None:
        if notification.payload == "0":
            entered.set()
            release.wait(BOUND)
        got.append(notification.payload)

    with Dispatcher(dsn, executor=pool) as bus:
        bus.subscribe(channel, first_blocks)
        with sender.cursor() as cur:
            cur.execute("BEGIN")
            for i in range(10):
                cur.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
            cur.execute("COMMIT")
        assert entered.wait(BOUND)
        bus.notify(unique(), "sync")  # all ten received and handed over by now
        bus.unlisten(channel)
        release.set()
        bus.notify(unique(), "sync")
    assert got == ["0"]  # the running one finished; the nine queued were dropped


def test_handler_errors_on_the_executor_are_isolated(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    channel = unique()
    after = Collector()

    def broken(notification: Any) -> None:
        raise ValueError("boom")

    with Dispatcher(dsn, executor=pool) as bus:
        bus.subscribe(channel, broken)
        bus.subscribe(channel, after)
        send(sender, channel, "a")
        send(sender, channel, "b")
        assert [n.payload for n in after.wait(2)] == ["a", "b"]
        assert bus.stats().handler_errors == 2


def test_executor_option_is_checked(dsn: str) -> None:
    with pytest.raises(TypeError):
        Dispatcher(dsn, executor=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Dispatcher(dsn, executor=None, max_pending=0)


def test_work_handed_to_the_executor_survives_a_reconnect(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    import pgpubsub_dispatch as pg

    channel = unique()
    entered, release, back = threading.Event(), threading.Event(), threading.Event()
    got: list[str] = []

    def gated(notification: Any) -> None:
        entered.set()
        release.wait(BOUND)
        got.append(notification.payload)

    bus = Dispatcher(dsn, executor=pool, backoff_min=0.05, backoff_max=0.2)
    pg.reconnected.connect(lambda s, backend_pid: back.set(), sender=bus, weak=False)
    with bus:
        bus.subscribe(channel, gated)
        bus.notify_many([(channel, str(i)) for i in range(10)])  # all handed over
        assert entered.wait(BOUND)
        with sender.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (bus.backend_pid,))
        assert back.wait(BOUND)
        release.set()
        bus.notify(channel, "after")
        wait_until(lambda: len(got) >= 11, "11 notifications handled")
    assert got == [str(i) for i in range(10)] + ["after"]


def test_a_shut_down_executor_degrades_to_the_dispatcher_thread(dsn: str, sender: Any) -> None:
    channel = unique()
    got = Collector()
    executor = ThreadPoolExecutor(max_workers=1)
    with Dispatcher(dsn, executor=executor) as bus:
        bus.subscribe(channel, got)
        executor.shutdown()
        send(sender, channel, "still handled")
        assert got.wait(1)[0].payload == "still handled"
        assert bus.running
