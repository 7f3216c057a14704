"""The Dispatcher contract (../shared/API.md), row by row, against a real server."""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher, DispatcherStopped, InvalidChannelName, PayloadTooLarge

from .support.dispatching import Listener, dispatcher_threads, session_state, unique
from .support.notifying import Collector, send
from .support.waiting import BOUND

# --------------------------------------------------------------------------- lifecycle


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


def test_listen_returns_only_when_listening(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    got = Collector()
    bus.signal(channel).connect(got, weak=False)
    bus.listen(channel, timeout=BOUND)
    send(sender, channel, "right after listen")
    assert got.wait(1)[0].payload == "right after listen"
    assert channel in bus.channels


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


def test_stop_before_start_is_a_no_op(dsn: str) -> None:
    Dispatcher(dsn).stop()


def test_stop_is_idempotent_and_closes_the_session(dsn: str, sender: Any) -> None:
    bus = Dispatcher(dsn).start(timeout=BOUND)
    pid = bus.backend_pid
    assert pid is not None
    bus.stop(timeout=BOUND)
    bus.stop(timeout=BOUND)
    assert not bus.running
    assert not dispatcher_threads() or all(not t.is_alive() for t in dispatcher_threads())
    # The server ends the session asynchronously after the client closes it.
    import time

    deadline = time.monotonic() + BOUND
    while session_state(sender, pid) is not None:
        assert time.monotonic() < deadline, "the dispatcher's session is still open"
        time.sleep(0.02)


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
    while bus.running:
        threading.Event().wait(0.005)
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


def test_dsn_and_keyword_arguments_like_psycopg2_connect(dsn: str) -> None:
    params = psycopg2.extensions.parse_dsn(dsn)
    dbname = params.pop("dbname", None)
    with Dispatcher(**params, dbname=dbname) as bus:
        assert bus.running
    with pytest.raises(TypeError):
        Dispatcher(dsn, async_=True)


def test_libpq_environment_when_no_dsn(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    params = psycopg2.extensions.parse_dsn(dsn)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    for key, env in names.items():
        if key in params:
            monkeypatch.setenv(env, params[key])
    with Dispatcher() as bus:
        assert bus.backend_pid is not None


# ------------------------------------------------------------------ channels and payloads

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


def test_multibyte_channel_limit_on_both_sides_of_63_bytes(bus: Dispatcher, sender: Any) -> None:
    fits = "ж" * 31 + "z"  # 63 bytes
    too_long = "ж" * 32  # 64 bytes, 32 characters
    got = Collector()
    bus.subscribe(fits, got)
    send(sender, fits, "ok")
    assert got.wait(1)[0].channel == fits
    with pytest.raises(InvalidChannelName, match="64 bytes"):
        bus.subscribe(too_long, got)


# ------------------------------------------------------------------------- delivery


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


def test_arrival_order_and_subscription_order(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    calls: list[tuple[str, str]] = []
    done = threading.Event()

    def make(name: str) -> Any:
        def handler(notification: Any) -> None:
            calls.append((name, notification.payload))
            if name == "h3" and notification.payload == "499":
                done.set()

        return handler

    for name in ["h1", "h2", "h3"]:
        bus.subscribe(channel, make(name))
    with sender.cursor() as cur:
        cur.execute("BEGIN")
        for i in range(500):
            cur.execute("SELECT pg_notify(%s, %s)", (channel, str(i)))
        cur.execute("COMMIT")
    assert done.wait(BOUND)
    expected = [(h, str(i)) for i in range(500) for h in ["h1", "h2", "h3"]]
    assert calls == expected


def test_handler_exception_is_isolated_logged_and_signalled(
    bus: Dispatcher, sender: Any, caplog: pytest.LogCaptureFixture
) -> None:
    channel = unique()
    reported: list[dict[str, Any]] = []
    pg.handler_error.connect(lambda s, **kw: reported.append(kw), sender=bus, weak=False)
    after = Collector()

    def broken(notification: Any) -> None:
        raise KeyError("boom")

    bus.subscribe(channel, broken)
    bus.subscribe(channel, after)
    with caplog.at_level(logging.ERROR, logger="pgpubsub_dispatch"):
        send(sender, channel, "one")
        send(sender, channel, "two")
        after.wait(2)
    assert after.payloads == ["one", "two"]
    assert [r["notification"].payload for r in reported] == ["one", "two"]
    assert all(r["handler"] is broken and isinstance(r["error"], KeyError) for r in reported)
    assert any("boom" in (r.exc_text or "") for r in caplog.records)
    assert bus.running


def test_notifications_without_handlers_are_dropped(bus: Dispatcher, sender: Any) -> None:
    quiet, loud = unique("quiet"), unique("loud")
    bus.listen(quiet)
    got = Collector()
    bus.subscribe(loud, got)
    for i in range(100):
        send(sender, quiet, str(i))
    send(sender, loud, "after")
    got.wait(1)
    assert bus._pending == type(bus._pending)()  # nothing kept for the quiet channel


def test_strong_references_keep_lambdas_alive(bus: Dispatcher, sender: Any) -> None:
    channel = unique()
    got: list[str] = []
    done = threading.Event()
    bus.subscribe(channel, lambda n: (got.append(n.payload), done.set()))
    gc.collect()
    send(sender, channel, "alive")
    assert done.wait(BOUND)
    assert got == ["alive"]


def test_subscribe_same_handler_twice_calls_once(bus: Dispatcher) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    bus.subscribe(channel, got)
    bus.notify(channel, "x")
    bus.notify(channel, "y")
    assert got.payloads == ["x", "y"]


def test_on_decorator_returns_function_unchanged(bus: Dispatcher) -> None:
    channel = unique()
    seen: list[str] = []

    def handler(notification: Any) -> None:
        seen.append(notification.payload)

    assert bus.on(channel)(handler) is handler
    bus.notify(channel, "decorated")
    assert seen == ["decorated"]


def test_signal_is_a_blinker_signal_per_channel(bus: Dispatcher) -> None:
    import blinker

    channel = unique()
    assert isinstance(bus.signal(channel), blinker.Signal)
    assert bus.signal(channel) is bus.signal(channel)
    assert bus.signal(channel) is not bus.signal(channel + "x")


# -------------------------------------------------------------- unlisten / unsubscribe


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

    @bus.on(gate)
    def unlisten_now(notification: Any) -> None:
        # The channel's notifications of the same transaction are already received.
        if notification.payload == "g":
            assert any(n.channel == channel for n in bus._pending)
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


# ---------------------------------------------------------------- calls from handlers


def test_handler_can_notify_listen_and_unsubscribe_in_place(bus: Dispatcher) -> None:
    first, second, third = unique("a"), unique("b"), unique("c")
    relayed, late = Collector(), Collector()
    bus.subscribe(second, relayed)

    def relay(notification: Any) -> None:
        bus.notify(second, "relayed " + notification.payload)
        bus.subscribe(third, late)
        bus.unsubscribe(first, relay)

    bus.subscribe(first, relay)
    bus.notify(first, "x")
    bus.notify(first, "ignored: unsubscribed")
    bus.notify(third, "late")
    assert relayed.wait(1)[0].payload == "relayed x"
    assert late.wait(1)[0].payload == "late"
    assert first not in bus.channels


def test_server_side_errors_are_raised_in_the_callers_thread(dsn: str) -> None:
    with Dispatcher(dsn, client_encoding="LATIN1") as bus:
        channel = unique()
        with pytest.raises(UnicodeEncodeError):
            bus.notify(channel, "€ cannot be LATIN1")
        got = Collector()
        bus.subscribe(channel, got)
        bus.notify(channel, "é is fine")
        assert got.payloads == ["é is fine"]


def test_timeout_on_a_call_raises_timeout_error(bus: Dispatcher, sender: Any) -> None:
    gate = unique("gate")
    release = threading.Event()
    entered = threading.Event()

    @bus.on(gate)
    def block(notification: Any) -> None:
        entered.set()
        release.wait(BOUND)

    send(sender, gate)
    assert entered.wait(BOUND)
    try:
        with pytest.raises(TimeoutError):
            bus.notify(unique(), "x", timeout=0.05)
        with pytest.raises(ValueError):
            bus.notify(unique(), "x", timeout=-1)
    finally:
        release.set()
    bus.notify(unique(), "works afterwards", timeout=BOUND)


# ------------------------------------------------------------------------ concurrency


def test_sixteen_threads_listen_notify_unlisten_lose_nothing(bus: Dispatcher) -> None:
    rounds, per_round = 10, 5
    counts: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def count(notification: Any) -> None:
        with lock:
            counts[notification.channel] = counts.get(notification.channel, 0) + 1

    def worker(index: int) -> None:
        try:
            for r in range(rounds):
                channel = f"thread{index}-round{r}"
                bus.subscribe(channel, count)
                for i in range(per_round):
                    bus.notify(channel, f"{index}:{r}:{i}")
                bus.unsubscribe(channel, count)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND * 3)
    assert errors == []
    assert all(not t.is_alive() for t in threads)
    expected = {f"thread{i}-round{r}": per_round for i in range(16) for r in range(rounds)}
    assert counts == expected
    assert bus.channels == frozenset()


def test_many_threads_notify_one_shared_channel(bus: Dispatcher, dsn: str) -> None:
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)

    def worker(index: int) -> None:
        for _ in range(25):
            bus.notify(channel, "same")  # identical payloads: must not be folded

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND * 3)
    assert len(got.wait(16 * 25)) == 16 * 25


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


