"""Calls from many threads at once, and from handlers on the dispatcher's own thread (in place)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pgpubsub_dispatch import Dispatcher

from .support.dispatching import unique
from .support.notifying import Collector, send
from .support.waiting import BOUND


def test_handler_can_notify_listen_and_unsubscribe_in_place(bus: Dispatcher) -> None:
    first, second, third = unique("a"), unique("b"), unique("c")
    relayed, late = Collector(), Collector()
    bus.subscribe(second, relayed)

    def relay(notification: Any) -> None:
        bus.notify(second, "relayed " + notification.payload)
        bus.subscribe(third, late)
        bus.unsubscribe(first, relay)

    bus.subscribe(first, relay)
    bus.notify(first, "x")
    bus.notify(first, "ignored: unsubscribed")
    bus.notify(third, "late")
    assert relayed.wait(1)[0].payload == "relayed x"
    assert late.wait(1)[0].payload == "late"
    assert first not in bus.channels


def test_a_notify_made_by_a_handler_is_handled_after_that_handler(bus: Dispatcher) -> None:
    # Handlers never nest: the pong's handler runs once the ping's has returned (README).
    ping, pong = unique("ping"), unique("pong")
    order: list[str] = []

    def on_ping(notification: Any) -> None:
        bus.notify(pong, "from ping")  # committed when it returns
        order.append("notify returned")

    bus.subscribe(ping, on_ping)
    bus.subscribe(pong, lambda notification: order.append("pong handled"))
    bus.notify(ping, "go")
    assert order == ["notify returned", "pong handled"]


def test_a_handler_unsubscribing_a_later_one_in_place_takes_effect_at_once(
    bus: Dispatcher,
) -> None:
    channel = unique()
    calls: list[str] = []

    def later(notification: Any) -> None:
        calls.append("later " + notification.payload)

    def first(notification: Any) -> None:
        calls.append("first " + notification.payload)
        if notification.payload == "1":
            bus.unsubscribe(channel, later)
            bus.subscribe(channel, added)

    def added(notification: Any) -> None:
        calls.append("added " + notification.payload)

    bus.subscribe(channel, first)
    bus.subscribe(channel, later)
    bus.notify_many([(channel, "1"), (channel, "2")])
    assert calls == ["first 1", "first 2", "added 2"]


def test_timeout_on_a_call_raises_timeout_error(bus: Dispatcher, sender: Any) -> None:
    gate = unique("gate")
    release = threading.Event()
    entered = threading.Event()

    @bus.on(gate)
    def block(notification: Any) -> None:
        entered.set()
        release.wait(BOUND)

    send(sender, gate)
    assert entered.wait(BOUND)
    try:
        with pytest.raises(TimeoutError):
            bus.notify(unique(), "x", timeout=0.05)
        with pytest.raises(ValueError):
            bus.notify(unique(), "x", timeout=-1)
    finally:
        release.set()
    bus.notify(unique(), "works afterwards", timeout=BOUND)


def test_a_call_from_a_handler_after_one_timed_out_still_works(bus: Dispatcher) -> None:
    channel, target = unique(), unique("target")
    got = Collector()
    bus.subscribe(target, got)
    outcomes: list[str] = []

    @bus.on(channel)
    def impatient(notification: Any) -> None:
        try:
            bus.notify(target, "first", timeout=0)
        except TimeoutError:
            outcomes.append("timed out")
        bus.notify(target, "second")
        outcomes.append("second sent")

    bus.notify(channel)
    # The first call times out, unless the server answered within its very first poll.
    assert outcomes in (["timed out", "second sent"], ["second sent"])
    assert [n.payload for n in got.wait(2)] == ["first", "second"]


def test_sixteen_threads_listen_notify_unlisten_lose_nothing(bus: Dispatcher) -> None:
    rounds, per_round = 10, 5
    counts: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def count(notification: Any) -> None:
        with lock:
            counts[notification.channel] = counts.get(notification.channel, 0) + 1

    def worker(index: int) -> None:
        try:
            for r in range(rounds):
                channel = f"thread{index}-round{r}"
                bus.subscribe(channel, count)
                for i in range(per_round):
                    bus.notify(channel, f"{index}:{r}:{i}")
                bus.unsubscribe(channel, count)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND * 3)
    assert errors == []
    assert all(not t.is_alive() for t in threads)
    expected = {f"thread{i}-round{r}": per_round for i in range(16) for r in range(rounds)}
    assert counts == expected
    assert bus.channels == frozenset()


def test_many_threads_notify_one_shared_channel(bus: Dispatcher, dsn: str) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)

    def worker(index: int) -> None:
        for _ in range(25):
            bus.notify(channel, "same")  # identical payloads: must not be folded

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND * 3)
    assert len(got.wait(16 * 25)) == 16 * 25
