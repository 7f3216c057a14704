"""The examples, run as a user runs them: ``python examples/NAME.py`` against the test server.

Each example runs as a subprocess of this interpreter (the package must be installed, as the
README's set-up command does). Output is read line by line by a thread into a queue, so every
wait is a bounded ``get``; nothing sleeps.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import pytest

from pgpubsub_dispatch import Dispatcher

from .support.notifying import Collector, send
from .support.programs import (
    EXAMPLES,
    QUICKSTART_OUTPUT,
    STARTUP_BOUND,
    Program,
    example_env,
    start,
    unique,
    wrong_database,
)
from .support.waiting import BOUND


@pytest.fixture
def listener(dsn: str) -> Iterator[Dispatcher]:
    """A dispatcher of the test's own, to watch what the examples send."""
    with Dispatcher(dsn) as bus:
        yield bus


# ------------------------------------------------------------------------------- quickstart


def run_quickstart(*args: str, env: dict[str, str], timeout: float = BOUND) -> str:
    """Run the quickstart to its end; check it exits 0 and return its standard output."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def assert_quickstart_output(stdout: str) -> None:
    assert re.fullmatch("\n".join(QUICKSTART_OUTPUT) + "\n", stdout), stdout


def test_quickstart_uses_the_configured_server_and_prints_what_handlers_receive(
    dsn: str,
) -> None:
    assert_quickstart_output(run_quickstart(env=example_env(dsn)))


def test_quickstart_dsn_argument_wins_over_the_environment(dsn: str) -> None:
    stdout = run_quickstart(dsn, env=example_env(wrong_database(dsn)))
    assert_quickstart_output(stdout)


def test_quickstart_starts_a_throwaway_server_when_none_is_configured() -> None:
    stdout = run_quickstart(env=example_env(None), timeout=STARTUP_BOUND)
    assert_quickstart_output(stdout)


def test_quickstart_reports_an_unreachable_server_in_one_line(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), wrong_database(dsn)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=example_env(dsn),
        timeout=BOUND,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert re.fullmatch(r"quickstart: cannot connect: .*does not exist.*\n", done.stderr)


# ---------------------------------------------------------------------------------- service


def start_service(programs: list[Program], dsn: str, jobs: str, done: str) -> Program:
    service = start(
        programs,
        "service.py",
        dsn,
        "--channel",
        jobs,
        "--done-channel",
        done,
        env=example_env(dsn),
    )
    service.wait_for(rf"INFO service: listening on '{jobs}' as backend pid \d+")
    return service


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_service_does_jobs_from_another_session_and_stops_cleanly_on(
    dsn: str,
    programs: list[Program],
    sender: psycopg2.extensions.connection,
    listener: Dispatcher,
    collector: Collector,
    signum: signal.Signals,
) -> None:
    jobs, done = unique("jobs"), unique("jobs.done")
    listener.subscribe(done, collector)
    service = start_service(programs, dsn, jobs, done)

    send(sender, jobs, "resize image 42")

    service.wait_for(rf"INFO service: job 'resize image 42' on '{jobs}' from pid \d+")
    [ack] = collector.wait(1)
    assert (ack.channel, ack.payload) == (done, "resize image 42")
    assert service.stop(signum) == 0, service.text
    last = [re.sub(r"^.* INFO service: ", "", line) for line in service.output[-2:]]
    assert last == ["stopping", "stopped"], service.text
    assert "Traceback" not in service.text


def test_service_logs_a_failing_job_and_goes_on(
    dsn: str,
    programs: list[Program],
    sender: psycopg2.extensions.connection,
    listener: Dispatcher,
    collector: Collector,
) -> None:
    jobs, done = unique("jobs"), unique("jobs.done")
    listener.subscribe(done, collector)
    service = start_service(programs, dsn, jobs, done)

    send(sender, jobs, "")  # the handler raises on an empty job
    send(sender, jobs, "next job")

    service.wait_for(rf"ERROR pgpubsub_dispatch: handler .* raised on channel '{jobs}'")
    service.wait_for(rf"ValueError: empty job on '{jobs}'")
    service.wait_for(rf"INFO service: job 'next job' on '{jobs}'")
    assert [n.payload for n in collector.wait(1)] == ["next job"]
    assert service.stop(signal.SIGTERM) == 0, service.text


def test_service_keeps_working_after_its_connection_is_killed(
    dsn: str,
    programs: list[Program],
    sender: psycopg2.extensions.connection,
    listener: Dispatcher,
    collector: Collector,
) -> None:
    jobs, done = unique("jobs"), unique("jobs.done")
    listener.subscribe(done, collector)
    service = start(
        programs, "service.py", dsn, "--channel", jobs, "--done-channel", done, env=example_env(dsn)
    )
    old_pid = int(service.wait_for(r"INFO service: listening on .* as backend pid (\d+)")[1])

    with sender.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    new_pid = int(service.wait_for(r"INFO service: listening again as backend pid (\d+)")[1])
    assert new_pid != old_pid
    send(sender, jobs, "after the reconnection")

    [ack] = collector.wait(1)
    assert ack.payload == "after the reconnection"
    assert service.stop(signal.SIGTERM) == 0, service.text


def test_service_takes_its_dsn_from_database_url(
    dsn: str, programs: list[Program], sender: psycopg2.extensions.connection
) -> None:
    jobs = unique("jobs")
    service = start(
        programs,
        "service.py",
        "--channel",
        jobs,
        env=example_env(None, DATABASE_URL=dsn),
    )
    service.wait_for(rf"listening on '{jobs}'")
    send(sender, jobs, "from DATABASE_URL")
    service.wait_for(r"job 'from DATABASE_URL'")
    assert service.stop(signal.SIGTERM) == 0, service.text


def test_service_exits_2_when_it_cannot_connect(dsn: str, programs: list[Program]) -> None:
    service = start(programs, "service.py", wrong_database(dsn), env=example_env(dsn))
    assert service.finish() == 2
    assert re.search(r"ERROR service: cannot connect: .*does not exist", service.text)
    assert "Traceback" not in service.text


# ------------------------------------------------------------------------------------- echo


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_echo_resends_each_message_once_and_ignores_its_own(
    dsn: str,
    programs: list[Program],
    sender: psycopg2.extensions.connection,
    listener: Dispatcher,
    collector: Collector,
    signum: signal.Signals,
) -> None:
    channel = unique("echo")
    listener.subscribe(channel, collector)
    echo = start(programs, "echo.py", dsn, "--channel", channel, env=example_env(dsn))
    echo_pid = int(echo.wait_for(rf"echo: listening on '{channel}' as backend pid (\d+)")[1])
    sender_pid = sender.get_backend_pid()

    send(sender, channel, "hello")
    collector.wait(2)
    # The echo received its own "hello" before it could see the next message: had it answered
    # itself, that answer would be committed, and so delivered, before its answer to "again".
    send(sender, channel, "again")

    received = [(n.payload, n.pid) for n in collector.wait(4)]
    assert received == [
        ("hello", sender_pid),
        ("hello", echo_pid),
        ("again", sender_pid),
        ("again", echo_pid),
    ]
    echo.wait_for(r"echoed 'again'")  # printed just after the notification was sent
    assert echo.stop(signum) == 0, echo.text
    assert [line for line in echo.output if line.startswith("echoed")] == [
        f"echoed 'hello' from pid {sender_pid} to '{channel}'",
        f"echoed 'again' from pid {sender_pid} to '{channel}'",
    ]
    assert "Traceback" not in echo.text


def test_echo_answers_on_another_channel_with_to(
    dsn: str,
    programs: list[Program],
    sender: psycopg2.extensions.connection,
    listener: Dispatcher,
    collector: Collector,
) -> None:
    requests, replies = unique("requests"), unique("Replies")
    listener.subscribe(replies, collector)
    echo = start(
        programs, "echo.py", dsn, "--channel", requests, "--to", replies, env=example_env(dsn)
    )
    echo_pid = int(echo.wait_for(r"echo: listening on .* as backend pid (\d+)")[1])

    send(sender, requests, "one")
    send(sender, requests, "two")

    received = [(n.channel, n.payload, n.pid) for n in collector.wait(2)]
    assert received == [(replies, "one", echo_pid), (replies, "two", echo_pid)]
    assert echo.stop(signal.SIGTERM) == 0, echo.text


def test_echo_ignores_its_own_messages_after_a_reconnection_too(
    dsn: str,
    programs: list[Program],
    sender: psycopg2.extensions.connection,
    listener: Dispatcher,
    collector: Collector,
) -> None:
    channel = unique("echo")
    listener.subscribe(channel, collector)
    echo = start(programs, "echo.py", dsn, "--channel", channel, env=example_env(dsn))
    old_pid = int(echo.wait_for(r"echo: listening on .* as backend pid (\d+)")[1])
    with sender.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    new_pid = int(echo.wait_for(r"echo: reconnected as backend pid (\d+)")[1])
    sender_pid = sender.get_backend_pid()

    send(sender, channel, "hello")
    collector.wait(2)
    send(sender, channel, "again")  # its answer comes after any answer to its own "hello"

    received = [(n.payload, n.pid) for n in collector.wait(4)]
    assert received == [
        ("hello", sender_pid),
        ("hello", new_pid),
        ("again", sender_pid),
        ("again", new_pid),
    ]
    assert echo.stop(signal.SIGTERM) == 0, echo.text