# ------------------------------------------------------------------- notify_many, batches


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


def test_a_failing_notify_in_a_shared_transaction_fails_alone(dsn: str) -> None:
    with Dispatcher(dsn, client_encoding="LATIN1") as bus:
        channel = unique()
        got = Collector()
        bus.subscribe(channel, got)
        with pytest.raises(UnicodeEncodeError):
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


def test_a_handler_unsubscribing_a_later_one_in_place_takes_effect_at_once(
    bus: Dispatcher,
) -> None:
    channel = unique()
    calls: list[str] = []

    def later(notification: Any) -> None:
        calls.append("later " + notification.payload)

    def first(notification: Any) -> None:
        calls.append("first " + notification.payload)
        if notification.payload == "1":
            bus.unsubscribe(channel, later)
            bus.subscribe(channel, added)

    def added(notification: Any) -> None:
        calls.append("added " + notification.payload)

    bus.subscribe(channel, first)
    bus.subscribe(channel, later)
    bus.notify_many([(channel, "1"), (channel, "2")])
    assert calls == ["first 1", "first 2", "added 2"]


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


# ------------------------------------------------------- found by a newcomer's trial


def test_dsn_as_a_keyword_like_psycopg2_connect(dsn: str) -> None:
    with Dispatcher(dsn=dsn) as bus:
        assert bus.running
    with pytest.raises(TypeError):
        Dispatcher(dsn, dsn=dsn)
    pubsub = pg.connect(dsn=dsn)
    pubsub.close()


