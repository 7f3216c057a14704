"""``examples/asyncio_consumer.py``, run as a user runs it, against the test server.

The example runs as a subprocess; its output is read line by line with bounded waits (see
``tests/support/programs.py``, shared with ``test_examples.py``). Nothing sleeps.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import psycopg2.extensions
import pytest

from .support.notifying import send
from .support.programs import STARTUP_BOUND, Program, example_env, unique, wrong_database

Conn = psycopg2.extensions.connection


@pytest.fixture
def consumers() -> Iterator[list[Program]]:
    """Consumers started by a test; any still running at its end is killed."""
    started: list[Program] = []
    yield started
    for program in started:
        program.kill()


def consumer(consumers: list[Program], *args: str, env: dict[str, str]) -> Program:
    program = Program("asyncio_consumer.py", *args, env=env)
    consumers.append(program)
    return program


def test_prints_each_notification_and_exits_after_count(
    dsn: str, consumers: list[Program], sender: Conn
) -> None:
    first, second = unique("orders"), unique("Other Channel")
    program = consumer(
        consumers,
        dsn,
        "--channel",
        first,
        "--channel",
        second,
        "--count",
        "3",
        env=example_env(dsn),
    )
    program.wait_for(rf"^listening on '{first}', '{second}'$")
    pid = sender.get_backend_pid()

    send(sender, first, "order 1")
    send(sender, second, '{"id": 2}')
    send(sender, first, "order 1")  # identical, in another transaction: delivered again

    assert program.finish() == 0, program.text
    assert program.output == [
        f"listening on '{first}', '{second}'",
        f"{first}: 'order 1' from pid {pid}",
        f"{second}: '{{\"id\": 2}}' from pid {pid}",
        f"{first}: 'order 1' from pid {pid}",
        "received 3 notifications",
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stops_cleanly_on(
    dsn: str, consumers: list[Program], sender: Conn, signum: signal.Signals
) -> None:
    channel = unique("orders")
    program = consumer(consumers, dsn, "--channel", channel, env=example_env(dsn))
    program.wait_for(r"^listening on ")
    send(sender, channel, "before the signal")
    program.wait_for(rf"^{channel}: 'before the signal' from pid \d+$")

    assert program.stop(signum) == 0, program.text

    assert program.output[-1] == f"stopped by {signum.name}"
    assert "Traceback" not in program.text


def test_sends_its_own_notifications_with_send(dsn: str, consumers: list[Program]) -> None:
    channel = unique("orders")
    program = consumer(
        consumers,
        dsn,
        "--channel",
        channel,
        "--count",
        "2",
        "--send",
        "hello",
        "--send",
        "world",
        env=example_env(dsn),
    )

    assert program.finish() == 0, program.text
    own_pid = re.fullmatch(rf"{channel}: 'hello' from pid (\d+)", program.output[1])
    assert own_pid, program.text
    assert program.output[2:] == [
        f"{channel}: 'world' from pid {own_pid[1]}",
        "received 2 notifications",
    ]


def test_takes_its_dsn_from_database_url(dsn: str, consumers: list[Program], sender: Conn) -> None:
    channel = unique("orders")
    program = consumer(
        consumers,
        "--channel",
        channel,
        "--count",
        "1",
        env=example_env(None, DATABASE_URL=dsn),
    )
    program.wait_for(r"^listening on ")
    send(sender, channel, "from DATABASE_URL")

    assert program.finish() == 0, program.text
    assert program.output[-2:] == [
        f"{channel}: 'from DATABASE_URL' from pid {sender.get_backend_pid()}",
        "received 1 notification",
    ]


def test_starts_a_throwaway_server_when_none_is_configured(consumers: list[Program]) -> None:
    program = consumer(consumers, "--count", "1", "--send", "hi", env=example_env(None))

    assert program.finish(timeout=STARTUP_BOUND) == 0, program.text
    assert program.output[0] == "listening on 'orders'"
    assert re.fullmatch(r"orders: 'hi' from pid \d+", program.output[1]), program.text
    assert program.output[2:] == ["received 1 notification"]


def test_exits_2_in_one_line_when_it_cannot_connect(dsn: str, consumers: list[Program]) -> None:
    program = consumer(consumers, wrong_database(dsn), env=example_env(dsn))

    assert program.finish() == 2
    assert len(program.output) == 1, program.text
    assert re.fullmatch(r"asyncio_consumer: cannot connect: .*does not exist.*", program.output[0])


def test_an_async_def_handler_prints_them_with_handler(
    dsn: str, consumers: list[Program], sender: Conn
) -> None:
    channel = unique("orders")
    program = consumer(
        consumers, dsn, "--handler", "--channel", channel, "--count", "3", env=example_env(dsn)
    )
    program.wait_for(rf"^listening on '{channel}'$")
    pid = sender.get_backend_pid()

    for payload in ["order 1", "order 2", "order 1"]:
        send(sender, channel, payload)

    assert program.finish() == 0, program.text
    assert program.output == [
        f"listening on '{channel}'",
        f"{channel}: 'order 1' from pid {pid}",
        f"{channel}: 'order 2' from pid {pid}",
        f"{channel}: 'order 1' from pid {pid}",
        "received 3 notifications",
    ]


def test_with_handler_it_stops_cleanly_on_sigterm(
    dsn: str, consumers: list[Program], sender: Conn
) -> None:
    channel = unique("orders")
    program = consumer(consumers, dsn, "--handler", "--channel", channel, env=example_env(dsn))
    program.wait_for(r"^listening on ")
    send(sender, channel, "before the signal")
    program.wait_for(rf"^{channel}: 'before the signal' from pid \d+$")

    assert program.stop(signal.SIGTERM) == 0, program.text

    assert program.output[-1] == "stopped by SIGTERM"
    assert "Traceback" not in program.text
