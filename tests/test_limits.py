"""Odd values at every entry point (issue 9, item 5): refused before anything happens, or served.

Timeouts: ``None``, infinity or any huge number means "no limit" and the call takes effect
once; NaN, a negative number or a non-number is refused with the same error everywhere, and a
refused call has no effect (nothing sent, nothing recorded, nothing stopped). Options out of
their range are refused at construction. ``notify_many`` names the index of a bad item.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher, PayloadTooLarge

from .support.dispatching import unique
from .support.notifying import Collector, send
from .support.waiting import BOUND

HUGE = [math.inf, 1e10, 1e300]
REFUSED: list[tuple[Any, type[Exception]]] = [
    (math.nan, ValueError),
    (-1, ValueError),
    (-math.inf, ValueError),
    ("5", TypeError),
    (True, TypeError),
]


def calls(bus: Dispatcher, channel: str, handler: Callable[[Any], object]) -> dict[str, Any]:
    """Every public call that takes a timeout, bound to ``channel``."""
    return {
        "notify": lambda t: bus.notify(channel, "p", timeout=t),
        "notify_json": lambda t: bus.notify_json(channel, {"p": 1}, timeout=t),
        "notify_many": lambda t: bus.notify_many([(channel, "p")], timeout=t),
        "listen": lambda t: bus.listen(channel, timeout=t),
        "unlisten": lambda t: bus.unlisten(channel, timeout=t),
        "subscribe": lambda t: bus.subscribe(channel, handler, timeout=t),
        "unsubscribe": lambda t: bus.unsubscribe(channel, handler, timeout=t),
        "queue_usage": lambda t: bus.queue_usage(timeout=t),
    }


@pytest.mark.parametrize("timeout", HUGE)
def test_a_huge_timeout_means_no_limit_and_the_call_takes_effect_once(
    bus: Dispatcher, timeout: float
) -> None:
    channel, got = unique("huge"), Collector()
    for name, call in calls(bus, channel, got).items():
        call(timeout)  # no OverflowError, no TimeoutError
        if name == "subscribe":
            assert channel in bus.channels
    bus.subscribe(channel, got, timeout=timeout)
    bus.notify(channel, "once", timeout=timeout)
    assert [n.payload for n in got.wait(1)] == ["once"]
    with bus.stream(channel) as stream:
        bus.notify(channel, "streamed", timeout=timeout)
        assert stream.get(timeout=timeout).payload == "streamed"


@pytest.mark.parametrize(("timeout", "error"), REFUSED, ids=repr)
def test_a_refused_timeout_raises_and_has_no_effect(
    bus: Dispatcher, sender: Any, timeout: Any, error: type[Exception]
) -> None:
    channel, probe = unique("refused"), unique("probe")
    got = Collector()
    bus.subscribe(probe, got)
    listener = Collector()
    bus.subscribe(channel, listener)  # so that a notify sent by mistake would be seen
    for name, call in calls(bus, channel, got).items():
        with pytest.raises(error):
            call(timeout)
        assert channel in bus.channels, f"{name} took effect"
    for method in (bus.start, bus.stop):
        with pytest.raises(error):
            method(timeout)
    assert bus.running
    with bus.stream(channel) as stream, pytest.raises(error):
        stream.get(timeout=timeout)
    send(sender, probe, "after")  # everything before it has been received and routed
    got.wait(1)
    assert listener.items == []  # not one of the refused notifies was sent
    assert bus.running and bus.stats().connected


def test_stop_with_an_infinite_timeout_waits_for_the_thread(dsn: str) -> None:
    bus = Dispatcher(dsn).start(timeout=math.inf)
    bus.stop(timeout=math.inf)
    assert not bus.running


@pytest.mark.parametrize(
    "options",
    [
        {"heartbeat_interval": 3e6},
        {"heartbeat_interval": math.nan},
        {"heartbeat_timeout": 1e7},
        {"backoff_min": 1e7, "backoff_max": 1e7},
        {"backoff_max": math.inf},
        {"backoff_min": math.nan},
        {"heartbeat_interval": True},
        {"max_pending": True},
        {"max_pending": 1.5},
        {"queue_warning": math.nan},
    ],
    ids=repr,
)
def test_options_out_of_range_are_refused_at_construction(
    dsn: str, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        Dispatcher(dsn, **options)


def test_the_longest_accepted_intervals_keep_the_dispatcher_alive(dsn: str, sender: Any) -> None:
    day = 86_400.0
    got = Collector()
    with Dispatcher(
        dsn, heartbeat_interval=day, heartbeat_timeout=day, backoff_min=day, backoff_max=day
    ) as bus:
        channel = unique("day")
        bus.subscribe(channel, got)
        send(sender, channel, "alive")
        assert got.wait(1)[0].payload == "alive"
        assert bus.running


@pytest.mark.parametrize(
    ("items", "error", "index"),
    [
        ([{"channel": "c", "payload": "p"}], TypeError, 0),
        ([("c", "p"), "cp"], TypeError, 1),
        ([("c", "p"), ("c", "p", "x")], TypeError, 1),
        ([("c", "p"), ("c", 5)], TypeError, 1),
        ([("c", "1"), ("c", "2"), ("c", "x" * 8000)], PayloadTooLarge, 2),
        ([("", "p")], pg.InvalidChannelName, 0),
    ],
)
def test_notify_many_names_the_bad_item_and_sends_nothing(
    bus: Dispatcher, sender: Any, items: list[Any], error: type[Exception], index: int
) -> None:
    probe, got = unique("probe"), Collector()
    bus.subscribe("c", got)
    bus.subscribe(probe, got)
    with pytest.raises(error, match=f"item {index}"):
        bus.notify_many(items, timeout=BOUND)
    send(sender, probe, "after")
    assert [n.payload for n in got.wait(1)] == ["after"]  # none of the good items was sent


def test_ancestor_waits_accept_none_and_infinity_and_refuse_nan(dsn: str) -> None:
    pubsub = pg.connect(dsn)
    try:
        channel = unique("old")
        pubsub.listen('"' + channel + '"')
        pubsub.notify(channel, "one")
        event = pubsub.get_event(select_timeout=math.inf)
        assert event is not None and event.payload == "one"
        pubsub.notify(channel, "two")
        event = pubsub.get_event(select_timeout=None)
        assert event is not None and event.payload == "two"
        with pytest.raises(ValueError):
            pubsub.get_event(select_timeout=math.nan)
        with pytest.raises(ValueError):
            pubsub.get_events(select_timeout=-1)
    finally:
        pubsub.close()
