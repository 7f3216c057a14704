"""Property-based tests: any acceptable channel name round-trips exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgpubsub_dispatch import MAX_CHANNEL_BYTES, Dispatcher, InvalidChannelName

from .support.notifying import Collector

# Any Unicode text the server can store: no NUL, no lone surrogates.
server_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=63,
)
valid_channels = server_text.filter(lambda s: len(s.encode()) <= MAX_CHANNEL_BYTES)


@pytest.fixture(scope="module")
def module_bus(dsn: str) -> Iterator[Dispatcher]:
    with Dispatcher(dsn) as bus:
        yield bus


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    channel=valid_channels,
    payload=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=200,
    ),
)
def test_any_valid_channel_round_trips(module_bus: Dispatcher, channel: str, payload: str) -> None:
    got = Collector()
    module_bus.subscribe(channel, got)
    try:
        module_bus.notify(channel, payload)
        (notification,) = got.items
        assert (notification.channel, notification.payload) == (channel, payload)
    finally:
        module_bus.unsubscribe(channel, got)
    assert channel not in module_bus.channels


@given(channel=st.text(max_size=100))
def test_validation_accepts_exactly_what_the_server_accepts(channel: str) -> None:
    try:
        size = len(channel.encode())
    except UnicodeEncodeError:
        size = None
    acceptable = size is not None and 0 < size <= MAX_CHANNEL_BYTES and "\x00" not in channel
    bus = Dispatcher()  # not started: signal() checks the name and sends nothing
    if acceptable:
        assert bus.signal(channel) is bus.signal(channel)
    else:
        with pytest.raises(InvalidChannelName):
            bus.signal(channel)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["batch a", 'batch "b"', "batch\\c", "batch {d},e"]),
            st.text(
                alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=100,
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_any_batch_of_notifies_round_trips_in_order(
    module_bus: Dispatcher, pairs: list[tuple[str, str]]
) -> None:
    # notify_many queues them together, so they share transactions (one statement each): every
    # channel and payload goes through the batch's text[] literals, quotes and backslashes too.
    got = Collector()
    channels = sorted({channel for channel, _ in pairs})
    for channel in channels:
        module_bus.subscribe(channel, got)
    try:
        module_bus.notify_many(pairs)
        assert [(n.channel, n.payload) for n in got.items] == pairs
    finally:
        for channel in channels:
            module_bus.unsubscribe(channel, got)
