"""subscribe, on and signal: which handlers run, in which order, and what a failing one does."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher

from .support.dispatching import unique
from .support.notifying import Collector, send
from .support.waiting import BOUND, wait_until


def test_arrival_order_and_subscription_order(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    calls: list[tuple[str, str]] = []
    done = threading.Event()

    def make(name: str) -> Any:
        def handler(notification: Any) -> None:
            calls.append((name, notification.payload))
            if name == "h3" and notification.payload == "499":
                done.set()

        return handler

    for name in ["h1", "h2", "h3"]:
        bus.subscribe(channel, make(name))
    with sender.cursor() as cur:
        cur.execute("BEGIN")
        for i in range(500):
            cur.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
        cur.execute("COMMIT")
    assert done.wait(BOUND)
    expected = [(h, str(i)) for i in range(500) for h in ["h1", "h2", "h3"]]
    assert calls == expected


def test_handler_exception_is_isolated_logged_and_signalled(
    bus: Dispatcher, sender: Any, caplog: pytest.LogCaptureFixture
) -> None:
    channel = unique()
    reported: list[dict[str, Any]] = []
    pg.handler_error.connect(lambda s, **kw: reported.append(kw), sender=bus, weak=False)
    after = Collector()

    def broken(notification: Any) -> None:
        raise KeyError("boom")

    bus.subscribe(channel, broken)
    bus.subscribe(channel, after)
    with caplog.at_level(logging.ERROR, logger="pgpubsub_dispatch"):
        send(sender, channel, "one")
        send(sender, channel, "two")
        after.wait(2)
    assert after.payloads == ["one", "two"]
    assert [r["notification"].payload for r in reported] == ["one", "two"]
    assert all(r["handler"] is broken and isinstance(r["error"], KeyError) for r in reported)
    assert any("boom" in (r.exc_text or "") for r in caplog.records)
    assert bus.running


def test_notifications_without_handlers_are_dropped(bus: Dispatcher, sender: Any) -> None:
    quiet, loud = unique("quiet"), unique("loud")
    bus.listen(quiet)
    got = Collector()
    bus.subscribe(loud, got)
    for i in range(100):
        send(sender, quiet, str(i))
    send(sender, loud, "after")
    got.wait(1)
    wait_until(lambda: bus.stats().dispatched == 1, "the loud notification to be counted")
    stats = bus.stats()
    # nothing kept for the quiet channel: every notification received is settled
    assert (stats.received, stats.dispatched, stats.dropped) == (101, 1, 100)


def test_strong_references_keep_lambdas_alive(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    got: list[str] = []
    done = threading.Event()
    bus.subscribe(channel, lambda n: (got.append(n.payload), done.set()))
    gc.collect()
    send(sender, channel, "alive")
    assert done.wait(BOUND)
    assert got == ["alive"]


def test_subscribe_same_handler_twice_calls_once(bus: Dispatcher) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    bus.subscribe(channel, got)
    bus.notify(channel, "x")
    bus.notify(channel, "y")
    assert got.payloads == ["x", "y"]


def test_on_decorator_returns_function_unchanged(bus: Dispatcher) -> None:
    channel = unique()
    seen: list[str] = []

    def handler(notification: Any) -> None:
        seen.append(notification.payload)

    assert bus.on(channel)(handler) is handler
    bus.notify(channel, "decorated")
    assert seen == ["decorated"]


def test_signal_is_a_blinker_signal_per_channel(bus: Dispatcher) -> None:
    import blinker

    channel = unique()
    assert isinstance(bus.signal(channel), blinker.Signal)
    assert bus.signal(channel) is bus.signal(channel)
    assert bus.signal(channel) is not bus.signal(channel + "x")
