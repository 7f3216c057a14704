"""A user's program, fully annotated, that ``mypy --strict`` must accept as it is.

``tests/test_typing.py`` type-checks it (it is not run): every public call a user makes, with
``assert_type`` pinning what the library's signatures promise, so that a signature typed
``Any`` again fails the test.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pgpubsub_dispatch as pgpubsub
from pgpubsub_dispatch import (
    DecodedNotification,
    Dispatcher,
    DispatcherStats,
    Notification,
    NotificationStream,
)

if TYPE_CHECKING:
    from typing_extensions import assert_type


def on_order(notification: Notification) -> None:
    print(notification.channel, notification.payload, notification.pid)


async def on_order_async(notification: Notification) -> None:
    await asyncio.sleep(0)
    print(notification.payload)


def on_json(notification: DecodedNotification[dict[str, Any]]) -> None:
    print(notification.value["id"], notification.payload)


def threads(bus: Dispatcher) -> None:
    same = bus.subscribe("orders", on_order)  # returns the handler, typed as given
    same(next(iter(bus.stream("orders"))))
    bus.subscribe("orders", on_json, decode="json")
    bus.subscribe("orders", on_json, decode=json.loads, timeout=5.0)
    bus.unsubscribe("orders", on_order)

    @bus.on("orders")
    def decorated(notification: Notification) -> None:
        print(notification.payload)

    @bus.on("numbers", decode=int)
    def numbers(notification: DecodedNotification[int]) -> None:
        print(notification.value + 1)

    with bus.stream("orders", maxsize=10) as stream:
        assert_type(stream, NotificationStream)
        assert_type(stream.get(timeout=1), Notification)
        for notification in stream:
            assert_type(notification, Notification)
            print(notification.payload.upper())
    stats: DispatcherStats = bus.stats()
    print(stats.received + stats.handler_dropped, bus.backend_pid, bus.channels)


async def coroutines(bus: Dispatcher) -> None:
    bus.subscribe("orders", on_order_async, loop=asyncio.get_running_loop())
    async with bus.stream("orders") as stream:
        async for notification in stream:
            assert_type(notification, Notification)
            break
        assert_type(await stream.get_async(), "Notification | None")


def ancestor(dsn: str) -> None:
    pubsub = pgpubsub.connect(dsn)
    pubsub.listen("test")
    event = pubsub.get_event(select_timeout=1)
    assert_type(event, "Notification | None")
    events = pubsub.get_events()
    assert_type(events, "list[Notification] | None")
    for e in pubsub.events(select_timeout=0.5, yield_timeouts=True):
        if e is None:
            break
        print(e.channel, e.payload, e.pid)
    pubsub.close()


def main(dsn: str) -> None:
    with Dispatcher(dsn) as bus:
        threads(bus)
        asyncio.run(coroutines(bus))
    ancestor(dsn)
