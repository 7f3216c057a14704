"""notify and notify_many: what the server receives, in which transactions, and the errors."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2.errors
import pytest

from pgpubsub_dispatch import Dispatcher

from .support.dispatching import Listener, unique
from .support.notifying import Collector, send
from .support.waiting import BOUND


def test_two_identical_notifies_deliver_twice(bus: Dispatcher, dsn: str) -> None:
    channel = unique()
    listener = Listener(dsn, channel)
    try:
        bus.notify(channel, "same")
        bus.notify(channel, "same")
        assert [n.payload for n in listener.receive(2)] == ["same", "same"]
    finally:
        listener.close()


def test_own_notifications_carry_own_pid_and_are_handled_before_notify_returns(
    bus: Dispatcher, sender: Any
) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    bus.notify(channel, "mine")
    assert [(n.payload, n.pid) for n in got.items] == [("mine", bus.backend_pid)]
    send(sender, channel, "theirs")
    assert got.wait(2)[1].pid == sender.get_backend_pid()


def test_notify_many_delivers_every_pair_in_order_even_identical_ones(
    bus: Dispatcher, dsn: str
) -> None:
    channel, other = unique(), unique()
    listener = Listener(dsn, channel, other)
    try:
        pairs = [(channel, "a"), (channel, "a"), (other, "b"), (channel, "a"), (channel, "c")]
        bus.notify_many(pairs)
        assert [(n.channel, n.payload) for n in listener.receive(5)] == pairs
    finally:
        listener.close()


def test_a_failing_notify_in_a_shared_transaction_fails_alone(latin1_dsn: str) -> None:
    with Dispatcher(latin1_dsn) as bus:
        channel = unique()
        got = Collector()
        bus.subscribe(channel, got)
        with pytest.raises(psycopg2.errors.UntranslatableCharacter):
            bus.notify_many([(channel, "before"), (channel, "€ not LATIN1"), (channel, "after")])
        assert got.payloads == ["before", "after"]


def test_concurrent_identical_notifies_are_never_folded(bus: Dispatcher) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait(BOUND)
        bus.notify_many([(channel, "same")] * 10)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
    assert got.wait(80) and len(got.items) == 80


def test_server_side_errors_are_raised_in_the_callers_thread(latin1_dsn: str) -> None:
    with Dispatcher(latin1_dsn) as bus:
        channel = unique()
        with pytest.raises(psycopg2.errors.UntranslatableCharacter):
            bus.notify(channel, "€ cannot be LATIN1")
        got = Collector()
        bus.subscribe(channel, got)
        bus.notify(channel, "é is fine")
        assert got.payloads == ["é is fine"]
