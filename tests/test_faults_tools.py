"""Proof that the fault tools (``tests/support/servers.py``, ``proxy.py``) really break things.

Plain psycopg2 against real, private PostgreSQL servers: no pgpubsub_dispatch code here.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from .support.proxy import TcpProxy
from .support.servers import PrivateServer, embedded_bin_dir, system_bin_dirs
from .support.waiting import BOUND, wait_until

NO_REPLY = 0.5
"""Seconds to watch a connection to show that no reply arrives (a negative needs some wait)."""

Connection = psycopg2.extensions.connection


def connect(dsn: str) -> Connection:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = True
    return conn


def scalar(conn: Connection, sql: str) -> object:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]


def query(dsn: str, sql: str = "SELECT 1") -> object:
    conn = connect(dsn)
    try:
        return scalar(conn, sql)
    finally:
        conn.close()


def execute(dsn: str, sql: str) -> None:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def wait_async(conn: Connection, timeout: float = BOUND) -> None:
    """Drive an async psycopg2 connection until its current operation completes."""
    deadline = time.monotonic() + timeout
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        assert remaining > 0, "async operation did not complete in time"
        if state == psycopg2.extensions.POLL_READ:
            select.select([conn.fileno()], [], [], remaining)
        else:
            select.select([], [conn.fileno()], [], remaining)


def async_connect(dsn: str) -> Connection:
    conn = psycopg2.connect(dsn, async_=True)
    wait_async(conn)
    return conn


def assert_no_reply(conn: Connection, seconds: float = NO_REPLY) -> None:
    """Assert that nothing at all (no data, no FIN, no RST) reaches ``conn`` for ``seconds``."""
    readable, _, _ = select.select([conn.fileno()], [], [], seconds)
    assert readable == [], "the connection received something"
    assert conn.poll() == psycopg2.extensions.POLL_READ  # still waiting for the reply


def backend_pids(dsn: str) -> set[int]:
    """Client backends of the server behind ``dsn``, except the one asking."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


# --------------------------------------------------------------------------------------------
# PrivateServer
# --------------------------------------------------------------------------------------------


def test_server_serves_on_its_port_and_socket(private_server: PrivateServer) -> None:
    assert private_server.running
    assert f"port={private_server.port}" in private_server.dsn
    assert "host=127.0.0.1" in private_server.dsn
    assert query(private_server.dsn, "SELECT current_setting('port')") == str(private_server.port)
    assert query(private_server.dsn, "SELECT current_setting('fsync')") == "off"
    assert query(private_server.dsn, "SELECT current_setting('max_connections')") == "50"
    assert query(private_server.unix_dsn, "SELECT 2") == 2
    assert (private_server.socket_dir / f".s.PGSQL.{private_server.port}").is_socket()


