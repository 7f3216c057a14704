"""``pgpubsub-dispatch listen``: what it prints, when it stops, how it survives a lost connection.

Run end to end as a subprocess against the real server (helpers in :mod:`tests.support.cli`).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

import pytest
from psycopg2 import sql

from pgpubsub_dispatch import cli

from .support.cli import (
    PREFIX,
    Conn,
    assert_received_at_is_now,
    environment,
    unique,
)
from .support.notifying import send
from .support.waiting import BOUND


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
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE strpos(query, %s) > 0 AND pid <> pg_backend_pid()",
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
