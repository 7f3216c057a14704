"""Streams for per-connection subscribers, JSON, transactional notify and queue usage."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher, Notification, PayloadTooLarge

from .support.notifying import Collector, send
from .support.waiting import BOUND, wait_until


def unique(prefix: str = "s") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bus(dsn: str) -> Iterator[Dispatcher]:
    with Dispatcher(dsn) as dispatcher:
        yield dispatcher


def test_stream_subscribes_on_enter_and_unsubscribes_on_exit(bus: Dispatcher, sender: Any) -> None:
    a, b = unique("a"), unique("b")
    with bus.stream(a, b) as stream:
        assert {a, b} <= bus.channels
        send(sender, a, "1")
        send(sender, b, "2")
        assert [(n.channel, n.payload) for n in (stream.get(BOUND), stream.get(BOUND))] == [
            (a, "1"),
            (b, "2"),
        ]
        with pytest.raises(queue.Empty):
            stream.get(timeout=0.05)
    assert not {a, b} & bus.channels
    assert not bus.signal(a).receivers and not bus.signal(b).receivers
    assert stream.closed
    with pytest.raises(queue.Empty):
        stream.get(timeout=0)


def test_stream_iteration_ends_when_closed_from_another_thread(bus: Dispatcher) -> None:
    channel = unique()
    seen: list[str] = []
    with bus.stream(channel) as stream:
        bus.notify_many([(channel, "x"), (channel, "y")])
        both_read = threading.Event()
        closer = threading.Thread(target=lambda: both_read.wait(BOUND) and stream.close())
        closer.start()
        for notification in stream:  # blocks after "y" until the other thread closes it
            seen.append(notification.payload)
            if len(seen) == 2:
                both_read.set()
        closer.join(BOUND)
    assert seen == ["x", "y"]


def test_full_stream_drops_the_oldest_and_counts(bus: Dispatcher) -> None:
    channel = unique()
    with bus.stream(channel, maxsize=3) as stream:
        bus.notify_many([(channel, str(i)) for i in range(10)])
        assert stream.dropped == 7
        assert [stream.get(0).payload for _ in range(3)] == ["7", "8", "9"]
    with bus.stream(channel, maxsize=3, overflow="drop_newest") as stream:
        bus.notify_many([(channel, str(i)) for i in range(10)])
        assert stream.dropped == 7
        assert [stream.get(0).payload for _ in range(3)] == ["0", "1", "2"]


def test_stream_arguments_are_checked(bus: Dispatcher) -> None:
    with pytest.raises(ValueError):
        bus.stream()
    with pytest.raises(ValueError):
        bus.stream("c", maxsize=0)
    with pytest.raises(ValueError):
        bus.stream("c", overflow="block")
    with pytest.raises(pg.InvalidChannelName):
        bus.stream("ok", "x" * 64)


def test_stream_async_iteration_from_an_event_loop(bus: Dispatcher, sender: Any) -> None:
    channel = unique()

    async def consume() -> list[str]:
        got: list[str] = []
        with bus.stream(channel) as stream:
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, send, sender, channel, "one")
            loop.call_later(0.10, send, sender, channel, "two")
            async for notification in stream:
                got.append(notification.payload)
                if len(got) == 2:
                    break
        return got

    assert asyncio.run(asyncio.wait_for(consume(), BOUND)) == ["one", "two"]


def test_async_iteration_ends_on_close(bus: Dispatcher) -> None:
    channel = unique()

    async def consume() -> list[str]:
        with bus.stream(channel) as stream:
            asyncio.get_running_loop().call_later(0.05, stream.close)
            return [n.payload async for n in stream]

    assert asyncio.run(asyncio.wait_for(consume(), BOUND)) == []


def test_a_thousand_streams_from_many_threads_leave_nothing_behind(
    bus: Dispatcher, sender: Any
) -> None:
    channel = unique()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(100):
                with bus.stream(channel, maxsize=10) as stream:
                    bus.notify(channel, "ping")
                    assert stream.get(BOUND).channel == channel
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND * 6)
    assert errors == []
    assert channel not in bus.channels
    assert not bus.signal(channel).receivers
    # Nothing LISTENs any more: a notification now reaches no handler.
    dropped_before = bus.stats().dropped
    send(sender, channel, "nobody")
    bus.notify(unique(), "sync")
    assert bus.stats().dropped == dropped_before


def test_notify_json_and_size_after_encoding(bus: Dispatcher) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    bus.notify_json(channel, {"id": 7, "name": "thé", "tags": ["a", "b"]})
    assert got.items[0].payload == '{"id":7,"name":"thé","tags":["a","b"]}'
    assert json.loads(got.items[0].payload)["name"] == "thé"
    with pytest.raises(TypeError):
        bus.notify_json(channel, {"when": object()})
    with pytest.raises(ValueError):
        bus.notify_json(channel, float("nan"))
    with pytest.raises(PayloadTooLarge):
        bus.notify_json(channel, '"' * 4000)  # 4000 bytes as text, 8002 once encoded
    bus.notify_json(channel, "é" * 3998)  # 7998 bytes with its quotes: fits
    assert [len(n.payload.encode()) for n in got.items] == [39, 7998]


def test_transactional_notify_is_sent_only_on_commit(
    bus: Dispatcher, dsn: str, collector: Collector
) -> None:
    channel = unique()
    bus.subscribe(channel, collector)
    conn = psycopg2.connect(dsn)
    try:
        pg.notify(conn, channel, "rolled back")
        conn.rollback()
        with conn.cursor() as cur:
            pg.notify(cur, channel, "committed")
        bus.notify(unique(), "sync")
        assert collector.items == []  # not before the commit
        conn.commit()
        assert collector.wait(1)[0].payload == "committed"
        bus.notify(unique(), "sync")
        assert collector.payloads == ["committed"]
        with pytest.raises(pg.InvalidChannelName):
            pg.notify(conn, "", "x")
    finally:
        conn.close()


def test_queue_usage_and_heartbeat_report_it(dsn: str) -> None:
    with Dispatcher(dsn, heartbeat_interval=0.05) as bus:
        usage = bus.queue_usage(timeout=BOUND)
        assert isinstance(usage, float) and 0.0 <= usage <= 1.0
        wait_until(lambda: bus.stats().queue_usage is not None, "a heartbeat")
    with pytest.raises(pg.DispatcherStopped):
        bus.queue_usage()


def test_async_with_subscribes_off_the_event_loop(bus: Dispatcher, sender: Any) -> None:
    channel = unique()

    async def consume() -> str:
        async with bus.stream(channel) as stream:
            assert channel in bus.channels
            asyncio.get_running_loop().call_later(0.05, send, sender, channel, "async with")
            notification = await stream.get_async()
            assert notification is not None
            return str(notification.payload)

    assert asyncio.run(asyncio.wait_for(consume(), BOUND)) == "async with"
    assert channel not in bus.channels


@pytest.fixture
def gate(bus: Dispatcher, sender: Any) -> Iterator[threading.Event]:
    """Keeps the dispatcher thread busy in a handler until the event is set."""
    channel, release, entered = unique("gate"), threading.Event(), threading.Event()

    def block(notification: Any) -> None:
        entered.set()
        release.wait(BOUND)

    bus.subscribe(channel, block)
    send(sender, channel)
    assert entered.wait(BOUND)
    yield release
    release.set()


def test_a_timed_out_open_leaves_nothing_behind(bus: Dispatcher, gate: threading.Event) -> None:
    channel = unique()
    stream = bus.stream(channel)
    with pytest.raises(TimeoutError):
        stream.open(timeout=0.1)  # the dispatcher is busy: the subscribe cannot run yet
    gate.set()
    bus.notify(unique(), "sync")  # everything queued before this has run
    assert stream.closed and channel not in bus.channels
    assert not bus.signal(channel).receivers


def test_a_cancelled_async_with_leaves_nothing_behind(
    bus: Dispatcher, gate: threading.Event
) -> None:
    channel = unique()

    async def consume() -> None:
        async with bus.stream(channel) as stream:
            await stream.get_async()

    # asyncio.run() waits for its worker threads at exit, the subscribing one included: let
    # the dispatcher go on a little after the cancellation.
    threading.Timer(0.3, gate.set).start()
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(consume(), 0.1))  # cancelled while subscribing
    deadline = time.monotonic() + BOUND
    while channel in bus.channels and time.monotonic() < deadline:
        bus.notify(unique(), "sync")  # lets the undoing, queued behind, run
    assert channel not in bus.channels


def test_async_for_survives_a_timed_out_anext(bus: Dispatcher) -> None:
    channel = unique()

    async def consume() -> str:
        async with bus.stream(channel) as stream:
            iterator = stream.__aiter__()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(iterator.__anext__(), 0.05)
            await asyncio.to_thread(bus.notify, channel, "after the timeout")
            return str((await iterator.__anext__()).payload)

    assert asyncio.run(asyncio.wait_for(consume(), BOUND)) == "after the timeout"


def test_a_stream_needs_a_running_dispatcher(dsn: str) -> None:
    bus = Dispatcher(dsn)
    with pytest.raises(pg.DispatcherStopped), bus.stream(unique()):
        pass
    assert bus.channels == frozenset()


def test_queue_usage_is_checked_even_under_constant_traffic(dsn: str, sender: Any) -> None:
    channel = unique()
    with Dispatcher(dsn, heartbeat_interval=0.1) as bus:
        bus.listen(channel)
        deadline = time.monotonic() + BOUND
        while bus.stats().queue_usage is None and time.monotonic() < deadline:
            send(sender, channel, "traffic")  # never a silent moment
        assert bus.stats().queue_usage is not None


def test_transactional_notify_refuses_async_connections() -> None:
    class AsyncLike:
        async def execute(self, query: str, params: Any = None) -> None:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="synchronous"):
        pg.notify(AsyncLike(), "c", "x")


def test_reading_a_stream_in_a_handler_on_the_dispatcher_thread_raises(bus: Dispatcher) -> None:
    channel, trigger = unique(), unique("trigger")
    outcome: list[object] = []
    done = threading.Event()
    with bus.stream(channel) as stream:

        @bus.on(trigger)
        def reads_the_stream(notification: Notification) -> None:
            try:
                outcome.append(stream.get())
            except pg.WouldDeadlock as exc:
                outcome.append(exc)
            try:
                outcome.append(next(iter(stream)))
            except pg.WouldDeadlock as exc:
                outcome.append(exc)
            try:
                stream.get(timeout=0)
            except queue.Empty:
                outcome.append("empty")  # looking is fine
            done.set()

        bus.notify(trigger, "")
        assert done.wait(BOUND)
        bus.notify(channel, "the dispatcher still works")
        assert stream.get(timeout=BOUND).payload == "the dispatcher still works"
    assert [type(o) for o in outcome[:2]] == [pg.WouldDeadlock, pg.WouldDeadlock]
    assert "dispatcher thread" in str(outcome[0]) and outcome[2] == "empty"
