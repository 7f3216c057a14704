"""Real faults on servers and networks the test owns: down, crashed, half-open, failed over.

Each test measures what it proves (detection and recovery times) and prints it, so that
``pytest -s -k faults`` shows the figures quoted in the README's Reliability section.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher

from .support.dispatching import Lifecycle
from .support.notifying import Collector, send
from .support.proxy import TcpProxy
from .support.servers import PrivateServer
from .support.waiting import BOUND


def unique(prefix: str = "f") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def connect(dsn: str) -> Any:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = True
    return conn


def assert_delivered(dsn: str, channel: str, payload: str, got: Collector) -> None:
    """Send ``payload`` from a session of ``dsn`` and check that ``got`` receives it."""
    sender = connect(dsn)
    try:
        send(sender, channel, payload)
        assert got.wait(1)[0].payload == payload
    finally:
        sender.close()


@pytest.fixture
def stopped_after() -> Iterator[list[Dispatcher]]:
    """Dispatchers registered here are stopped after the test, whatever happened."""
    buses: list[Dispatcher] = []
    yield buses
    for bus in buses:
        bus.stop(timeout=BOUND)


def test_server_down_for_ten_seconds(private_server: PrivateServer, stopped_after: Any) -> None:
    backoff_max = 2.0
    bus = Dispatcher(private_server.dsn, backoff_min=0.1, backoff_max=backoff_max)
    stopped_after.append(bus)
    channel = unique("Down")
    got = Collector()
    bus.subscribe(channel, got)
    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)

    private_server.stop()
    lifecycle.wait_for("disconnected", 1)
    cpu_before = time.process_time()
    threading.Event().wait(10.0)  # the outage itself
    cpu_while_down = time.process_time() - cpu_before
    private_server.start()
    back = time.monotonic()
    lifecycle.wait_for("reconnected", 1, timeout=backoff_max + 5)
    recovery = time.monotonic() - back
    print(
        f"\nserver down 10 s: recovered {recovery:.2f} s after it returned; "
        f"process CPU while down {cpu_while_down:.3f} s"
    )
    assert recovery <= backoff_max + 1
    assert cpu_while_down < 0.5  # no busy loop: a few attempts, each a connect() call
    assert_delivered(private_server.dsn, channel, "after the outage", got)
    assert bus.stats().reconnects == 1


def test_server_crash_and_restart(private_server: PrivateServer, stopped_after: Any) -> None:
    bus = Dispatcher(private_server.dsn, backoff_min=0.05, backoff_max=0.5)
    stopped_after.append(bus)
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)
    private_server.kill()
    lifecycle.wait_for("disconnected", 1)
    private_server.start()
    lifecycle.wait_for("reconnected", 1)
    assert_delivered(private_server.dsn, channel, "after the crash", got)


def test_half_open_connection_is_detected_by_the_heartbeat(
    private_server: PrivateServer, server_proxy: TcpProxy, stopped_after: Any
) -> None:
    interval, timeout = 1.0, 1.0
    bus = Dispatcher(
        private_server.dsn_at(server_proxy.port),
        heartbeat_interval=interval,
        heartbeat_timeout=timeout,
        backoff_min=0.05,
        backoff_max=0.5,
    )
    stopped_after.append(bus)
    channel = unique()
    got = Collector()
    bus.subscribe(channel, got)
    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)
    old_pid = bus.backend_pid

    server_proxy.blackhole()
    dropped = time.monotonic()
    lifecycle.wait_for("disconnected", 1, timeout=interval + timeout + 5)
    detection = time.monotonic() - dropped
    lifecycle.wait_for("reconnected", 1)
    recovery = time.monotonic() - dropped
    print(f"\nhalf-open: detected in {detection:.2f} s, listening again after {recovery:.2f} s")
    assert detection <= interval + timeout + 0.5
    assert bus.backend_pid != old_pid
    error = lifecycle.wait_for("disconnected", 1)["error"]
    assert isinstance(error, psycopg2.OperationalError) and "no answer" in str(error)

    assert_delivered(private_server.dsn, channel, "after the half-open connection", got)


def test_half_open_while_a_notify_is_in_flight(
    private_server: PrivateServer, server_proxy: TcpProxy, stopped_after: Any
) -> None:
    bus = Dispatcher(
        private_server.dsn_at(server_proxy.port),
        heartbeat_interval=0.5,
        heartbeat_timeout=0.5,
        backoff_min=0.05,
        backoff_max=0.5,
    )
    stopped_after.append(bus)
    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)
    server_proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        # Unknown outcome: the caller is told the connection died under its notify.
        bus.notify(unique(), "into the void", timeout=BOUND)
    assert time.monotonic() - started < 0.5 + 0.5 + 1
    lifecycle.wait_for("reconnected", 1)
    bus.notify(unique(), "works again", timeout=BOUND)


def test_stop_returns_within_its_timeout_while_the_server_is_unreachable(
    private_server: PrivateServer,
) -> None:
    bus = Dispatcher(private_server.dsn, backoff_min=0.05, backoff_max=0.2)
    lifecycle = Lifecycle(bus)
    bus.start(timeout=BOUND)
    private_server.stop()
    lifecycle.wait_for("disconnected", 1)
    caller_error: list[BaseException] = []

    def waiting() -> None:
        try:
            bus.notify("x", "y")
        except BaseException as exc:
            caller_error.append(exc)

    caller = threading.Thread(target=waiting)
    caller.start()
    started = time.monotonic()
    bus.stop(timeout=2)
    assert time.monotonic() - started < 2
    assert not bus.running
    caller.join(BOUND)
    assert len(caller_error) == 1 and isinstance(caller_error[0], pg.DispatcherStopped)


def test_failover_to_the_next_host(stopped_after: Any) -> None:
    with PrivateServer() as first, PrivateServer() as second:
        dsn = (
            f"host=127.0.0.1,127.0.0.1 port={first.port},{second.port} dbname=postgres "
            "user=postgres target_session_attrs=read-write connect_timeout=5"
        )
        bus = Dispatcher(dsn, backoff_min=0.05, backoff_max=0.5)
        stopped_after.append(bus)
        channels = [unique("Fail Over"), unique("fo")]
        got = Collector()
        for channel in channels:
            bus.subscribe(channel, got)
        lifecycle = Lifecycle(bus)
        bus.start(timeout=BOUND)
        first_pid = bus.backend_pid

        first.stop()
        stopped = time.monotonic()
        info = lifecycle.wait_for("reconnected", 1)
        print(
            f"\nfailover: listening on the second server {time.monotonic() - stopped:.2f} s "
            "after the first stopped"
        )
        assert info["backend_pid"] == bus.backend_pid != first_pid
        sender = connect(second.dsn)
        try:
            with sender.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE pid = %s", (bus.backend_pid,))
                assert cur.fetchone() == (bus.backend_pid,)  # the session is on the second
            for channel in channels:
                send(sender, channel, "on the second server")
            assert {n.channel for n in got.wait(2)} == set(channels)
        finally:
            sender.close()


def test_two_hundred_start_listen_stop_cycles_under_traffic(dsn: str) -> None:
    channel = unique()
    stop_sending = threading.Event()
    send_errors: list[BaseException] = []

    def keep_sending() -> None:
        conn = connect(dsn)
        try:
            while not stop_sending.is_set():
                send(conn, channel, "traffic")
        except BaseException as exc:  # pragma: no cover - reported below
            send_errors.append(exc)
        finally:
            conn.close()

    sender = threading.Thread(target=keep_sending)
    sender.start()
    slowest_stop = 0.0
    try:
        bus = Dispatcher(dsn)
        got = Collector()
        for _ in range(200):
            bus.start(timeout=BOUND)
            bus.subscribe(channel, got)
            started = time.monotonic()
            bus.stop(timeout=BOUND)
            slowest_stop = max(slowest_stop, time.monotonic() - started)
            assert not bus.running
            bus.unsubscribe(channel, got)
    finally:
        stop_sending.set()
        sender.join(BOUND)
    print(f"\n200 cycles: slowest stop {slowest_stop * 1000:.1f} ms")
    assert send_errors == []
    assert slowest_stop < 2.0


def test_failover_past_a_host_that_never_answers(stopped_after: Any) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent, PrivateServer() as server:
        silent_port = silent.getsockname()[1]  # accepts connections, never says a word
        dsn = (
            f"host=127.0.0.1,127.0.0.1 port={silent_port},{server.port} dbname=postgres "
            "user=postgres connect_timeout=2"
        )
        bus = Dispatcher(dsn, backoff_min=0.05, backoff_max=0.2)
        stopped_after.append(bus)
        channel = unique()
        got = Collector()
        bus.subscribe(channel, got)
        started = time.monotonic()
        bus.start()
        took = time.monotonic() - started
        print(f"\nfailover past a silent host: connected in {took:.2f} s (connect_timeout=2)")
        assert 1.5 < took < 4
        assert_delivered(server.dsn, channel, "via the second host", got)


def _keepalive_timer_seconds(bus: Dispatcher, sender: Any, patience: float = 5.0) -> float | None:
    """Seconds left on the keepalive timer of the dispatcher's TCP socket (``None``: off).

    The server tells the client's port of the session; the kernel's /proc/net/tcp tells the
    timer of the socket with that local port (timer 2 is the keepalive timer). Right after
    traffic (the dispatcher's probe, say) the socket may show another timer for a moment, so
    it is read again for up to ``patience`` seconds before concluding there is none.
    """
    with sender.cursor() as cur:
        cur.execute("SELECT client_port FROM pg_stat_activity WHERE pid = %s", (bus.backend_pid,))
        (port,) = cur.fetchone()
    assert port is not None and port > 0, "these tests need a TCP server"
    deadline = time.monotonic() + patience
    while True:
        timer, when = _socket_timer(port)
        if timer == "02":
            return int(when, 16) / os.sysconf("SC_CLK_TCK")
        if time.monotonic() >= deadline:
            return None
        threading.Event().wait(0.05)  # a bounded poll of the kernel's table


def _socket_timer(port: int) -> tuple[str, str]:
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as table:
            for line in list(table)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    timer, when = fields[5].split(":")
                    return timer, when
    raise AssertionError(f"no socket with local port {port}")


def test_keepalives_are_on_by_default_and_user_values_win(private_server: PrivateServer) -> None:
    dsn, sender = private_server.dsn, connect(private_server.dsn)  # TCP: keepalives apply
    with Dispatcher(dsn) as bus:
        default = _keepalive_timer_seconds(bus, sender)
        assert default is not None and 0 < default <= 10  # keepalives_idle=10 by default
    with Dispatcher(dsn, keepalives_idle=99) as mine:
        own = _keepalive_timer_seconds(mine, sender)
        assert own is not None and 10 < own <= 99
    with Dispatcher(dsn, keepalives=0) as off:
        assert _keepalive_timer_seconds(off, sender) is None
