"""Dispatcher start and stop: threads, server sessions, restarts, lifecycle signals."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher, DispatcherStopped

from .support.dispatching import dispatcher_threads, session_state, sessions_named, unique
from .support.notifying import Collector, send
from .support.waiting import BOUND, wait_until


def test_start_returns_only_when_listening(dsn: str, sender: Any, collector: Collector) -> None:
    channel = unique()
    bus = Dispatcher(dsn)
    bus.subscribe(channel, collector)
    bus.start(timeout=BOUND)
    try:
        send(sender, channel, "right after start")
        assert collector.wait(1)[0].payload == "right after start"
    finally:
        bus.stop()


def test_start_failure_raises_and_leaves_no_thread() -> None:
    before = len(dispatcher_threads())
    bus = Dispatcher("host=127.0.0.1 port=1 connect_timeout=5")
    with pytest.raises(psycopg2.OperationalError):
        bus.start()
    assert not bus.running
    assert bus.backend_pid is None
    assert len(dispatcher_threads()) == before
    with pytest.raises(psycopg2.OperationalError):
        bus.start()  # a failed start leaves it startable
    assert len(dispatcher_threads()) == before


def test_start_on_running_dispatcher_raises(bus: Dispatcher) -> None:
    with pytest.raises(RuntimeError):
        bus.start()
    assert bus.running


def test_running_backend_pid_and_channels_properties(dsn: str) -> None:
    bus = Dispatcher(dsn)
    assert not bus.running and bus.backend_pid is None and bus.channels == frozenset()
    bus.listen("Recorded")
    assert bus.channels == frozenset({"Recorded"})
    with bus:
        assert bus.running
        assert isinstance(bus.backend_pid, int)
        assert bus.channels == frozenset({"Recorded"})
    assert not bus.running and bus.backend_pid is None


def test_stop_before_start_is_a_no_op(dsn: str, sender: Any) -> None:
    channel, app_name = unique(), unique("app")
    threads_before = len(dispatcher_threads())
    bus = Dispatcher(dsn, application_name=app_name)
    bus.listen(channel)  # recorded for the next start
    bus.stop(timeout=BOUND)
    assert not bus.running and bus.backend_pid is None
    assert bus.channels == frozenset({channel})
    assert len(dispatcher_threads()) == threads_before
    assert sessions_named(sender, app_name) == []
    with bus:  # still startable, and the session is found by that name once there is one
        assert sessions_named(sender, app_name) == [bus.backend_pid]
        assert bus.channels == frozenset({channel})


def test_stop_is_idempotent_and_closes_the_session(dsn: str, sender: Any) -> None:
    bus = Dispatcher(dsn).start(timeout=BOUND)
    pid = bus.backend_pid
    assert pid is not None
    bus.stop(timeout=BOUND)
    bus.stop(timeout=BOUND)
    assert not bus.running
    assert not dispatcher_threads() or all(not t.is_alive() for t in dispatcher_threads())
    # The server ends the session asynchronously after the client closes it.
    wait_until(lambda: session_state(sender, pid) is None, "the dispatcher's session to end")


def test_stop_from_many_threads_at_once(dsn: str) -> None:
    bus = Dispatcher(dsn).start(timeout=BOUND)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def stopper() -> None:
        try:
            barrier.wait(BOUND)
            bus.stop(timeout=BOUND)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=stopper) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
    assert errors == []
    assert not bus.running


def test_stop_from_inside_a_handler(dsn: str, sender: Any) -> None:
    channel = unique()
    bus = Dispatcher(dsn)
    returned = threading.Event()
    stopped = threading.Event()
    pg.disconnected.connect(lambda sender, error: stopped.set(), sender=bus, weak=False)

    @bus.on(channel)
    def stop_here(notification: Any) -> None:
        bus.stop()  # must neither deadlock nor join itself
        returned.set()

    bus.start(timeout=BOUND)
    send(sender, channel)
    assert returned.wait(BOUND)
    assert stopped.wait(BOUND)
    bus.stop(timeout=BOUND)
    assert not bus.running


def test_stop_in_a_handler_ends_delivery_of_what_was_read_with_it(dsn: str, sender: Any) -> None:
    # Five notifications committed together arrive in one read: the handler that stops the
    # dispatcher on the first is not called for the other four.
    channel = unique()
    bus = Dispatcher(dsn)
    payloads: list[str] = []

    @bus.on(channel)
    def stop_at_once(notification: Any) -> None:
        payloads.append(notification.payload)
        bus.stop()

    bus.start(timeout=BOUND)
    with sender.cursor() as cur:
        cur.execute("SELECT pg_notify(%s, g::text) FROM generate_series(1, 5) AS g", (channel,))
    wait_until(lambda: not bus.running, "the dispatcher stopped")
    assert payloads == ["1"]


def test_stop_from_another_thread_ends_delivery_after_the_handler_running(
    dsn: str, sender: Any
) -> None:
    channel = unique()
    bus = Dispatcher(dsn)
    payloads: list[str] = []
    entered, release = threading.Event(), threading.Event()

    @bus.on(channel)
    def blocked(notification: Any) -> None:
        payloads.append(notification.payload)
        entered.set()
        release.wait(BOUND)

    bus.start(timeout=BOUND)
    with sender.cursor() as cur:
        cur.execute("SELECT pg_notify(%s, g::text) FROM generate_series(1, 5) AS g", (channel,))
    assert entered.wait(BOUND)
    stopper = threading.Thread(target=bus.stop, kwargs={"timeout": BOUND})
    stopper.start()
    wait_until(lambda: not bus.running, "stop() requested")
    release.set()
    stopper.join(BOUND)
    assert not bus.running
    assert payloads == ["1"]  # the four read with it were dropped, not delivered


def test_calls_after_stop_fail_fast(dsn: str) -> None:
    bus = Dispatcher(dsn).start(timeout=BOUND)
    bus.stop(timeout=BOUND)
    with pytest.raises(DispatcherStopped):
        bus.notify("anything", "x", timeout=1)
    assert isinstance(DispatcherStopped("x"), RuntimeError)


def test_notify_before_start_raises(dsn: str) -> None:
    with pytest.raises(DispatcherStopped):
        Dispatcher(dsn).notify("c", "x")


def test_stop_fails_calls_waiting_on_the_queue(dsn: str, sender: Any) -> None:
    gate_channel = unique("gate")
    bus = Dispatcher(dsn)
    in_handler = threading.Event()
    release = threading.Event()

    @bus.on(gate_channel)
    def block(notification: Any) -> None:
        in_handler.set()
        release.wait(BOUND)

    bus.start(timeout=BOUND)
    send(sender, gate_channel)
    assert in_handler.wait(BOUND)
    outcome: list[BaseException | None] = []

    def queued_notify() -> None:
        try:
            bus.notify(unique(), "never sent", timeout=BOUND)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=queued_notify)
    caller.start()
    stopper = threading.Thread(target=bus.stop, kwargs={"timeout": BOUND})
    stopper.start()
    # Wait until the stop has been requested, then let the loop go on.
    wait_until(lambda: not bus.running, "the stop to be requested")
    release.set()
    caller.join(BOUND)
    stopper.join(BOUND)
    assert len(outcome) == 1 and isinstance(outcome[0], DispatcherStopped)
    assert not bus.running


def test_restart_keeps_handlers_and_channels(dsn: str, sender: Any, collector: Collector) -> None:
    channel = unique()
    bus = Dispatcher(dsn)
    bus.subscribe(channel, collector)
    with bus:
        send(sender, channel, "first")
        collector.wait(1)
    with bus:
        assert bus.channels == frozenset({channel})
        send(sender, channel, "second")
        assert [n.payload for n in collector.wait(2)] == ["first", "second"]


def test_session_is_never_idle_in_transaction(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    bus.listen(channel)
    bus.notify(channel, "x")
    assert bus.backend_pid is not None
    assert session_state(sender, bus.backend_pid) == "idle"


def test_connected_and_disconnected_signals(dsn: str) -> None:
    bus = Dispatcher(dsn)
    events: list[tuple[str, Any]] = []
    pg.connected.connect(
        lambda s, backend_pid: events.append(("connected", backend_pid)), sender=bus, weak=False
    )
    pg.disconnected.connect(
        lambda s, error: events.append(("disconnected", error)), sender=bus, weak=False
    )
    bus.start(timeout=BOUND)
    pid = bus.backend_pid
    assert events == [("connected", pid)]
    bus.stop(timeout=BOUND)
    assert events == [("connected", pid), ("disconnected", None)]


def test_lost_connection_without_reconnect_stops(dsn: str, sender: Any) -> None:
    bus = Dispatcher(dsn, reconnect=False)
    lost = threading.Event()
    errors: list[Any] = []

    def on_disconnected(s: Any, error: Any) -> None:
        errors.append(error)
        lost.set()

    pg.disconnected.connect(on_disconnected, sender=bus, weak=False)
    bus.start(timeout=BOUND)
    with sender.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (bus.backend_pid,))
    assert lost.wait(BOUND)
    assert isinstance(errors[0], psycopg2.OperationalError)
    assert not bus.running
    with pytest.raises(DispatcherStopped):
        bus.notify("c", "x")
    bus.stop()  # still fine


def test_no_thread_or_descriptor_leak_over_start_stop_cycles(dsn: str) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    bus = Dispatcher(dsn)
    bus.listen(unique())
    bus.start(timeout=BOUND)
    bus.stop(timeout=BOUND)
    before_fds, before_threads = open_fds(), threading.active_count()
    for _ in range(20):
        bus.start(timeout=BOUND)
        bus.notify(unique(), "x")
        bus.stop(timeout=BOUND)
    assert open_fds() <= before_fds
    assert threading.active_count() <= before_threads


def test_start_after_a_handler_stopped_it_waits_for_the_old_thread(dsn: str, sender: Any) -> None:
    channel = unique()
    bus = Dispatcher(dsn)
    stopped = threading.Event()
    pg.disconnected.connect(lambda s, error: stopped.set(), sender=bus, weak=False)
    release, asked = threading.Event(), threading.Event()

    @bus.on(channel)
    def stop_then_linger(notification: Any) -> None:
        if notification.payload == "stop":
            bus.stop()
            asked.set()
            release.wait(BOUND)  # the thread is still busy when start() comes

    bus.start(timeout=BOUND)
    send(sender, channel, "stop")
    assert asked.wait(BOUND)
    threading.Timer(0.2, release.set).start()
    bus.start(timeout=BOUND)  # waits for the old thread rather than raising
    try:
        assert stopped.is_set() and bus.running
    finally:
        bus.stop(timeout=BOUND)


def test_streams_end_when_the_dispatcher_stops(dsn: str) -> None:
    bus = Dispatcher(dsn).start(timeout=BOUND)
    stream = bus.stream(unique()).open()
    ended = threading.Event()

    def read() -> None:
        for _ in stream:
            pass
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    bus.stop(timeout=BOUND)
    assert ended.wait(BOUND) and stream.closed
