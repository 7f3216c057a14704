"""The command line's errors: one line, exit 2, no traceback, never a password."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from pgpubsub_dispatch import cli

from .support.cli import (
    MODULE,
    PREFIX,
    ROOT,
    UNREACHABLE,
    Receiver,
    environment,
    error_line,
    run,
    unique,
)
from .support.waiting import BOUND


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


def test_redact_masks_every_form_of_the_password() -> None:
    assert cli.redact('bad token "p%41ss%zz"', "postgresql://u:p%41ss%zz@h/d") == (
        'bad token "***"'
    )
    assert cli.redact("x pAss y", "postgresql://u:p%41ss@h/d") == "x *** y"  # decoded form too
    assert cli.redact("it's 'a b' or a b", "host=h password='a b'") == "it's *** or ***"
    assert cli.redact('"p%zz"', "postgresql://h/d?password=p%zz&x=1") == '"***"'
    assert cli.redact("nothing secret", "host=h") == "nothing secret"
