"""The command line's options: where the DSN comes from, global options, usage, help, signals."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from typing import Any

import pytest

from pgpubsub_dispatch import cli

from .support.cli import (
    LIBPQ_VARIABLES,
    MODULE,
    PREFIX,
    ROOT,
    UNREACHABLE,
    Conn,
    Receiver,
    environment,
    error_line,
    libpq_environment,
    run,
    unique,
    wait_until_blocked,
)
from .support.notifying import send
from .support.waiting import BOUND


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


def test_resolve_dsn_order() -> None:
    assert cli.resolve_dsn("host=a", {"DATABASE_URL": "host=b"}) == ("host=a", "--dsn")
    assert cli.resolve_dsn("", {"DATABASE_URL": "host=b"}) == ("", "--dsn")
    assert cli.resolve_dsn(None, {"DATABASE_URL": "host=b"}) == ("host=b", "DATABASE_URL")
    assert cli.resolve_dsn(None, {}) == ("", "libpq environment")


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


def test_main_in_process_returns_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["notify", "--dsn", UNREACHABLE, ""]) == cli.EXIT_ERROR
    assert capsys.readouterr().err.startswith(PREFIX)
    assert cli.main(["listen"]) == cli.EXIT_ERROR
    assert cli.main(["--help"]) == cli.EXIT_OK


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
            # The case under test: the main thread blocked in start(), where only a stop
            # request can end the connection attempt.
            wait_until_blocked(proc.pid)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=BOUND)
    assert (proc.returncode, out, err) == (code, "", "")


def test_global_options_go_before_the_command(dsn: str, receiver: Receiver) -> None:
    channel = unique()
    receiver.listen(channel)

    result = run("-v", "--dsn", dsn, "notify", channel, "before the command")

    assert (result.returncode, result.stdout) == (0, "")
    assert receiver.next().payload == "before the command"
    assert "pgpubsub-dispatch: info: connected to " in result.stderr  # -v was taken


def test_global_options_go_after_the_command_too_and_every_v_counts(dsn: str) -> None:
    parsed = cli.build_parser().parse_args(["-v", "--dsn", "host=a", "listen", "x", "-v"])
    assert (parsed.verbose, parsed.dsn, parsed.channels) == (2, "host=a", ["x"])
    parsed = cli.build_parser().parse_args(["--dsn", "host=a", "notify", "x", "--dsn", "host=b"])
    assert (parsed.verbose, parsed.dsn) == (0, "host=b")  # the later one wins
    parsed = cli.build_parser().parse_args(["notify", "x"])
    assert (parsed.verbose, parsed.dsn) == (0, None)

    result = run("--dsn", UNREACHABLE, "notify", unique(), "--dsn", dsn)
    assert (result.returncode, result.stderr) == (0, "")


def test_help_lists_every_exit_code() -> None:
    result = run("--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for code in ("0 success", "1 listen --count", "2 bad usage", "130 (SIGINT)", "143 (SIGTERM)"):
        assert code in text, text


@pytest.mark.parametrize(
    ("channels", "counted"), [(1, "listening to 1 channel"), (2, "listening to 2 channels")]
)
def test_counts_are_singular_or_plural(dsn: str, channels: int, counted: str) -> None:
    names = [unique() for _ in range(channels)]

    result = run("-v", "listen", *names, "--timeout", "0.1", "--dsn", dsn)

    assert result.returncode == cli.EXIT_OK, result.stderr
    assert re.search(rf"{counted}$", result.stderr, re.MULTILINE), result.stderr
