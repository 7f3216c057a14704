"""``async def`` handlers: run on an asyncio event loop, in order, isolated, never blocking.

Every test runs against the real server; the event loops are real ones, run by ``asyncio.run``
(in a thread of their own, ``tests/support/loops.py``, or in the test's thread).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pgpubsub_dispatch import Dispatcher, Notification, handler_error

from .support.dispatching import dispatcher_threads, unique
from .support.loops import LoopThread
from .support.notifying import Collector, send
from .support.waiting import BOUND, wait_until


class AsyncRecorder:
    """An ``async def __call__`` handler that records payloads and its own concurrency."""

    def __init__(self, loop: LoopThread, count: int) -> None:
        self.payloads: list[str] = []
        self.threads: set[int] = set()
        self.running = 0
        self.most_running = 0
        self.done = threading.Event()
        self._count = count

    async def __call__(self, notification: Notification) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.threads.add(threading.get_ident())
        await asyncio.sleep(0)  # let anything that could overlap, overlap
        await asyncio.sleep(0)
        self.payloads.append(notification.payload)
        self.running -= 1
        if len(self.payloads) >= self._count:
            self.done.set()


def test_runs_on_the_given_loop_one_at_a_time_in_arrival_order(
    bus: Dispatcher, loop_thread: LoopThread
) -> None:
    channel = unique()
    recorder = AsyncRecorder(loop_thread, 200)
    assert bus.subscribe(channel, recorder, loop=loop_thread.loop) is recorder

    bus.notify_many([(channel, str(i)) for i in range(200)])

    assert recorder.done.wait(BOUND)
    assert recorder.payloads == [str(i) for i in range(200)]
    assert recorder.most_running == 1
    assert recorder.threads == {loop_thread.ident}


def test_defaults_to_the_loop_running_where_it_was_subscribed(dsn: str) -> None:
    channel = unique()

    async def main() -> list[str]:
        received: asyncio.Queue[str] = asyncio.Queue()

        async def on_order(notification: Notification) -> None:
            await received.put(notification.payload)

        with Dispatcher(dsn) as bus:
            bus.subscribe(channel, on_order)  # no loop=: this one
            await asyncio.to_thread(bus.notify, channel, "hello")
            return [await asyncio.wait_for(received.get(), BOUND)]

    assert asyncio.run(main()) == ["hello"]


def test_channels_of_one_handler_keep_their_own_order(
    bus: Dispatcher, loop_thread: LoopThread
) -> None:
    first, second = unique("a"), unique("b")
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    async def record(notification: Notification) -> None:
        await asyncio.sleep(0)
        seen.append((notification.channel, notification.payload))
        if len(seen) == 40:
            done.set()

    bus.subscribe(first, record, loop=loop_thread.loop)
    bus.subscribe(second, record, loop=loop_thread.loop)
    bus.notify_many([(first if i % 2 else second, str(i)) for i in range(40)])

    assert done.wait(BOUND)
    for channel in (first, second):
        mine = [int(p) for c, p in seen if c == channel]
        assert mine == sorted(mine) and len(mine) == 20


def test_exceptions_go_to_handler_error_and_the_next_notification_still_runs(
    bus: Dispatcher, loop_thread: LoopThread
) -> None:
    channel = unique()
    errors: list[tuple[Any, str, str, bool]] = []
    reported = threading.Event()
    got = Collector()

    async def fragile(notification: Notification) -> None:
        if notification.payload == "bad":
            raise ValueError("cannot handle 'bad'")
        got(notification)

    def report(sender: Any, handler: Any, notification: Any, error: BaseException) -> None:
        on_loop = threading.get_ident() == loop_thread.ident
        errors.append((handler, notification.payload, str(error), on_loop))
        reported.set()

    handler_error.connect(report, sender=bus, weak=False)
    try:
        bus.subscribe(channel, fragile, loop=loop_thread.loop)
        bus.notify(channel, "bad")
        bus.notify(channel, "good")
        assert reported.wait(BOUND)
        assert got.wait(1)[0].payload == "good"
    finally:
        handler_error.disconnect(report, sender=bus)
    assert errors == [(fragile, "bad", "cannot handle 'bad'", True)]
    assert bus.stats().handler_errors == 1


def test_unsubscribe_stops_it_and_unlistens(bus: Dispatcher, loop_thread: LoopThread) -> None:
    channel, marker = unique(), unique("marker")
    calls: list[str] = []
    after = Collector()

    async def handler(notification: Notification) -> None:
        calls.append(notification.payload)

    bus.subscribe(channel, handler, loop=loop_thread.loop)
    bus.notify(channel, "before")
    wait_until(lambda: calls == ["before"], "the coroutine handler to run")

    bus.unsubscribe(channel, handler)
    assert channel not in bus.channels
    bus.subscribe(marker, after)
    bus.notify(channel, "after")  # not listened to any more
    bus.notify(marker, "done")
    after.wait(1)
    loop_thread.run(asyncio.sleep(0))  # anything the loop had been handed has run by now
    assert calls == ["before"]


def test_unsubscribe_drops_what_waits_on_the_loop(bus: Dispatcher, loop_thread: LoopThread) -> None:
    channel = unique()
    release, blocked = threading.Event(), threading.Event()
    calls: list[str] = []

    async def slow(notification: Notification) -> None:
        calls.append(notification.payload)
        if notification.payload == "first":
            blocked.set()
            await asyncio.to_thread(release.wait, BOUND)

    bus.subscribe(channel, slow, loop=loop_thread.loop)
    bus.notify(channel, "first")
    assert blocked.wait(BOUND)
    bus.notify_many([(channel, "queued 1"), (channel, "queued 2")])
    bus.unsubscribe(channel, slow)  # "first" is running: it finishes; the queued ones never run
    release.set()
    loop_thread.run(asyncio.sleep(0.01))
    wait_until(lambda: bus.stats().handler_dropped == 2, "the queued notifications dropped")
    assert calls == ["first"]


def test_loop_closed_first_drops_and_the_dispatcher_goes_on(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel, marker = unique(), unique("marker")
    got, after = [], Collector()

    async def main(bus: Dispatcher) -> None:
        async def handler(notification: Notification) -> None:
            got.append(notification.payload)

        bus.subscribe(channel, handler)
        await asyncio.to_thread(bus.notify, channel, "while running")
        while not got:
            await asyncio.sleep(0.001)

    caplog.set_level(logging.WARNING)
    with Dispatcher(dsn) as bus:
        asyncio.run(main(bus))  # its loop is closed when it returns
        bus.subscribe(marker, after)
        bus.notify(channel, "after the loop closed")
        bus.notify(channel, "again")
        bus.notify(marker, "still delivering")
        assert after.wait(1)[0].payload == "still delivering"
        assert bus.stats().handler_dropped == 2
        assert bus.stats().handler_errors == 0
    assert got == ["while running"]
    closed = [r for r in caplog.records if "is closed" in r.getMessage()]
    assert len(closed) == 1  # said once
    assert not [r for r in caplog.records if r.name == "asyncio"]


def test_loop_stopped_while_a_handler_runs_leaves_nothing_pending(
    bus: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    channel = unique()
    loop = LoopThread()
    started = threading.Event()

    async def forever(notification: Notification) -> None:
        started.set()
        await asyncio.Event().wait()

    caplog.set_level(logging.WARNING)
    bus.subscribe(channel, forever, loop=loop.loop)
    bus.notify(channel, "1")
    assert started.wait(BOUND)
    loop.stop()  # asyncio.run cancels the handler's task and closes the loop
    assert len(loop.leftover_tasks) == 1 and loop.leftover_tasks[0].cancelled()
    bus.notify(channel, "2")
    assert bus.running and bus.stats().handler_dropped == 1
    assert loop.errors == []
    assert not [r for r in caplog.records if r.name == "asyncio"]


def test_dispatcher_stopped_first_leaves_the_loop_clean(dsn: str) -> None:
    channel = unique()
    loop = LoopThread()
    got: list[str] = []
    try:
        bus = Dispatcher(dsn)

        async def handler(notification: Notification) -> None:
            got.append(notification.payload)

        bus.subscribe(channel, handler, loop=loop.loop)
        with bus:
            bus.notify(channel, "1")
            wait_until(lambda: got == ["1"], "the handler to run")
        assert not dispatcher_threads()
        loop.run(asyncio.sleep(0))
    finally:
        loop.stop()
    assert loop.leftover_tasks == [] and loop.errors == []
    assert got == ["1"]


def test_a_slow_loop_never_blocks_the_dispatcher_the_oldest_are_dropped(
    bus: Dispatcher, loop_thread: LoopThread
) -> None:
    channel, other = unique(), unique("other")
    release, blocked = threading.Event(), threading.Event()
    payloads: list[str] = []
    fast = Collector()

    async def handler(notification: Notification) -> None:
        if notification.payload == "block":
            blocked.set()
            release.wait(BOUND)  # blocks the whole event loop, on purpose
            return
        payloads.append(notification.payload)

    bus.subscribe(channel, handler, loop=loop_thread.loop)
    bus.subscribe(other, fast)
    bus.notify(channel, "block")
    assert blocked.wait(BOUND)
    bus.notify_many([(channel, str(i)) for i in range(10_050)])
    bus.notify(other, "not delayed")
    assert fast.wait(1)[0].payload == "not delayed"  # the dispatcher kept going
    assert bus.stats().handler_dropped == 50
    release.set()
    wait_until(lambda: len(payloads) == 10_000, "the buffered notifications")
    assert payloads == [str(i) for i in range(50, 10_050)]


def test_runs_from_an_executor_too(dsn: str, loop_thread: LoopThread) -> None:
    channel = unique()
    recorder = AsyncRecorder(loop_thread, 50)
    with ThreadPoolExecutor(2) as pool, Dispatcher(dsn, executor=pool) as bus:
        bus.subscribe(channel, recorder, loop=loop_thread.loop)
        bus.notify_many([(channel, str(i)) for i in range(50)])
        assert recorder.done.wait(BOUND)
    assert recorder.payloads == [str(i) for i in range(50)]


def test_a_fastapi_like_lifespan(dsn: str, sender: Any) -> None:
    """The pattern of a FastAPI/Starlette app: a dispatcher for the process, handlers
    subscribed when the app starts, unsubscribed when it stops, all under ``asyncio.run``."""
    channel = unique()
    bus = Dispatcher(dsn)
    bus.start(timeout=BOUND)

    async def app() -> list[str]:
        seen: list[str] = []
        arrived = asyncio.Event()

        async def on_order(notification: Notification) -> None:
            seen.append(notification.payload)
            arrived.set()

        loop = asyncio.get_running_loop()
        # "startup": subscribe off the loop, naming it
        await asyncio.to_thread(bus.subscribe, channel, on_order, loop=loop)
        try:
            await asyncio.to_thread(send, sender, channel, "order 7")  # another session
            await asyncio.wait_for(arrived.wait(), BOUND)
        finally:  # "shutdown"
            await asyncio.to_thread(bus.unsubscribe, channel, on_order)
        return seen

    try:
        assert asyncio.run(app()) == ["order 7"]
        assert channel not in bus.channels
    finally:
        bus.stop(timeout=BOUND)


def test_without_a_loop_it_is_refused_pointing_to_loop_and_streams(bus: Dispatcher) -> None:
    async def handler(notification: Notification) -> None:
        pass

    channel = unique()
    with pytest.raises(TypeError, match=r"loop=.*stream"):
        bus.subscribe(channel, handler)
    with pytest.raises(TypeError, match="loop="):
        bus.on(channel)(handler)
    assert channel not in bus.channels


def test_loop_for_a_plain_handler_or_a_closed_loop_is_refused(bus: Dispatcher) -> None:
    channel = unique()
    loop = asyncio.new_event_loop()
    with pytest.raises(TypeError, match="async def"):
        bus.subscribe(channel, print, loop=loop)
    loop.close()

    async def handler(notification: Notification) -> None:
        pass

    with pytest.raises(ValueError, match="closed"):
        bus.subscribe(channel, handler, loop=loop)
    with pytest.raises(TypeError, match="event loop"):
        bus.subscribe(channel, handler, loop="the loop")  # type: ignore[arg-type]
    assert channel not in bus.channels
