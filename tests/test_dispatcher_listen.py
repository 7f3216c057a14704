"""listen, unlisten and unsubscribe: when a channel is LISTENed, and when it stops being."""

from __future__ import annotations

import threading
from typing import Any

from pgpubsub_dispatch import Dispatcher

from .support.dispatching import unique
from .support.notifying import Collector, send
from .support.waiting import BOUND


def test_listen_returns_only_when_listening(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    got = Collector()
    bus.signal(channel).connect(got, weak=False)
    bus.listen(channel, timeout=BOUND)
    send(sender, channel, "right after listen")
    assert got.wait(1)[0].payload == "right after listen"
    assert channel in bus.channels


def test_listen_while_stopped_is_recorded_for_next_start(dsn: str, sender: Any) -> None:
    channel = unique()
    bus = Dispatcher(dsn)
    got = Collector()
    bus.signal(channel).connect(got, weak=False)
    bus.listen(channel)
    bus.listen(channel)  # idempotent
    with bus:
        send(sender, channel, "x")
        got.wait(1)


def test_unlisten_stops_delivery(bus: Dispatcher, sender: Any) -> None:
    channel, probe = unique(), unique("probe")
    got, probed = Collector(), Collector()
    bus.subscribe(channel, got)
    bus.subscribe(probe, probed)
    bus.unlisten(channel)
    assert channel not in bus.channels
    send(sender, channel, "not delivered")
    send(sender, probe, "delivered")
    probed.wait(1)
    bus.notify(probe, "round trip")
    probed.wait(2)
    assert got.items == []
    bus.unlisten(channel)  # no-op now
    bus.unlisten(unique())  # unknown: no-op


def test_unlisten_drops_notifications_already_received(bus: Dispatcher, sender: Any) -> None:
    gate, channel = unique("gate"), unique()
    dropped = Collector()
    bus.subscribe(channel, dropped)
    relistened = threading.Event()
    received_before = bus.stats().received

    @bus.on(gate)
    def unlisten_now(notification: Any) -> None:
        # The channel's notifications of the same transaction are already received.
        if notification.payload == "g":
            assert bus.stats().received - received_before == 6  # the whole transaction
            bus.unlisten(channel)
            bus.listen(channel)  # listening again must not revive what came before
            relistened.set()

    with sender.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT pg_notify(%s, 'g')", (gate,))
        for i in range(5):
            cur.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
        cur.execute("COMMIT")
    assert relistened.wait(BOUND)
    send(sender, channel, "new")
    assert dropped.wait(1)[0].payload == "new"
    bus.notify(gate, "sync")  # a round trip: anything left would have been dispatched
    assert dropped.payloads == ["new"]


def test_unlisten_from_a_handler_stops_remaining_handlers(bus: Dispatcher) -> None:
    channel = unique()
    calls: list[str] = []

    def first(notification: Any) -> None:
        calls.append("first")
        bus.unlisten(channel)

    bus.subscribe(channel, first)
    bus.subscribe(channel, lambda n: calls.append("second"))
    bus.notify(channel, "x")
    assert calls == ["first"]


def test_unsubscribe_last_handler_unlistens(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    a, b = Collector(), Collector()
    bus.subscribe(channel, a)
    bus.subscribe(channel, b)
    bus.unsubscribe(channel, a)
    assert channel in bus.channels
    bus.notify(channel, "b only")
    assert (a.payloads, b.payloads) == ([], ["b only"])
    bus.unsubscribe(channel, b)
    assert channel not in bus.channels
    bus.unsubscribe(channel, b)  # not connected: no-op


def test_unsubscribe_keeps_explicitly_listened_channel(bus: Dispatcher) -> None:
    channel = unique()
    got = Collector()
    bus.listen(channel)
    bus.subscribe(channel, got)
    bus.unsubscribe(channel, got)
    assert channel in bus.channels
