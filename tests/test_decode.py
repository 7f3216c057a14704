"""``decode=``: handlers that receive decoded payloads (JSON or any callable), against the server.

A payload that does not decode is reported through ``handler_error`` with the raw notification,
and the handler is not called for it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from pgpubsub_dispatch import DecodedNotification, Dispatcher, Notification, handler_error

from .support.dispatching import unique
from .support.loops import LoopThread
from .support.notifying import Collector, send
from .support.waiting import BOUND


@pytest.fixture
def errors(bus: Dispatcher) -> Any:
    """``handler_error`` reports of ``bus``: (handler, notification, error) tuples."""
    reports: list[tuple[Any, Any, BaseException]] = []
    arrived = threading.Event()

    def report(sender: Any, handler: Any, notification: Any, error: BaseException) -> None:
        reports.append((handler, notification, error))
        arrived.set()

    handler_error.connect(report, sender=bus, weak=False)
    yield reports, arrived
    handler_error.disconnect(report, sender=bus)


def test_json_gives_the_handler_the_value_and_the_raw_text(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    got = Collector()
    assert bus.subscribe(channel, got, decode="json") is got

    send(sender, channel, '{"id": 7, "tags": ["a"]}')

    (notification,) = got.wait(1)
    assert isinstance(notification, DecodedNotification)
    assert isinstance(notification, Notification)
    assert notification.value == {"id": 7, "tags": ["a"]}
    assert notification.payload == '{"id": 7, "tags": ["a"]}'
    assert (notification.channel, notification.pid) == (channel, sender.get_backend_pid())
    assert notification == DecodedNotification(
        channel, notification.payload, sender.get_backend_pid(), {"id": 7, "tags": ["a"]}
    )
    with pytest.raises(AttributeError):
        notification.value = None  # type: ignore[misc]


def test_a_payload_that_does_not_decode_goes_to_handler_error_raw(
    bus: Dispatcher, errors: Any
) -> None:
    reports, arrived = errors
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got, decode=json.loads)

    bus.notify(channel, "{not json")
    bus.notify(channel, "[1]")

    assert arrived.wait(BOUND)
    assert [n.value for n in got.wait(1)] == [[1]]  # the bad one never reached it
    ((handler, notification, error),) = reports
    assert handler is got
    assert not isinstance(notification, DecodedNotification)
    assert notification.payload == "{not json"
    assert isinstance(error, json.JSONDecodeError)
    assert bus.stats().handler_errors == 1


def test_any_callable_decodes_and_handler_errors_carry_the_decoded_notification(
    bus: Dispatcher, errors: Any
) -> None:
    reports, arrived = errors
    channel = unique()

    @bus.on(channel, decode=int)
    def needs_positive(notification: DecodedNotification[int]) -> None:
        if notification.value <= 0:
            raise ValueError("not positive")

    bus.notify(channel, "-3")

    assert arrived.wait(BOUND)
    ((handler, notification, error),) = reports
    assert handler is needs_positive
    assert notification.value == -3 and str(error) == "not positive"


def test_unsubscribe_takes_the_handler_as_given(bus: Dispatcher) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got, decode="json")
    bus.subscribe(channel, got, decode="json")  # kept once
    bus.notify(channel, "1")
    assert len(got.wait(1)) == 1
    bus.unsubscribe(channel, got)
    assert channel not in bus.channels


def test_coroutine_handlers_decode_too(bus: Dispatcher, loop_thread: LoopThread) -> None:
    channel = unique()
    values: list[Any] = []
    done = threading.Event()

    async def handler(notification: DecodedNotification[Any]) -> None:
        await asyncio.sleep(0)
        values.append(notification.value)
        done.set()

    bus.subscribe(channel, handler, loop=loop_thread.loop, decode="json")
    bus.notify_json(channel, {"ok": True})
    assert done.wait(BOUND)
    assert values == [{"ok": True}]


def test_bad_decode_arguments_are_refused_before_anything_happens(bus: Dispatcher) -> None:
    channel = unique()
    with pytest.raises(ValueError, match="json"):
        bus.subscribe(channel, print, decode="yaml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decode"):
        bus.subscribe(channel, print, decode=42)  # type: ignore[call-overload]
    assert channel not in bus.channels
