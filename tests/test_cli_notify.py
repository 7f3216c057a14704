"""``pgpubsub-dispatch notify``: one notification, or one per line of standard input.

Each run is checked by a plain psycopg2 session that LISTENs (the ``receiver`` fixture).
"""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest

from pgpubsub_dispatch import cli

from .support.cli import (
    MODULE,
    PREFIX,
    ROOT,
    SCRIPT,
    Conn,
    Receiver,
    environment,
    notify_stdin,
    payloads_until_end,
    run,
    unique,
)
from .support.waiting import BOUND


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
