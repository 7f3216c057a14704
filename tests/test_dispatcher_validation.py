"""Channel names and payloads: exact round trips, and bad input refused before anything is sent."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from pgpubsub_dispatch import Dispatcher, InvalidChannelName, PayloadTooLarge

from .support.dispatching import Listener, unique
from .support.notifying import Collector, send
from .support.waiting import BOUND

ODD_CHANNELS = [
    "MyChan",
    "mychan",
    "with space",
    'has "quotes"',
    "it's",
    "dot.ted",
    "dash-ed",
    "emoji 🎉 chan",
    "'; DROP TABLE users; --",
    '"; LISTEN x; --',
    "ÅÄÖ ü",
    "é" * 31 + "x",  # 63 bytes exactly
    "🎉" * 15 + "abc",  # 63 bytes exactly
]


@pytest.mark.parametrize("channel", ODD_CHANNELS)
def test_channel_names_round_trip_exactly_both_ways(
    bus: Dispatcher, sender: Any, dsn: str, channel: str
) -> None:
    got = Collector()
    bus.subscribe(channel, got)
    send(sender, channel, "in")
    first = got.wait(1)[0]
    assert (first.channel, first.payload) == (channel, "in")

    listener = Listener(dsn, channel)
    try:
        bus.notify(channel, "out")
        (seen,) = listener.receive(1)
        assert (seen.channel, seen.payload, seen.pid) == (channel, "out", bus.backend_pid)
    finally:
        listener.close()
    bus.unsubscribe(channel, got)


def test_channels_are_case_sensitive(bus: Dispatcher, sender: Any) -> None:
    upper, lower = Collector(), Collector()
    base = unique()
    bus.subscribe("Case" + base, upper)
    bus.subscribe("case" + base, lower)
    send(sender, "Case" + base, "U")
    send(sender, "case" + base, "l")
    assert upper.wait(1)[0].payload == "U"
    assert lower.wait(1)[0].payload == "l"
    bus.notify("mark" + base)  # a round trip: anything misrouted would have arrived by now
    assert upper.payloads == ["U"] and lower.payloads == ["l"]


BAD_CHANNELS: list[Any] = ["", "a\x00b", "é" * 32, "x" * 64, "🎉" * 16, None, 42, b"bytes"]


@pytest.mark.parametrize("channel", BAD_CHANNELS, ids=repr)
def test_invalid_channel_names_rejected_at_every_entry_point(
    bus: Dispatcher, channel: Any, collector: Collector
) -> None:
    calls = [
        lambda: bus.listen(channel),
        lambda: bus.unlisten(channel),
        lambda: bus.notify(channel, "x"),
        lambda: bus.subscribe(channel, collector),
        lambda: bus.unsubscribe(channel, collector),
        lambda: bus.on(channel),
        lambda: bus.signal(channel),
    ]
    for call in calls:
        with pytest.raises(InvalidChannelName):
            call()
    assert issubclass(InvalidChannelName, ValueError)
    # Nothing was disturbed.
    ok = unique()
    bus.subscribe(ok, collector)
    bus.notify(ok, "still fine")
    assert collector.wait(1)[0].payload == "still fine"


def test_invalid_channel_rejected_before_start_too(dsn: str) -> None:
    bus = Dispatcher(dsn)
    with pytest.raises(InvalidChannelName):
        bus.listen("x" * 64)
    with pytest.raises(InvalidChannelName):
        bus.subscribe("", print)
    assert bus.channels == frozenset()


def test_payload_limits_counted_in_bytes(bus: Dispatcher, dsn: str) -> None:
    channel = unique()
    largest = "é" * 3999 + "a"  # 7999 bytes, 4000 characters
    assert len(largest.encode()) == 7999
    got = Collector()
    bus.subscribe(channel, got)
    bus.notify(channel, largest)
    assert got.wait(1)[0].payload == largest
    for too_large in ["é" * 4000, "a" * 8000, "🎉" * 2000]:
        with pytest.raises(PayloadTooLarge):
            bus.notify(channel, too_large)
    with pytest.raises(TypeError):
        bus.notify(channel, b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bus.notify(channel, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bus.notify(channel, "nul\x00inside")
    bus.notify(channel, "after errors")
    assert got.wait(2)[1].payload == "after errors"
    assert len(got.items) == 2


def test_plain_ascii_limits_on_both_sides(bus: Dispatcher) -> None:
    # Plain ASCII takes a shorter check in notify(): the same limits, to the byte.
    channel = (unique() + "c" * 63)[:63]
    got = Collector()
    bus.subscribe(channel, got)
    bus.notify(channel, "a" * 7999)
    assert got.wait(1)[0].payload == "a" * 7999
    for bad_channel in [channel + "c", "", "nul\x00"]:
        with pytest.raises(InvalidChannelName):
            bus.notify(bad_channel, "a")
    with pytest.raises(PayloadTooLarge):
        bus.notify(channel, "a" * 8000)
    with pytest.raises(ValueError, match="NUL"):
        bus.notify(channel, "a\x00")
    bus.notify(channel, "after errors")
    assert [n.payload for n in got.wait(2)] == ["a" * 7999, "after errors"]


def test_multibyte_channel_limit_on_both_sides_of_63_bytes(bus: Dispatcher, sender: Any) -> None:
    fits = "ж" * 31 + "z"  # 63 bytes
    too_long = "ж" * 32  # 64 bytes, 32 characters
    got = Collector()
    bus.subscribe(fits, got)
    send(sender, fits, "ok")
    assert got.wait(1)[0].channel == fits
    with pytest.raises(InvalidChannelName, match="64 bytes"):
        bus.subscribe(too_long, got)


def test_notify_many_validates_every_pair_before_sending(bus: Dispatcher, dsn: str) -> None:
    channel = unique()
    listener = Listener(dsn, channel)
    try:
        with pytest.raises(PayloadTooLarge):
            bus.notify_many([(channel, "fine"), (channel, "x" * 8000)])
        with pytest.raises(InvalidChannelName):
            bus.notify_many([(channel, "fine"), ("", "x")])
        bus.notify(channel, "marker")
        assert [n.payload for n in listener.receive(1)] == ["marker"]
        bus.notify_many([])
    finally:
        listener.close()


def test_notify_many_rejects_anything_but_pairs(bus: Dispatcher) -> None:
    for bad in (["ab", "cd"], [("c",)], [("c", "p", "x")], [b"xy"]):
        with pytest.raises(TypeError):
            bus.notify_many(bad)  # type: ignore[arg-type]


def test_non_ascii_channels_in_a_non_utf8_database(dsn: str, sender: Any) -> None:
    name = unique("latin1db")
    with sender.cursor() as cur:
        cur.execute(
            f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
        params["dbname"] = name
        channel = "café " + unique()
        got = Collector()
        with Dispatcher(**params, heartbeat_interval=0.2) as bus:
            bus.subscribe(channel, got)
            bus.notify(channel, "déjà vu")
            assert [(n.channel, n.payload) for n in got.items] == [(channel, "déjà vu")]
            done = threading.Event()
            threading.Timer(0.6, done.set).start()
            done.wait(BOUND)  # a few heartbeats: none may find the channel missing
            assert bus.stats().reconnects == 0
    finally:
        with sender.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
