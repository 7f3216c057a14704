"""A handler's exception, of any kind, never ends the dispatcher or a channel (issue 9, item 2).

Every ``BaseException`` a handler raises (``KeyboardInterrupt``, ``SystemExit``,
``GeneratorExit``, a class of the user's own) is logged and sent as ``handler_error``, on the
dispatcher thread and on an executor alike; the channel keeps receiving and nothing is left
waiting, even with ``max_pending`` smaller than the notifications that follow.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pgpubsub_dispatch import Dispatcher, handler_error

from .support.notifying import Collector, send
from .support.waiting import BOUND


class Custom(BaseException):
    """A user's own BaseException subclass."""


KINDS = [KeyboardInterrupt, SystemExit, GeneratorExit, Custom, ValueError]


@pytest.fixture(params=["inline", "executor"])
def make_bus(request: pytest.FixtureRequest, dsn: str) -> Iterator[Any]:
    pool = ThreadPoolExecutor(2) if request.param == "executor" else None

    def make() -> Dispatcher:
        if pool is None:
            return Dispatcher(dsn)
        return Dispatcher(dsn, executor=pool, max_pending=5)

    yield make
    if pool is not None:
        pool.shutdown(wait=True)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_handler_raising_any_exception_is_reported_and_the_channel_goes_on(
    make_bus: Any, sender: Any, kind: type[BaseException]
) -> None:
    channel, other = f"iso_{uuid.uuid4().hex[:10]}", f"other_{uuid.uuid4().hex[:10]}"
    bus = make_bus()
    got, got_other = Collector(), Collector()
    reported: list[dict[str, Any]] = []
    one_reported = threading.Event()

    def on_error(sender: Any, **kwargs: Any) -> None:
        reported.append(kwargs)
        one_reported.set()

    @bus.on(channel)
    def fragile(notification: Any) -> None:
        if notification.payload == "bad":
            raise kind("raised by a handler")
        got(notification)

    bus.subscribe(other, got_other)
    handler_error.connect(on_error, sender=bus)
    try:
        bus.start(timeout=BOUND)
        send(sender, channel, "bad")
        assert one_reported.wait(BOUND)
        for i in range(10):  # more than max_pending: backpressure must clear again
            send(sender, channel, str(i))
            send(sender, other, str(i))
        assert [n.payload for n in got.wait(10)] == [str(i) for i in range(10)]
        assert [n.payload for n in got_other.wait(10)] == [str(i) for i in range(10)]
        bus.notify(channel, "own", timeout=BOUND)  # commands are still served
        got.wait(11)
        assert len(reported) == 1
        assert isinstance(reported[0]["error"], kind)
        assert reported[0]["handler"] is fragile
        assert reported[0]["notification"].payload == "bad"
        stats = bus.stats()
        assert stats.handler_errors == 1 and bus.running and stats.connected
    finally:
        handler_error.disconnect(on_error, sender=bus)
        bus.stop(timeout=BOUND)


def test_handler_errors_from_many_executor_threads_are_all_counted(dsn: str, sender: Any) -> None:
    channels = [f"count_{i}_{uuid.uuid4().hex[:8]}" for i in range(4)]
    reported = Collector()

    def broken(notification: Any) -> None:
        raise RuntimeError("always")

    def on_error(sender: Any, **kwargs: Any) -> None:
        reported(kwargs["notification"])  # sent after the count is taken

    with ThreadPoolExecutor(4) as pool, Dispatcher(dsn, executor=pool) as bus:
        handler_error.connect(on_error, sender=bus)
        for channel in channels:
            bus.subscribe(channel, broken)
        with sender.cursor() as cur:
            cur.execute("BEGIN")
            for i in range(250):
                for channel in channels:
                    cur.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
            cur.execute("COMMIT")
        reported.wait(1000, timeout=30)
        assert bus.stats().handler_errors == 1000
        handler_error.disconnect(on_error, sender=bus)