def test_a_handler_raising_base_exception_leaves_no_caller_waiting(dsn: str) -> None:
    channel = unique()
    bus = Dispatcher(dsn)

    @bus.on(channel)
    def fatal(notification: Any) -> None:
        raise SystemExit("a handler that exits")

    bus.start(timeout=BOUND)
    try:
        bus.notify(channel, "x", timeout=BOUND)  # returns: its future is settled regardless
        with pytest.raises(DispatcherStopped):
            bus.notify(channel, "y", timeout=BOUND)
    finally:
        bus.stop(timeout=BOUND)


def test_any_cursor_factory_of_the_user_is_fine(dsn: str) -> None:
    import psycopg2.extras

    with Dispatcher(dsn, cursor_factory=psycopg2.extras.RealDictCursor) as bus:
        assert 0.0 <= bus.queue_usage(timeout=BOUND) <= 1.0


def test_a_call_from_a_handler_after_one_timed_out_still_works(bus: Dispatcher) -> None:
    channel, target = unique(), unique("target")
    got = Collector()
    bus.subscribe(target, got)
    outcomes: list[str] = []

    @bus.on(channel)
    def impatient(notification: Any) -> None:
        try:
            bus.notify(target, "first", timeout=0)
        except TimeoutError:
            outcomes.append("timed out")
        bus.notify(target, "second")
        outcomes.append("second sent")

    bus.notify(channel)
    # The first call times out, unless the server answered within its very first poll.
    assert outcomes in (["timed out", "second sent"], ["second sent"])
    assert [n.payload for n in got.wait(2)] == ["first", "second"]


def test_notify_many_rejects_anything_but_pairs(bus: Dispatcher) -> None:
    for bad in (["ab", "cd"], [("c",)], [("c", "p", "x")], [b"xy"]):
        with pytest.raises(TypeError):
            bus.notify_many(bad)  # type: ignore[arg-type]


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
