"""Poolers: a dispatcher behind PgBouncer is never silently deaf.

Each test runs a private PgBouncer (Debian's ``pgbouncer``) in front of a private PostgreSQL
server. In transaction pooling a LISTEN cannot work: ``start()`` must say so, fast; in session
pooling everything works and ``backend_pid`` is the server session's; a pool switched to
transaction mode while running, or shared with a busy neighbour, must be noticed within two
heartbeat intervals and reported until it ends. ``pytest -s`` prints the measured times.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from pgpubsub_dispatch import DeafSession, Dispatcher, PubSubError, deaf, hearing

from .support.dispatching import unique
from .support.notifying import Collector
from .support.pgbouncer import PgBouncer
from .support.servers import PrivateServer
from .support.waiting import BOUND, wait_until

INTERVAL = 2.0
"""The heartbeat interval of these tests' dispatchers (seconds)."""

TIMEOUT = 1.0
"""Their heartbeat timeout, which is also how long a probe waits (at most INTERVAL / 2)."""


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateServer]:
    """One private PostgreSQL server for this module's poolers (and its direct tests)."""
    with PrivateServer(settings={"log_connections": "on"}) as private:
        yield private


def pooler(server: PrivateServer, pool_mode: str, **settings: str) -> PgBouncer:
    """A started PgBouncer in ``pool_mode`` in front of ``server`` (closed by the caller)."""
    bouncer = PgBouncer(
        psycopg2.extensions.parse_dsn(server.dsn), pool_mode=pool_mode, settings=settings
    )
    bouncer.start()
    return bouncer


class Lifecycle:
    """Records a dispatcher's ``deaf`` and ``hearing`` signals, with their times."""

    def __init__(self, bus: Dispatcher) -> None:
        self.deaf: list[tuple[float, BaseException]] = []
        self.hearing: list[float] = []
        self.heard_again = threading.Event()
        self._deaf_count = threading.Condition()
        deaf.connect(self._on_deaf, sender=bus, weak=False)
        hearing.connect(self._on_hearing, sender=bus, weak=False)
        self._bus = bus

    def _on_deaf(self, sender: Any, error: BaseException) -> None:
        with self._deaf_count:
            self.deaf.append((time.monotonic(), error))
            self._deaf_count.notify_all()

    def _on_hearing(self, sender: Any, backend_pid: int) -> None:
        self.hearing.append(time.monotonic())
        self.heard_again.set()

    def wait_deaf(self, count: int) -> float:
        """Wait for the ``count``-th ``deaf`` signal; return its time."""
        with self._deaf_count:
            assert self._deaf_count.wait_for(lambda: len(self.deaf) >= count, BOUND), (
                f"{len(self.deaf)} deaf signals, {count} expected"
            )
            return self.deaf[count - 1][0]

    def close(self) -> None:
        deaf.disconnect(self._on_deaf, sender=self._bus)
        hearing.disconnect(self._on_hearing, sender=self._bus)


def deaf_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("deaf: ")]


def pooler_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "a pooler is in the way" in r.getMessage()]


def test_transaction_pooling_makes_start_raise_deaf_session_fast(server: PrivateServer) -> None:
    with pooler(server, "transaction") as bouncer:
        bus = Dispatcher(bouncer.dsn, heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT)
        bus.listen(unique())
        began = time.monotonic()
        with pytest.raises(DeafSession) as raised:
            bus.start(timeout=BOUND)
        took = time.monotonic() - began
        print(f"\ntransaction pooling: start() raised DeafSession after {took:.2f} s")
        assert isinstance(raised.value, PubSubError) and isinstance(raised.value, RuntimeError)
        assert "pool_mode = session" in str(raised.value)
        assert took < 2 * TIMEOUT + 1.0
        assert not bus.running and not bus.connected


def test_session_pooling_works_and_backend_pid_is_the_server_sessions(
    server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgpubsub_dispatch")
    with pooler(server, "session") as bouncer:
        libpq = psycopg2.connect(bouncer.dsn)
        made_up_pid = libpq.get_backend_pid()
        libpq.close()
        channel, got = unique(), Collector()
        with Dispatcher(bouncer.dsn, heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT) as bus:
            bus.subscribe(channel, got)
            bus.notify(channel, "own")
            direct = psycopg2.connect(server.dsn)
            direct.autocommit = True
            with direct.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, 'from a direct session')", (channel,))
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (bus.backend_pid,)
                )
                assert cur.fetchone() == (1,)  # a real server session
            direct.close()
            assert got.wait(2)
            wait_until(lambda: bus.stats().queue_usage is not None, "a heartbeat", 2 * INTERVAL)
            bus.notify(channel, "after a heartbeat and its probe")
            assert got.wait(3)
            stats = bus.stats()
        own = got.items[0]
        assert own.payload == "own" and own.pid == stats.backend_pid != made_up_pid
        assert got.payloads[1:] == ["from a direct session", "after a heartbeat and its probe"]
        assert stats.pooler and not stats.deaf and stats.reconnects == 0
        assert len(pooler_warnings(caplog)) == 1, pooler_warnings(caplog)
        assert deaf_warnings(caplog) == []