def test_stop_then_start_again_on_the_same_port(private_server: PrivateServer) -> None:
    dsn, port = private_server.dsn, private_server.port
    execute(dsn, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    conn = connect(dsn)

    private_server.stop()
    assert not private_server.running
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")  # fast shutdown disconnected it
    with pytest.raises(psycopg2.OperationalError):
        connect(dsn)
    private_server.stop()  # idempotent

    private_server.start()
    assert private_server.port == port and private_server.dsn == dsn
    assert query(dsn, "SELECT x FROM kept") == 42
    private_server.start()  # no-op when running


def test_restart_keeps_the_port_and_breaks_sessions(private_server: PrivateServer) -> None:
    conn = connect(private_server.dsn)
    old_pid = private_server.pid
    private_server.restart()
    assert private_server.pid != old_pid
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    assert query(private_server.dsn) == 1


def test_kill_is_a_crash_and_start_recovers(private_server: PrivateServer) -> None:
    dsn = private_server.dsn
    execute(dsn, "CREATE TABLE committed (x int); INSERT INTO committed VALUES (7)")
    conn = connect(dsn)
    with conn.cursor() as cur:
        cur.execute("LISTEN some_channel")
    postmaster = private_server.pid
    assert postmaster is not None

    private_server.kill()
    assert not private_server.running
    assert not pid_alive(postmaster)
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")  # its backend is gone too: kill() waited for it
    with pytest.raises(psycopg2.OperationalError):
        connect(dsn)

    private_server.start()
    assert query(dsn, "SELECT x FROM committed") == 7  # committed data survives the crash
    assert "automatic recovery in progress" in private_server.log_text()
    private_server.kill()
    private_server.kill()  # idempotent
    private_server.start()
    assert query(dsn) == 1


def test_close_after_kill_removes_everything() -> None:
    with PrivateServer() as server:
        base_dir = server.base_dir
        postmaster = server.pid
        assert postmaster is not None
        conn = connect(server.dsn)
        server.kill(wait=False)
    assert not base_dir.exists()
    assert not pid_alive(postmaster)
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    with pytest.raises(RuntimeError, match="closed"):
        server.start()
    server.close()  # idempotent


def test_close_stops_a_running_server() -> None:
    server = PrivateServer(settings={"application_name": "'faults'"})
    assert not server.running  # not started until asked
    server.start()
    postmaster = server.pid
    assert postmaster is not None
    assert query(server.dsn, "SELECT current_setting('application_name')") == "faults"
    server.close()
    assert not pid_alive(postmaster)
    assert not server.base_dir.exists()


def test_servers_are_independent() -> None:
    with PrivateServer() as one, PrivateServer() as two:
        assert one.port != two.port
        execute(one.dsn, "CREATE TABLE only_here (x int)")
        one.kill()
        assert query(two.dsn, "SELECT to_regclass('only_here') IS NULL") is True


_BIN_DIRS = [*system_bin_dirs()[:1], *[d for d in [embedded_bin_dir()] if d is not None]]


@pytest.mark.parametrize("bin_dir", _BIN_DIRS, ids=[str(d) for d in _BIN_DIRS])
def test_each_available_installation_works(bin_dir: Path) -> None:
    with PrivateServer(bin_dir=bin_dir) as server:
        version = query(server.dsn, "SHOW server_version")
        server.restart()
        assert query(server.dsn, "SHOW server_version") == version


# --------------------------------------------------------------------------------------------
# TcpProxy
# --------------------------------------------------------------------------------------------


def test_proxy_forwards_and_tracks_connections(
    private_server: PrivateServer, server_proxy: TcpProxy
) -> None:
    dsn = private_server.dsn_at(server_proxy.port)
    conn = connect(dsn)
    assert scalar(conn, "SELECT current_setting('port')") == str(private_server.port)
    assert server_proxy.connection_count == 1
    assert server_proxy.accepted_count == 1
    big = scalar(conn, "SELECT repeat('x', 5000000)")  # more than any buffer on the way
    assert big == "x" * 5_000_000
    conn.close()
    server_proxy.wait_connections(0)
    assert server_proxy.accepted_count == 1


def test_blackhole_silences_existing_connections_only(
    private_server: PrivateServer, server_proxy: TcpProxy
) -> None:
    dsn = private_server.dsn_at(server_proxy.port)
    victim = async_connect(dsn)
    with victim.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        wait_async(victim)
        row = cur.fetchone()
        assert row is not None
        victim_backend = row[0]

    server_proxy.blackhole()

    with victim.cursor() as cur:
        cur.execute("SELECT 1")
        assert_no_reply(victim)
    assert server_proxy.connection_count == 1  # still open: half-open, not closed
    # The server never saw the query either: its backend sits idle, alive.
    assert victim_backend in backend_pids(private_server.dsn)

    fresh = connect(dsn)  # new connections go through normally
    assert scalar(fresh, "SELECT 2") == 2
    assert server_proxy.connection_count == 2
    fresh.close()
    server_proxy.wait_connections(1)
    assert_no_reply(victim, 0.0)
    victim.close()


def test_reset_all_breaks_existing_connections(
    private_server: PrivateServer, server_proxy: TcpProxy
) -> None:
    dsn = private_server.dsn_at(server_proxy.port)
    plain = connect(dsn)
    waiting = async_connect(dsn)
    backends = backend_pids(private_server.dsn)
    assert len(backends) == 2
    server_proxy.blackhole()  # reset_all also ends half-open connections
    with waiting.cursor() as cur:
        cur.execute("SELECT 1")
        assert_no_reply(waiting)

        server_proxy.reset_all()

        assert server_proxy.connection_count == 0
        readable, _, _ = select.select([waiting.fileno()], [], [], BOUND)
        assert readable
        with pytest.raises(psycopg2.OperationalError):
            wait_async(waiting)
    with pytest.raises(psycopg2.OperationalError):
        scalar(plain, "SELECT 1")
    # The server side got a RST too: both backends exit.
    wait_until(lambda: not (backend_pids(private_server.dsn) & backends), "backends to exit")
    assert query(dsn) == 1  # and the proxy still forwards new connections


def test_pause_new_holds_then_releases(
    private_server: PrivateServer, server_proxy: TcpProxy
) -> None:
    dsn = private_server.dsn_at(server_proxy.port)
    existing = connect(dsn)
    server_proxy.pause_new()
    held = psycopg2.connect(dsn, async_=True)
    deadline = time.monotonic() + NO_REPLY
    while (remaining := deadline - time.monotonic()) > 0:
        state = held.poll()  # the TCP connect completes (backlog); the startup goes unanswered
        assert state != psycopg2.extensions.POLL_OK
        if state == psycopg2.extensions.POLL_READ:
            select.select([held.fileno()], [], [], remaining)
        else:
            select.select([], [held.fileno()], [], remaining)
    assert server_proxy.accepted_count == 1
    assert scalar(existing, "SELECT 1") == 1  # existing connections are unaffected

    server_proxy.pause_new(False)
    wait_async(held)
    assert server_proxy.accepted_count == 2
    held.close()
    existing.close()


def test_pause_new_refuse_resets_new_connections(
    private_server: PrivateServer, server_proxy: TcpProxy
) -> None:
    dsn = private_server.dsn_at(server_proxy.port)
    existing = connect(dsn)
    server_proxy.pause_new(refuse=True)
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        connect(dsn)
    assert time.monotonic() - started < 2  # refused at once, not timed out
    assert scalar(existing, "SELECT 1") == 1
    server_proxy.pause_new(False)
    assert query(dsn) == 1


def test_proxy_follows_the_server_down_and_up(
    private_server: PrivateServer, server_proxy: TcpProxy
) -> None:
    dsn = private_server.dsn_at(server_proxy.port)
    existing = connect(dsn)
    private_server.stop()
    with pytest.raises(psycopg2.OperationalError):
        scalar(existing, "SELECT 1")  # the server's FIN went through
    server_proxy.wait_connections(0)  # and the client's own close too
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        connect(dsn)  # the proxy cannot reach the target: the client is reset at once
    assert time.monotonic() - started < 2
    server_proxy.wait_connections(0)
    private_server.start()
    assert query(dsn) == 1


def is_reset_at_once(address: tuple[str, int]) -> bool:
    """Connect to ``address``; whether the connection is closed at once without any byte.

    The RST may even beat Python's own check of the connect, hence two places to catch it.
    """
    try:
        sock = socket.create_connection(address, timeout=BOUND)
    except ConnectionResetError:
        return True
    with sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def test_proxy_is_bounded() -> None:
    target = socket.create_server(("127.0.0.1", 0))  # accepts in the kernel, never answers
    with target, TcpProxy(target.getsockname()[:2], max_connections=1) as proxy:
        first = socket.create_connection(proxy.address, timeout=BOUND)
        proxy.wait_connections(1)
        assert is_reset_at_once(proxy.address)
        assert proxy.connection_count == 1
        first.close()


def test_close_ends_the_thread_within_a_second(private_server: PrivateServer) -> None:
    proxy = TcpProxy(("127.0.0.1", private_server.port))
    dsn = private_server.dsn_at(proxy.port)
    half_open = async_connect(dsn)
    normal = connect(dsn)
    proxy.blackhole()
    before = {t.name for t in threading.enumerate()}
    assert f"faults-TcpProxy-{proxy.port}" in before

    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 1.0
    assert f"faults-TcpProxy-{proxy.port}" not in {t.name for t in threading.enumerate()}
    proxy.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        proxy.blackhole()
    with pytest.raises(psycopg2.OperationalError):
        scalar(normal, "SELECT 1")
    half_open.close()
    with pytest.raises(OSError):
        socket.create_connection(proxy.address, timeout=BOUND).close()
