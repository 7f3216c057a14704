"""Reconnection, re-LISTEN and heartbeat against the shared server (fork: test_fork.py).

Faults that need a server of the test's own (stopping it, a half-open network, failover)
are in ``test_faults.py``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher, NotConnected

from .support.dispatching import Lifecycle, session_state, sessions_named
from .support.notifying import Collector, send
from .support.waiting import BOUND, wait_until


def unique(prefix: str = "r") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def terminate(sender: Any, pid: int | None) -> None:
    assert pid is not None
    with sender.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert cur.fetchone() == (True,)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def app_name() -> str:
    return unique("app")


@pytest.fixture
def fast_bus(dsn: str, app_name: str) -> Iterator[Dispatcher]:
    bus = Dispatcher(dsn, application_name=app_name, backoff_min=0.05, backoff_max=0.5)
    yield bus
    bus.stop(timeout=BOUND)


def test_terminated_session_twenty_times_in_a_row(
    fast_bus: Dispatcher, sender: Any, app_name: str
) -> None:
    channels = [unique("Mixed Case"), unique("lower"), 'quote"d ' + unique()]
    got = Collector()
    for channel in channels:
        fast_bus.subscribe(channel, got)
    lifecycle = Lifecycle(fast_bus)
    fast_bus.start(timeout=BOUND)
    fds = open_fds()
    pids = {fast_bus.backend_pid}
    for round_ in range(1, 21):
        terminate(sender, fast_bus.backend_pid)
        info = lifecycle.wait_for("reconnected", round_)
        assert info["backend_pid"] == fast_bus.backend_pid
        assert fast_bus.channels == frozenset(channels)
        pids.add(fast_bus.backend_pid)
        for channel in channels:
            send(sender, channel, f"round {round_}")
        got.wait(3 * round_)
    assert len(pids) == 21
    assert lifecycle.count("reconnected") == 20
    assert lifecycle.count("disconnected") == 20
    assert all(
        isinstance(kw["error"], psycopg2.OperationalError)
        for event, kw in lifecycle.events
        if event == "disconnected"
    )
    assert sessions_named(sender, app_name) == [fast_bus.backend_pid]
    assert open_fds() <= fds
    stats = fast_bus.stats()
    assert stats.reconnects == 20 and stats.connected and stats.last_error
    assert sorted(n.payload for n in got.items) == sorted(
        f"round {r}" for r in range(1, 21) for _ in channels
    )


def test_reconnected_is_sent_after_relisten_and_before_dispatch(
    fast_bus: Dispatcher, sender: Any
) -> None:
    channel = unique()
    order: list[str] = []
    fast_bus.subscribe(channel, lambda n: order.append("notification"))

    def on_reconnected(sender_: Any, backend_pid: int) -> None:
        order.append("reconnected")
        # Resynchronising from the receiver works: calls run in place.
        fast_bus.notify(channel, "resync")

    pg.reconnected.connect(on_reconnected, sender=fast_bus, weak=False)
    lifecycle = Lifecycle(fast_bus)
    fast_bus.start(timeout=BOUND)
    terminate(sender, fast_bus.backend_pid)
    lifecycle.wait_for("reconnected", 1)
    fast_bus.notify(channel, "after")  # a round trip after the resync
    assert order == ["reconnected", "notification", "notification"]


def test_listen_and_unlisten_while_disconnected_apply_on_reconnect(dsn: str, sender: Any) -> None:
    # A long first backoff keeps the dispatcher disconnected while the test acts.
    bus = Dispatcher(dsn, backoff_min=2.0, backoff_max=2.0)
    kept, dropped = unique("kept"), unique("dropped")
    got = Collector()
    bus.subscribe(dropped, got)
    lifecycle = Lifecycle(bus)
    with bus:
        terminate(sender, bus.backend_pid)
        lifecycle.wait_for("disconnected", 1)
        assert not bus.connected and bus.running
        started = time.monotonic()
        bus.subscribe(kept, got, timeout=1)  # recorded at once
        bus.unsubscribe(dropped, got, timeout=1)
        assert time.monotonic() - started < 1
        assert bus.channels == frozenset({kept})
        lifecycle.wait_for("reconnected", 1)
        send(sender, dropped, "not for us")
        send(sender, kept, "for us")
        assert got.wait(1)[0].payload == "for us"
        bus.notify(kept, "round trip")
        assert got.payloads == ["for us", "round trip"]


def test_notify_while_disconnected_waits_for_the_connection(dsn: str, sender: Any) -> None:
    bus = Dispatcher(dsn, backoff_min=0.5, backoff_max=0.5)
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    lifecycle = Lifecycle(bus)
    with bus:
        terminate(sender, bus.backend_pid)
        lifecycle.wait_for("disconnected", 1)
        bus.notify(channel, "held, then sent", timeout=BOUND)
        assert lifecycle.count("reconnected") == 1
        assert got.payloads == ["held, then sent"]


def test_notify_while_disconnected_times_out_clearly_and_is_never_sent(
    dsn: str, sender: Any
) -> None:
    bus = Dispatcher(dsn, backoff_min=1.5, backoff_max=1.5)
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    lifecycle = Lifecycle(bus)
    with bus:
        terminate(sender, bus.backend_pid)
        lifecycle.wait_for("disconnected", 1)
        with pytest.raises(NotConnected, match="not sent"):
            bus.notify(channel, "given up", timeout=0.1)
        assert issubclass(NotConnected, TimeoutError)
        lifecycle.wait_for("reconnected", 1)
        bus.notify(channel, "later")
        assert got.payloads == ["later"]


def test_stop_while_reconnecting_fails_waiting_calls(dsn: str, sender: Any) -> None:
    bus = Dispatcher(dsn, backoff_min=30.0, backoff_max=30.0)
    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)
    terminate(sender, bus.backend_pid)
    lifecycle.wait_for("disconnected", 1)
    outcome: list[BaseException] = []

    def waiting_notify() -> None:
        try:
            bus.notify(unique(), "x")
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=waiting_notify)
    caller.start()
    wait_until(lambda: bool(bus.stats().held), "the notify to be held")
    started = time.monotonic()
    bus.stop(timeout=BOUND)
    assert time.monotonic() - started < 2
    caller.join(BOUND)
    assert len(outcome) == 1 and isinstance(outcome[0], pg.DispatcherStopped)


def test_a_raising_receiver_during_reconnect_does_not_stop_recovery(
    fast_bus: Dispatcher, sender: Any
) -> None:
    channel = unique()
    got = Collector()
    fast_bus.subscribe(channel, got)

    def broken(sender_: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver failure")

    pg.disconnected.connect(broken, sender=fast_bus, weak=False)
    pg.reconnected.connect(broken, sender=fast_bus, weak=False)
    lifecycle = Lifecycle(fast_bus)
    fast_bus.start(timeout=BOUND)
    terminate(sender, fast_bus.backend_pid)
    lifecycle.wait_for("reconnected", 1)
    send(sender, channel, "still delivered")
    assert got.wait(1)[0].payload == "still delivered"


def call_in_a_handler_as_the_session_dies(
    bus: Dispatcher, sender: Any, call: Callable[[], object], *, after_its_end: bool
) -> list[BaseException]:
    """Start ``bus``; in a handler, ``call()`` once its session is terminated (``after_its_end``:
    once the server session has ended too, else racing the loss); return once reconnected.

    :returns: what ``call()`` raised (empty if it returned).
    """
    gate = unique("gate")
    errors: list[BaseException] = []
    proceed, entered = threading.Event(), threading.Event()

    @bus.on(gate)
    def call_when_told(notification: Any) -> None:
        entered.set()
        proceed.wait(BOUND)
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)
    pid = bus.backend_pid
    assert pid is not None
    send(sender, gate)
    assert entered.wait(BOUND)
    terminate(sender, pid)
    if after_its_end:
        wait_until(lambda: session_state(sender, pid) is None, "the session to end")
    proceed.set()
    lifecycle.wait_for("reconnected", 1)
    return errors


def test_a_handler_notifying_when_the_connection_dies_does_not_break_recovery(
    fast_bus: Dispatcher, sender: Any
) -> None:
    channel = unique()
    got = Collector()
    fast_bus.subscribe(channel, got)
    errors = call_in_a_handler_as_the_session_dies(
        fast_bus, sender, lambda: fast_bus.notify(channel, "from handler"), after_its_end=False
    )
    fast_bus.notify(channel, "after")
    # Either the in-place notify made it before the loss was seen, or it failed clearly.
    assert got.payloads[-1] == "after"
    assert all(isinstance(e, (NotConnected, psycopg2.OperationalError)) for e in errors)


@pytest.mark.parametrize("call", ["listen", "subscribe", "unlisten", "unsubscribe"])
def test_a_handler_changing_channels_when_the_connection_died_does_not_end_the_dispatcher(
    fast_bus: Dispatcher, sender: Any, call: str
) -> None:
    """The in-place call finds the session lost: it is recorded, to be made on reconnect, and
    settled once (settled again by the reconnection, it ended the dispatcher thread)."""
    kept, changed = unique(), unique()
    got, got_changed = Collector(), Collector()
    fast_bus.subscribe(kept, got)
    if call in ("unlisten", "unsubscribe"):
        fast_bus.subscribe(changed, got_changed)

    def change_channels() -> None:
        if call == "listen":
            fast_bus.listen(changed, timeout=BOUND)
            fast_bus.signal(changed).connect(got_changed)
        elif call == "subscribe":
            fast_bus.subscribe(changed, got_changed, timeout=BOUND)
        elif call == "unlisten":
            fast_bus.unlisten(changed, timeout=BOUND)
        else:
            fast_bus.unsubscribe(changed, got_changed, timeout=BOUND)

    errors = call_in_a_handler_as_the_session_dies(
        fast_bus, sender, change_channels, after_its_end=True
    )
    assert fast_bus.running and errors == []
    send(sender, changed, "changed")
    send(sender, kept, "kept")
    assert got.wait(1)[0].payload == "kept"
    expected = ["changed"] if call in ("listen", "subscribe") else []
    assert got_changed.payloads == expected


def test_heartbeat_runs_after_silence_and_keeps_the_session(dsn: str, sender: Any) -> None:
    bus = Dispatcher(dsn, heartbeat_interval=0.2, heartbeat_timeout=1.0)
    channel = unique()
    with bus:
        bus.listen(channel)
        pid = bus.backend_pid

        # The heartbeat is the only query this session runs while the test waits.
        def heartbeat_seen() -> bool:
            with sender.cursor() as cur:
                cur.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
                (query,) = cur.fetchone()
            return "pg_listening_channels()" in query

        wait_until(heartbeat_seen, "a heartbeat", interval=0.05)
        assert bus.backend_pid == pid and bus.stats().reconnects == 0


def test_no_reconnect_option_stops_on_loss(dsn: str, sender: Any) -> None:
    bus = Dispatcher(dsn, reconnect=False)
    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)
    terminate(sender, bus.backend_pid)
    lifecycle.wait_for("disconnected", 1)
    wait_until(lambda: not bus.running, "the dispatcher to stop")
    assert not bus.running and lifecycle.count("reconnected") == 0


def test_invalid_options_are_rejected(dsn: str) -> None:
    for bad in [
        {"backoff_min": 0},
        {"backoff_max": -1},
        {"backoff_min": 5, "backoff_max": 1},
        {"heartbeat_interval": 0},
        {"heartbeat_timeout": float("inf")},
    ]:
        with pytest.raises(ValueError):
            Dispatcher(dsn, **bad)
