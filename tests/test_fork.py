"""fork(): a child's first use of an inherited dispatcher starts a session of its own.

The parent's session is never touched by the child (its socket is pointed at /dev/null in the
child, never closed); the child gets a new thread and connection with the same handlers and
channels. Each child reports through a pipe, read with a bounded wait; every child is reaped.
Real forking servers (gunicorn) are in ``test_forking_servers.py``.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pgpubsub_dispatch import Dispatcher, DispatcherStopped

from .support.dispatching import unique
from .support.notifying import Collector, send
from .support.waiting import BOUND

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")


def in_child(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a forked child; return what it returned (JSON), or fail the test."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read_end)
            try:
                report = {"result": body()}
            except BaseException as exc:
                report = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + BOUND
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0, deadline - time.monotonic()))
            assert ready, "the child did not report in time"
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if not chunks:
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    report = json.loads(b"".join(chunks))
    assert "error" not in report, report["error"]
    return report["result"]


def test_the_child_gets_a_session_of_its_own_and_the_parent_keeps_its_own(
    dsn: str, sender: Any
) -> None:
    channel = unique()
    got = Collector()
    bus = Dispatcher(dsn)
    bus.subscribe(channel, got)
    bus.start(timeout=BOUND)
    try:
        parent_pid = bus.backend_pid

        def child() -> dict[str, Any]:
            running_before = bus.running
            connected_before = bus.connected
            bus.notify(channel, "from the child")  # the first use: starts the child's session
            mine = [n.payload for n in got.items if n.payload == "from the child"]
            result = {
                "running_before": running_before,
                "connected_before": connected_before,
                "backend_pid": bus.backend_pid,
                "received": mine,
                "channels": sorted(bus.channels),
            }
            bus.stop(timeout=BOUND)
            return result

        report = in_child(child)

        assert report["running_before"] is True and report["connected_before"] is False
        assert report["backend_pid"] not in (None, parent_pid)
        assert report["received"] == ["from the child"]  # the child's handler ran, in the child
        assert report["channels"] == [channel]
        (from_child,) = got.wait(1)  # the parent listens too, on its own session
        assert from_child.pid == report["backend_pid"]
        send(sender, channel, "parent still listens")
        assert got.wait(2)[1].payload == "parent still listens"
        assert bus.backend_pid == parent_pid and bus.stats().reconnects == 0
    finally:
        bus.stop(timeout=BOUND)


def test_a_child_that_drops_its_copy_leaves_the_parent_session_alone(dsn: str, sender: Any) -> None:
    channel = unique()
    got = Collector()
    bus = Dispatcher(dsn)
    bus.subscribe(channel, got)
    with bus:
        parent_pid = bus.backend_pid

        def child() -> bool:
            bus.stop()  # nothing to stop in the child: it never started here
            was_running = bus.running
            gc.collect()  # closing the inherited socket would end the parent's session
            return was_running

        assert in_child(child) is False
        send(sender, channel, "still here")
        assert got.wait(1)[0].payload == "still here"
        assert bus.backend_pid == parent_pid and bus.stats().reconnects == 0


def test_every_kind_of_first_use_starts_the_child_session(dsn: str) -> None:
    channel, other = unique(), unique("other")
    with Dispatcher(dsn) as bus:
        bus.listen(channel)

        def child() -> list[Any]:
            got = Collector()
            with bus.stream(channel) as stream:  # opening a stream is a first use too
                bus.subscribe(other, got)
                bus.notify(channel, "1")
                first = stream.get(timeout=BOUND).payload
            usage = bus.queue_usage(timeout=BOUND)
            bus.stop(timeout=BOUND)
            return [first, 0.0 <= usage <= 1.0, sorted(bus.channels)]

        assert in_child(child) == ["1", True, sorted([channel, other])]
        assert bus.channels == frozenset([channel])  # the child's changes stay in the child


def test_a_stopped_dispatcher_stays_stopped_in_the_child(dsn: str) -> None:
    bus = Dispatcher(dsn)
    bus.start(timeout=BOUND)
    bus.stop(timeout=BOUND)

    def child() -> str:
        try:
            bus.notify(unique(), "x")
        except DispatcherStopped as exc:
            return str(exc)
        return "sent"

    assert "not running" in in_child(child)


def test_with_an_executor_the_child_must_make_its_own(dsn: str) -> None:
    with ThreadPoolExecutor(2) as pool, Dispatcher(dsn, executor=pool) as bus:

        def child() -> list[Any]:
            started = time.monotonic()
            try:
                bus.notify(unique(), "x")
                return ["sent"]
            except DispatcherStopped as exc:
                return [str(exc), time.monotonic() - started < 1, bus.running]

        message, fast, running = in_child(child)
        assert "executor" in message and "create a new Dispatcher" in message
        assert fast and running is False
        assert bus.running
