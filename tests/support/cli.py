"""Helpers shared by the command-line tests (``tests/test_cli_*.py``).

The command runs end to end as a subprocess against the real server; every subprocess call and
every read is bounded. A running ``listen`` is read by threads feeding queues, so a test waits
for its ``listening on`` line (and for each output line) with a bounded wait, never a sleep.

Fixtures (a plugin loaded by ``conftest.py``): ``listen``, ``receiver``, ``terminal``,
``silent_server``.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, NamedTuple

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from pgpubsub_dispatch import cli

from .notifying import send
from .waiting import BOUND

__all__ = [
    "LIBPQ_VARIABLES",
    "MODULE",
    "PREFIX",
    "RECEIVED_AT",
    "ROOT",
    "SCRIPT",
    "UNREACHABLE",
    "Conn",
    "FakeNotification",
    "Listen",
    "Receiver",
    "Terminal",
    "assert_received_at_is_now",
    "environment",
    "error_line",
    "libpq_environment",
    "listen_fixture",
    "notify_stdin",
    "payloads_until_end",
    "receiver_fixture",
    "run",
    "silent_server_fixture",
    "terminal_fixture",
    "unique",
    "wait_until_blocked",
]

ROOT = Path(__file__).resolve().parents[2]
MODULE = [sys.executable, "-m", "pgpubsub_dispatch"]
SCRIPT = Path(sys.executable).with_name("pgpubsub-dispatch")
UNREACHABLE = "host=127.0.0.1 port=1 connect_timeout=2"
PREFIX = "pgpubsub-dispatch: error: "
LIBPQ_VARIABLES = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "dbname": "PGDATABASE",
    "password": "PGPASSWORD",
    "sslmode": "PGSSLMODE",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "passfile": "PGPASSFILE",
}

Conn = psycopg2.extensions.connection


def unique(prefix: str = "cli") -> str:
    """A channel name no other test (or test run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def environment(**changes: str | None) -> dict[str, str]:
    """This process's environment without ``DATABASE_URL``, plus ``changes`` (``None`` unsets).

    ``PYTHONPATH`` leads to this checkout, so ``-m`` and the console script import the code
    under test whatever the current directory.
    """
    env = {k: v for k, v in os.environ.items() if k != cli.DSN_ENVIRON}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] = MODULE,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (bounded), capturing UTF-8 text."""
    return subprocess.run(
        [*command, *args],
        input=input,
        capture_output=True,
        encoding="utf-8",
        env=environment() if env is None else dict(env),
        timeout=3 * BOUND,
        cwd=ROOT,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Assert ``result`` failed with exit 2 and exactly one error line, and return that line."""
    assert result.returncode == cli.EXIT_ERROR, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX), lines[0]
    assert result.stdout == ""
    return lines[0]


class Listen:
    """A running ``pgpubsub-dispatch listen``; every read is bounded."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, stdout: int | None = None
    ) -> None:
        """Start it; ``stdout`` is a file descriptor to write to instead of a pipe we read."""
        self.proc = subprocess.Popen(
            [*MODULE, "listen", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            env=environment() if env is None else dict(env),
            cwd=ROOT,
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.err_lines: list[str] = []
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=_pump, args=(self.proc.stderr, self.stderr), daemon=True)
        ]
        if self.proc.stdout is not None:
            self._readers.append(
                threading.Thread(target=_pump, args=(self.proc.stdout, self.stdout), daemon=True)
            )
        for reader in self._readers:
            reader.start()

    def wait_listening(self) -> str:
        """Wait for the ``listening on`` line on stderr and return it."""
        deadline = time.monotonic() + BOUND
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no 'listening on' line; stderr so far: {self.err_lines}"
            try:
                line = self.stderr.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"stderr closed before 'listening on': {self.err_lines}"
            self.err_lines.append(line)
            if line.startswith("listening on "):
                return line

    def next_line(self) -> str:
        """The next line of stdout; fails the test after ``BOUND`` seconds."""
        try:
            line = self.stdout.get(timeout=BOUND)
        except queue.Empty:
            pytest.fail(f"no notification printed within {BOUND}s; stderr: {self.err_lines}")
        assert line is not None, f"stdout closed; stderr: {self.err_lines}"
        return line

    def next_json(self) -> dict[str, Any]:
        """The next line of stdout, parsed; fails the test after ``BOUND`` seconds."""
        decoded: dict[str, Any] = json.loads(self.next_line())
        return decoded

    def finish(self, timeout: float = BOUND) -> int:
        """Wait for the exit (bounded) and the readers; return the exit code."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(BOUND)
        while True:
            try:
                line = self.stderr.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.err_lines.append(line)
        return code

    def rest_of_stdout(self) -> list[str]:
        """The stdout lines not read yet (call after :meth:`finish`)."""
        lines: list[str] = []
        while True:
            try:
                line = self.stdout.get_nowait()
            except queue.Empty:
                return lines
            if line is not None:
                lines.append(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=BOUND)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line[:-1] if line.endswith("\n") else line)
    lines.put(None)