def notice_deafness(
    server: PrivateServer, caplog: pytest.LogCaptureFixture, *, busy_neighbour: bool
) -> None:
    """Start in session pooling, switch the pool to transaction mode (with a neighbour busy on
    it, or not), measure when deafness is noticed, then switch back and see it recover."""
    caplog.set_level(logging.WARNING, logger="pgpubsub_dispatch")
    with pooler(server, "session", default_pool_size="4") as bouncer:
        channel, got = unique(), Collector()
        bus = Dispatcher(bouncer.dsn, heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT)
        bus.subscribe(channel, got)
        lifecycle = Lifecycle(bus)
        stop_neighbour = threading.Event()

        def neighbour() -> None:  # runs transactions on the pool's server connections
            conn = psycopg2.connect(bouncer.dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                while not stop_neighbour.is_set():
                    cur.execute("SELECT pg_sleep(0.02)")
            conn.close()

        thread = threading.Thread(target=neighbour)
        try:
            with bus:
                switched = time.monotonic()
                bouncer.reconfigure(pool_mode="transaction")
                if busy_neighbour:
                    thread.start()
                noticed = lifecycle.wait_deaf(1) - switched
                again = lifecycle.wait_deaf(2) - switched
                assert bus.stats().deaf and bus.running
                bouncer.reconfigure(pool_mode="session")
                back = time.monotonic()
                assert lifecycle.heard_again.wait(BOUND)
                recovered = lifecycle.hearing[0] - back
                stats = bus.stats()
                with psycopg2.connect(server.dsn) as direct, direct.cursor() as cur:
                    cur.execute("SELECT pg_notify(%s, 'heard again')", (channel,))
                direct.close()
                assert got.wait(1)
        finally:
            stop_neighbour.set()
            if thread.is_alive():
                thread.join(BOUND)
            lifecycle.close()
        setup = "a busy neighbour" if busy_neighbour else "alone"
        print(
            f"\ntransaction mode while running ({setup}), heartbeat {INTERVAL:g} s: deaf "
            f"noticed {noticed:.2f} s after the switch, reported again at {again:.2f} s; "
            f"hearing again {recovered:.2f} s after switching back"
        )
        assert noticed <= 2 * INTERVAL
        assert isinstance(lifecycle.deaf[0][1], DeafSession)
        assert len(deaf_warnings(caplog)) >= 2
        assert not stats.deaf and stats.reconnects >= 1
        assert got.payloads == ["heard again"]


def test_a_pool_switched_to_transaction_mode_is_noticed_and_recovers(
    server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    notice_deafness(server, caplog, busy_neighbour=False)


def test_a_neighbour_using_the_listening_server_connection_is_noticed(
    server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    notice_deafness(server, caplog, busy_neighbour=True)


def probe_connections(server: PrivateServer) -> int:
    """Connections the server authorised for the dispatcher's probe so far."""
    return server.log_text().count("application_name=pgpubsub_dispatch probe")


def query_start(server: PrivateServer, pid: int) -> Any:
    with psycopg2.connect(server.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT query_start FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cur.fetchone()
    conn.close()
    return None if row is None else row[0]


def test_a_direct_connection_is_probed_once_at_start(server: PrivateServer) -> None:
    before = probe_connections(server)
    bus = Dispatcher(server.dsn, heartbeat_interval=0.3, heartbeat_timeout=1)
    starts = []
    for _ in range(5):
        began = time.monotonic()
        bus.start(timeout=BOUND)
        starts.append(time.monotonic() - began)
        if len(starts) < 5:
            bus.stop(timeout=BOUND)
    try:
        assert probe_connections(server) - before == 5  # one per start
        pid = bus.backend_pid
        assert pid is not None
        for _ in range(3):  # three heartbeats: no probe on a direct connection
            seen = query_start(server, pid)
            wait_until(lambda s=seen: query_start(server, pid) != s, "a heartbeat", 3.0)
        assert probe_connections(server) - before == 5
        assert not bus.stats().pooler and not bus.stats().deaf
    finally:
        bus.stop(timeout=BOUND)
    bare = []
    for _ in range(5):  # what the probe adds: one connection, one pg_notify
        began = time.monotonic()
        conn = psycopg2.connect(server.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_notify('nobody', '')")
        conn.close()
        bare.append(time.monotonic() - began)
    print(
        f"\ndirect connection: start() takes {statistics.median(starts) * 1000:.1f} ms "
        f"(median of 5) including its probe; the probe's connection and pg_notify alone take "
        f"{statistics.median(bare) * 1000:.1f} ms, so without it start() would take about "
        f"{(statistics.median(starts) - statistics.median(bare)) * 1000:.1f} ms"
    )
    assert statistics.median(starts) < 1.0
