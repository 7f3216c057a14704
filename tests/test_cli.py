"""The ``pgpubsub-dispatch`` command line, run end to end as a subprocess against a real server.

Every subprocess call has a timeout; a running ``listen`` is read by threads feeding queues, so
a test waits for its ``listening on`` line (and for each output line) with a bounded wait, never
a sleep. Notifications are sent from the ``sender`` fixture's connection, or received on a plain
psycopg2 connection that LISTENs.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import unicodedata
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

from .conftest import BOUND, send

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def listen(dsn: str) -> Iterator[Any]:
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


@pytest.fixture
def receiver(dsn: str) -> Iterator[Receiver]:
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


# --------------------------------------------------------------------------------------------
# listen


def test_listen_prints_exact_json_for_each_notification(listen: Any, sender: Conn) -> None:
    tag = uuid.uuid4().hex[:8]
    channels = [f"MyChan {tag}", f'say "hi" it\'s {tag}', f"émoji 🎉 {tag}", f"-dash{tag}"]
    listener = listen("--", *channels)
    assert listener.wait_listening() == "listening on " + ", ".join(
        json.dumps(channel, ensure_ascii=False) for channel in channels
    )

    send(sender, channels[0].lower(), "folded: must not arrive")  # case-sensitive channels
    for number, channel in enumerate(channels):
        send(sender, channel, f"payload {number}: ünïcode 🎉\nline two")

    for number, channel in enumerate(channels):
        printed = listener.next_json()
        assert set(printed) == {"channel", "payload", "pid", "received_at"}
        assert printed["channel"] == channel
        assert printed["payload"] == f"payload {number}: ünïcode 🎉\nline two"
        assert printed["pid"] == sender.get_backend_pid()
        assert_received_at_is_now(printed["received_at"])


def test_listen_prints_raw_utf8_whatever_the_output_encoding(listen: Any, sender: Conn) -> None:
    channel = f"ça 🎉 {uuid.uuid4().hex[:8]}"
    listener = listen(channel, env=environment(PYTHONIOENCODING="ascii"))
    listener.wait_listening()
    send(sender, channel, "€")

    assert listener.next_json()["payload"] == "€"
    assert listener.proc.send_signal(signal.SIGINT) is None
    assert listener.finish() == 0


def test_listen_to_several_channels_prints_in_arrival_order(listen: Any, sender: Conn) -> None:
    first, second, third = unique("a"), unique("b"), unique("c")
    listener = listen(first, second, third, second)  # a repeated channel is listened to once
    listener.wait_listening()

    for channel in (second, first, third, second):
        send(sender, channel, channel)

    assert [listener.next_json()["channel"] for _ in range(4)] == [second, first, third, second]


def test_listen_count_exits_zero_after_n_notifications(listen: Any, sender: Conn) -> None:
    channel = unique()
    listener = listen(channel, "--count", "2")
    listener.wait_listening()

    for number in range(3):
        send(sender, channel, str(number))

    assert listener.finish() == cli.EXIT_OK
    assert [json.loads(line)["payload"] for line in listener.rest_of_stdout()] == ["0", "1"]
    assert listener.err_lines == [f'listening on "{channel}"']


def test_listen_timeout_without_count_exits_zero(listen: Any) -> None:
    listener = listen(unique(), "--timeout", "0.5")
    listener.wait_listening()
    began = time.monotonic()

    assert listener.finish() == cli.EXIT_OK
    assert time.monotonic() - began < BOUND
    assert listener.rest_of_stdout() == []


def test_listen_timeout_before_count_exits_one(listen: Any, sender: Conn) -> None:
    channel = unique()
    listener = listen(channel, "--count", "2", "--timeout", "2")
    listener.wait_listening()
    send(sender, channel, "only one")

    assert listener.finish() == cli.EXIT_INCOMPLETE
    assert [json.loads(line)["payload"] for line in listener.rest_of_stdout()] == ["only one"]
    assert "Traceback" not in "\n".join(listener.err_lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_listen_exits_zero_quietly_on_signal(
    listen: Any, sender: Conn, signum: signal.Signals
) -> None:
    channel = unique()
    listener = listen(channel)
    listener.wait_listening()
    send(sender, channel, "before the signal")
    assert listener.next_json()["payload"] == "before the signal"

    listener.proc.send_signal(signum)

    assert listener.finish() == cli.EXIT_OK
    assert listener.err_lines == [f'listening on "{channel}"']  # no traceback, no noise


def test_listen_survives_a_lost_connection_and_listens_again(listen: Any, sender: Conn) -> None:
    channel = unique()
    listener = listen(channel)
    listener.wait_listening()
    with sender.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
            (str(sql.SQL("LISTEN {}").format(sql.Identifier(channel)).as_string(sender)),),
        )
        assert cur.fetchall() == [(True,)]
    again = listener.wait_listening()
    assert again.startswith(f'listening on "{channel}" again (reconnected')
    assert any(line.startswith(PREFIX.replace("error", "warning")) for line in listener.err_lines)
    send(sender, channel, "after the reconnect")
    assert listener.next_json()["payload"] == "after the reconnect"
    listener.proc.send_signal(signal.SIGINT)
    assert listener.finish() == cli.EXIT_OK


# --------------------------------------------------------------------------------------------
# listen: JSON lines when piped, readable lines on a terminal


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


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    opened = Terminal()
    yield opened
    os.close(opened.master)


JSON_PAYLOADS = [
    ('{"id": 1, "tags": ["new"]}', {"id": 1, "tags": ["new"]}),
    ("42", 42),
    ('"a string"', "a string"),
    ("null", None),
]
NOT_JSON_PAYLOADS = ["plain text", "", "{oops", "NaN", "Infinity", "1e999"]


def test_listen_json_adds_the_parsed_value_when_the_payload_is_json(
    listen: Any, sender: Conn
) -> None:
    channel = unique()
    listener = listen(channel, "--json")
    listener.wait_listening()
    for payload in [*(payload for payload, _ in JSON_PAYLOADS), *NOT_JSON_PAYLOADS]:
        send(sender, channel, payload)

    for payload, value in JSON_PAYLOADS:
        printed = listener.next_json()
        assert printed["payload"] == payload  # always the raw text
        assert "json" in printed and printed["json"] == value
    for payload in NOT_JSON_PAYLOADS:
        printed = listener.next_json()
        assert printed["payload"] == payload
        assert "json" not in printed


def test_listen_pretty_prints_one_readable_line_per_notification(listen: Any, sender: Conn) -> None:
    channel = f"pretty {uuid.uuid4().hex[:8]}"  # a blank in the name: shown quoted
    listener = listen(channel, "--pretty")  # forced, though stdout is a pipe here
    listener.wait_listening()
    sent_and_shown = [
        ('{"id":1,"status":"new"}', '{"id": 1, "status": "new"}'),
        ("hello world", "hello world"),
        ("two\nlines", '"two\\nlines"'),
        ("\x1b[2J cleared?", '"\\u001b[2J cleared?"'),
        ("", '""'),
    ]
    for payload, _ in sent_and_shown:
        send(sender, channel, payload)

    pid = sender.get_backend_pid()
    for _, shown in sent_and_shown:
        line = listener.next_line()
        assert re.fullmatch(r"\d\d:\d\d:\d\d ", line[:9]), line
        assert line[9:] == f'"{channel}" [pid {pid}] {shown}'


@pytest.mark.parametrize(("flags", "form"), [([], "pretty"), (["--json"], "json")])
def test_listen_on_a_terminal_prints_readable_lines_unless_asked_for_json(
    listen: Any, sender: Conn, terminal: Terminal, flags: list[str], form: str
) -> None:
    channel = unique()
    listener = listen(channel, *flags, stdout=terminal.slave)
    os.close(terminal.slave)
    listener.wait_listening()

    send(sender, channel, '{"id": 7}')

    line = terminal.next_line()
    if form == "pretty":
        pid = sender.get_backend_pid()
        assert re.fullmatch(rf'\d\d:\d\d:\d\d {channel} \[pid {pid}\] {{"id": 7}}', line), line
    else:
        assert json.loads(line)["json"] == {"id": 7}
    listener.proc.send_signal(signal.SIGINT)
    assert listener.finish() == cli.EXIT_OK


def test_listen_json_and_pretty_exclude_each_other() -> None:
    result = run("listen", "x", "--json", "--pretty", "--dsn", UNREACHABLE)
    assert result.returncode == cli.EXIT_ERROR
    assert "not allowed with argument" in result.stderr


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A TCP port that accepts connections and never answers: libpq waits there forever."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(BOUND)
        yield server


@pytest.mark.parametrize(
    ("command", "signum", "code"),
    [
        ("listen", signal.SIGINT, cli.EXIT_OK),
        ("listen", signal.SIGTERM, cli.EXIT_OK),
        ("notify", signal.SIGINT, 128 + signal.SIGINT),
        ("notify", signal.SIGTERM, 128 + signal.SIGTERM),
    ],
)
def test_signal_while_connecting_exits_at_once(
    silent_server: socket.socket, command: str, signum: signal.Signals, code: int
) -> None:
    port = silent_server.getsockname()[1]
    with subprocess.Popen(
        [*MODULE, command, "--dsn", f"host=127.0.0.1 port={port} sslmode=disable", unique()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        env=environment(),
        cwd=ROOT,
    ) as proc:
        connection, _ = silent_server.accept()  # the CLI is now inside libpq's connect
        with connection:
            # Not a wait for readiness: let the main thread settle in start()'s blocking wait,
            # where only a stop request can end the connection attempt.
            time.sleep(0.5)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=BOUND)
    assert (proc.returncode, out, err) == (code, "", "")


def test_listen_stops_at_a_closed_output_without_traceback(listen: Any, sender: Conn) -> None:
    channel = unique()
    read_end, write_end = os.pipe()
    listener = listen(channel, stdout=write_end)
    os.close(write_end)
    listener.wait_listening()
    os.close(read_end)  # the reader goes away, as with `| head -n 0`

    send(sender, channel, "nobody reads this")

    assert listener.finish() == cli.EXIT_OK
    assert listener.err_lines == [f'listening on "{channel}"']


# --------------------------------------------------------------------------------------------
# notify


def test_notify_sends_one_notification(dsn: str, receiver: Receiver) -> None:
    channel = f"Notify Me 🎉 {uuid.uuid4().hex[:8]}"
    receiver.listen(channel)

    result = run("notify", "--dsn", dsn, channel, "hello, wörld")

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    received = receiver.next()
    assert (received.channel, received.payload) == (channel, "hello, wörld")
    assert received.pid != receiver.conn.get_backend_pid()


def test_notify_through_the_console_script_defaults_to_empty_payload(
    dsn: str, receiver: Receiver
) -> None:
    channel = unique()
    receiver.listen(channel)

    result = run("notify", channel, "--dsn", dsn, command=[str(SCRIPT)])

    assert (result.returncode, result.stderr) == (0, "")
    assert receiver.next().payload == ""


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


@pytest.mark.parametrize(
    ("stdin", "payloads"),
    [
        ("line 1\nline 2 🎉\n", ["line 1", "line 2 🎉"]),
        ("same\nsame\nsame\n", ["same", "same", "same"]),  # identical lines: all delivered
        ("blank line next\n\n", ["blank line next", ""]),
        ("no final newline", ["no final newline"]),
        ("windows\r\nline endings\r\n", ["windows", "line endings"]),
        ("", []),
    ],
    ids=["two-lines", "identical", "blank", "no-newline", "crlf", "empty"],
)
def test_notify_dash_sends_one_notification_per_line_of_stdin(
    dsn: str, receiver: Receiver, sender: Conn, stdin: str, payloads: list[str]
) -> None:
    channel = unique()
    receiver.listen(channel)

    result = notify_stdin(dsn, channel, stdin.encode("utf-8"))

    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert payloads_until_end(receiver, sender, channel) == payloads


def test_notify_dash_sends_each_line_as_soon_as_it_is_read(dsn: str, receiver: Receiver) -> None:
    channel = unique()
    receiver.listen(channel)
    with subprocess.Popen(
        [*MODULE, "notify", "--dsn", dsn, channel, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
        cwd=ROOT,
    ) as proc:
        assert proc.stdin is not None
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        assert receiver.next().payload == "first"  # while its standard input is still open
        assert proc.poll() is None
        proc.stdin.write(b"second\n")
        proc.stdin.close()
        code = proc.wait(timeout=BOUND)
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert (code, err) == (0, b"")
    assert receiver.next().payload == "second"


@pytest.mark.parametrize(
    ("stdin", "error"),
    [
        (b"sent\n" + b"x" * 8000 + b"\nnot sent\n", "invalid payload at line 2 of standard input"),
        (b"sent\n" + b"x" * 100_000, "invalid payload at line 2 of standard input"),
        (b"sent\nnul \x00 byte\nnot sent\n", "invalid payload at line 2 of standard input"),
        (b"sent\n\xff\xfe\nnot sent\n", "standard input is not valid UTF-8 at line 2"),
    ],
    ids=["8000-bytes", "endless-line", "nul", "not-utf8"],
)
def test_notify_dash_stops_at_a_bad_line_after_sending_the_lines_before_it(
    dsn: str, receiver: Receiver, sender: Conn, stdin: bytes, error: str
) -> None:
    channel = unique()
    receiver.listen(channel)

    result = notify_stdin(dsn, channel, stdin)

    assert result.returncode == cli.EXIT_ERROR
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX + error), lines
    assert payloads_until_end(receiver, sender, channel) == ["sent"]


def test_notify_is_printed_by_listen(dsn: str, listen: Any) -> None:
    channel = f"End To End {uuid.uuid4().hex[:8]}"
    listener = listen(channel, "--count", "1")
    listener.wait_listening()

    assert run("notify", "--dsn", dsn, channel, "round trip").returncode == 0

    printed = listener.next_json()
    assert (printed["channel"], printed["payload"]) == (channel, "round trip")
    assert isinstance(printed["pid"], int)
    assert listener.finish() == cli.EXIT_OK


# --------------------------------------------------------------------------------------------
# Where the DSN comes from


def test_dsn_from_database_url(dsn: str, receiver: Receiver) -> None:
    channel = unique()
    receiver.listen(channel)
    env = environment(DATABASE_URL=dsn)
    if dsn:  # the URL alone must be enough: hide libpq's variables
        for variable in LIBPQ_VARIABLES.values():
            env.pop(variable, None)

    result = run("notify", channel, "from DATABASE_URL", env=env)

    assert (result.returncode, result.stderr) == (0, "")
    assert receiver.next().payload == "from DATABASE_URL"


def test_database_url_is_used_when_no_dsn_option() -> None:
    line = error_line(run("notify", unique(), env=environment(DATABASE_URL=UNREACHABLE)))
    assert "DATABASE_URL" in line
    assert "port=1" in line


def test_dsn_option_wins_over_database_url(dsn: str, receiver: Receiver) -> None:
    channel = unique()
    receiver.listen(channel)

    result = run("notify", "--dsn", dsn, channel, "x", env=environment(DATABASE_URL=UNREACHABLE))

    assert (result.returncode, result.stderr) == (0, "")
    assert receiver.next().payload == "x"


def test_dsn_from_libpq_environment(dsn: str, listen: Any, sender: Conn) -> None:
    channel = unique()
    listener = listen(channel, env=libpq_environment(dsn), with_dsn=False)
    listener.wait_listening()
    send(sender, channel, "via PG* variables")

    assert listener.next_json()["payload"] == "via PG* variables"


# --------------------------------------------------------------------------------------------
# Errors: one line, exit 2, no traceback, no password


@pytest.mark.parametrize("command", ["listen", "notify"])
@pytest.mark.parametrize(
    "channel", ["a" * 64, "é" * 32, "🎉" * 16], ids=["64-ascii", "64-bytes-latin", "64-bytes-emoji"]
)
def test_too_long_channel_is_an_error(dsn: str, command: str, channel: str) -> None:
    line = error_line(run(command, "--dsn", dsn, channel))
    assert "64 bytes" in line


@pytest.mark.parametrize("command", ["listen", "notify"])
def test_empty_channel_is_an_error(command: str) -> None:
    # Checked before connecting: an unreachable server does not change the message.
    line = error_line(run(command, "--dsn", UNREACHABLE, ""))
    assert "empty" in line


def test_63_byte_channel_is_fine(dsn: str, receiver: Receiver) -> None:
    channel = "é" * 31 + uuid.uuid4().hex[:1]
    receiver.listen(channel)
    assert run("notify", "--dsn", dsn, channel).returncode == 0
    assert receiver.next().channel == channel


def test_too_large_payload_is_an_error(dsn: str) -> None:
    line = error_line(run("notify", "--dsn", dsn, unique(), "x" * 8000))
    assert line.startswith(PREFIX + "invalid payload: ") and "8000" in line
    line = error_line(run("notify", "--dsn", dsn, unique(), "-", input="x" * 8000))
    assert "8000" in line


def test_invalid_utf8_on_stdin_is_an_error(dsn: str) -> None:
    result = subprocess.run(
        [*MODULE, "notify", "--dsn", dsn, unique(), "-"],
        input=b"\xff\xfe",
        capture_output=True,
        env=environment(),
        cwd=ROOT,
        timeout=3 * BOUND,
        check=False,
    )
    assert result.returncode == cli.EXIT_ERROR
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(PREFIX + "standard input is not valid UTF-8 at line 1: ")


@pytest.mark.parametrize("command", ["listen", "notify"])
def test_unreachable_server_is_one_line(command: str) -> None:
    line = error_line(run(command, "--dsn", UNREACHABLE, unique()))
    assert "cannot connect to host=127.0.0.1 port=1" in line
    assert "--dsn" in line


@pytest.mark.parametrize(
    "bad_dsn",
    [
        "postgresql://root:s3cretPW@127.0.0.1:1/test?connect_timeout=2",
        "host=127.0.0.1 port=1 password=s3cretPW connect_timeout=2",
        "host=127.0.0.1 port=1 password='s3cretPW' connect_timeout=2",
        "postgresql://root:s3cretPW%zz@127.0.0.1:1/test",  # libpq quotes the bad token
        "postgresql://root:s3cretPW@[::1/test",  # libpq quotes the whole URI
        "host=127.0.0.1 password=s3cretPW port",  # malformed key=value string
        "postgresql://127.0.0.1:1/test?password=s3cretPW%zz",
        "postgresql://u:s3cretPW@127.0.0.1:1/te%zzst",
    ],
)
@pytest.mark.parametrize("command", ["listen", "notify"])
def test_password_never_printed(bad_dsn: str, command: str) -> None:
    result = run(command, "--dsn", bad_dsn, unique())
    error_line(result)
    verbose = run(command, "-vv", unique(), env=environment(DATABASE_URL=bad_dsn))
    assert verbose.returncode == cli.EXIT_ERROR
    for output in (result.stdout, result.stderr, verbose.stdout, verbose.stderr):
        assert "s3cret" not in output


@pytest.mark.parametrize(
    "args",
    [
        ["listen"],
        ["listen", "x", "--count", "0"],
        ["listen", "x", "--timeout", "-1"],
        ["listen", "x", "--timeout", "nan"],
        ["notify"],
        ["notify", "x", "y", "z"],
        ["shout", "x"],
        [],
    ],
)
def test_usage_errors_exit_two_without_traceback(args: list[str]) -> None:
    result = run(*args, "--dsn", UNREACHABLE) if args else run()
    assert result.returncode == cli.EXIT_ERROR
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]  # argparse: usage, then "PROG [COMMAND]: error: ..."
    assert last.startswith("pgpubsub-dispatch") and ": error: " in last, result.stderr


def test_help_and_version_exit_zero() -> None:
    assert "notify" in run("--help").stdout
    listen_help = run("listen", "--help")
    assert listen_help.returncode == 0 and "--count" in listen_help.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("pgpubsub-dispatch ")


# --------------------------------------------------------------------------------------------
# In-process: the helpers the subprocess tests rely on


def test_resolve_dsn_order() -> None:
    assert cli.resolve_dsn("host=a", {"DATABASE_URL": "host=b"}) == ("host=a", "--dsn")
    assert cli.resolve_dsn("", {"DATABASE_URL": "host=b"}) == ("", "--dsn")
    assert cli.resolve_dsn(None, {"DATABASE_URL": "host=b"}) == ("host=b", "DATABASE_URL")
    assert cli.resolve_dsn(None, {}) == ("", "libpq environment")


def test_redact_masks_every_form_of_the_password() -> None:
    assert cli.redact('bad token "p%41ss%zz"', "postgresql://u:p%41ss%zz@h/d") == (
        'bad token "***"'
    )
    assert cli.redact("x pAss y", "postgresql://u:p%41ss@h/d") == "x *** y"  # decoded form too
    assert cli.redact("it's 'a b' or a b", "host=h password='a b'") == "it's *** or ***"
    assert cli.redact('"p%zz"', "postgresql://h/d?password=p%zz&x=1") == '"***"'
    assert cli.redact("nothing secret", "host=h") == "nothing secret"


def test_main_in_process_returns_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["notify", "--dsn", UNREACHABLE, ""]) == cli.EXIT_ERROR
    assert capsys.readouterr().err.startswith(PREFIX)
    assert cli.main(["listen"]) == cli.EXIT_ERROR
    assert cli.main(["--help"]) == cli.EXIT_OK


class FakeNotification(NamedTuple):
    channel: str
    payload: str
    pid: int


RECEIVED_AT = datetime(2024, 5, 1, 12, 0, 1, 250000, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        ('{"id":1}', '{"id": 1}'),
        ('{\n  "multi": "line"\n}', '{"multi": "line"}'),
        ("plain words", "plain words"),
        ("ünïcode 🎉", "ünïcode 🎉"),
        ("", '""'),
        (" padded ", '" padded "'),
        ("tab\there", '"tab\\there"'),
        ("\x1b]0;new title\x07", '"\\u001b]0;new title\\u0007"'),
        ("c1 \x9b csi", '"c1 \\u009b csi"'),
        ("del \x7f", '"del \\u007f"'),
        ("\u202eevil", '"\\u202eevil"'),
        ("line\u2028separator", '"line\\u2028separator"'),
        ('["escape \\u001b in json"]', '["escape \\u001b in json"]'),
        ('["c1 \\u009b in json"]', '["c1 \\u009b in json"]'),
    ],
)
def test_pretty_line_shows_a_payload_on_one_line_with_nothing_a_terminal_acts_on(
    payload: str, shown: str
) -> None:
    line = cli.pretty_line(FakeNotification("orders", payload, 4242), RECEIVED_AT)

    assert line == f"{RECEIVED_AT.astimezone():%H:%M:%S} orders [pid 4242] {shown}"
    assert not [char for char in line if unicodedata.category(char) in ("Cc", "Zl", "Zp")]


@pytest.mark.parametrize(
    ("channel", "shown"),
    [("orders", "orders"), ("My Chan", '"My Chan"'), ("new\nline", '"new\\nline"')],
)
def test_pretty_line_quotes_a_channel_with_blanks_or_controls(channel: str, shown: str) -> None:
    line = cli.pretty_line(FakeNotification(channel, "x", 1), RECEIVED_AT)
    assert line.split(" [pid ")[0][9:] == shown


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [("[1, 2.5, true]", [1, 2.5, True]), ("0", 0), ("null", None), ('"x"', "x")],
)
def test_json_line_keeps_the_raw_payload_and_adds_the_parsed_value(
    payload: str, parsed: Any
) -> None:
    line = cli.json_line(FakeNotification("orders", payload, 4242), RECEIVED_AT)
    assert json.loads(line) == {
        "channel": "orders",
        "payload": payload,
        "json": parsed,
        "pid": 4242,
        "received_at": "2024-05-01T12:00:01.250000+00:00",
    }


@pytest.mark.parametrize("payload", ["NaN", "-Infinity", "1e999", "[" * 100_000, "{'a': 1}"])
def test_json_line_has_no_json_key_for_what_strict_json_refuses(payload: str) -> None:
    line = cli.json_line(FakeNotification("orders", payload, 4242), RECEIVED_AT)

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the output: not strict JSON")

    printed = json.loads(line, parse_constant=refuse)
    assert printed["payload"] == payload and "json" not in printed