@pytest.fixture(name="listen")
def listen_fixture(dsn: str) -> Iterator[Any]:
    """Start ``listen`` with ``--dsn`` the test server; killed at teardown if still running."""
    started: list[Listen] = []

    def start(
        *args: str,
        env: Mapping[str, str] | None = None,
        with_dsn: bool = True,
        stdout: int | None = None,
    ) -> Listen:
        process = Listen([*(["--dsn", dsn] if with_dsn else []), *args], env, stdout)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


class Receiver:
    """A plain psycopg2 session that LISTENs, to check what ``notify`` sent."""

    def __init__(self, dsn: str) -> None:
        self.conn: Conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def listen(self, channel: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def next(self) -> psycopg2.extensions.Notify:
        deadline = time.monotonic() + BOUND
        while not self.conn.notifies:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no notification within {BOUND}s"
            select.select([self.conn], [], [], remaining)
            self.conn.poll()
        return self.conn.notifies.pop(0)


@pytest.fixture(name="receiver")
def receiver_fixture(dsn: str) -> Iterator[Receiver]:
    receiving = Receiver(dsn)
    yield receiving
    receiving.conn.close()


def libpq_environment(dsn: str) -> dict[str, str]:
    """An environment where libpq alone finds the server of ``dsn`` (no ``--dsn``, no URL)."""
    env = environment()
    for parameter, value in psycopg2.extensions.parse_dsn(dsn).items():
        assert parameter in LIBPQ_VARIABLES, f"add {parameter} to LIBPQ_VARIABLES"
        env[LIBPQ_VARIABLES[parameter]] = value
    return env


def assert_received_at_is_now(text: str) -> None:
    received_at = datetime.fromisoformat(text)
    assert received_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - received_at) < timedelta(seconds=BOUND)


class Terminal:
    """A pseudo-terminal: a process writes to :attr:`slave`; its lines are read from the master."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:  # the terminal turns "\n" into "\r\n"
                self.lines.put(line.decode("utf-8").removesuffix("\r"))
        self.lines.put(None)

    def next_line(self) -> str:
        try:
            line = self.lines.get(timeout=BOUND)
        except queue.Empty:
            pytest.fail(f"nothing written to the terminal within {BOUND}s")
        assert line is not None, "the terminal was closed"
        return line


@pytest.fixture(name="terminal")
def terminal_fixture() -> Iterator[Terminal]:
    opened = Terminal()
    yield opened
    os.close(opened.master)


@pytest.fixture(name="silent_server")
def silent_server_fixture() -> Iterator[socket.socket]:
    """A TCP port that accepts connections and never answers: libpq waits there forever."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(BOUND)
        yield server


def notify_stdin(dsn: str, channel: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run ``notify CHANNEL -`` with ``data`` as standard input (bytes: no newline translation)."""
    return subprocess.run(
        [*MODULE, "notify", "--dsn", dsn, channel, "-"],
        input=data,
        capture_output=True,
        env=environment(),
        cwd=ROOT,
        timeout=3 * BOUND,
        check=False,
    )


def payloads_until_end(receiver: Receiver, sender: Conn, channel: str) -> list[str]:
    """Every payload received on ``channel`` before an ``END`` marker sent now from ``sender``.

    The CLI has exited, so all it sent has committed and arrives before the marker: what comes
    before it is exactly what the CLI sent.
    """
    send(sender, channel, "END")
    payloads = []
    while (payload := receiver.next().payload) != "END":
        payloads.append(payload)
    return payloads


class FakeNotification(NamedTuple):
    """What the formatting functions read of a notification."""

    channel: str
    payload: str
    pid: int


RECEIVED_AT = datetime(2024, 5, 1, 12, 0, 1, 250000, tzinfo=timezone.utc)


def wait_until_blocked(pid: int, timeout: float = BOUND) -> None:
    """Wait until the main thread of process ``pid`` sleeps on a futex (a lock, an event).

    Read from ``/proc/PID/task/PID/stat`` and ``wchan``: that is where a Python thread waiting in
    ``Future.result()`` or ``Lock.acquire()`` sits. Polls until then; fails after ``timeout``.
    """
    task = Path(f"/proc/{pid}/task/{pid}")
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            state = (task / "stat").read_text().rsplit(") ", 1)[1][:1]
            wchan = (task / "wchan").read_text()
        except OSError as exc:
            pytest.fail(f"process {pid} is gone: {exc}")
        seen = f"state {state}, wchan {wchan!r}"
        if state == "S" and ("futex" in wchan or wchan == "0"):
            return
        time.sleep(0.005)  # a poll of the process's public state, not a synchronisation
    pytest.fail(f"the main thread of {pid} did not block within {timeout}s ({seen})")
