"""``listen``'s two output forms: JSON lines when piped, readable lines on a terminal.

End to end through a pipe and a pseudo-terminal, and in-process through ``cli.json_line`` and
``cli.pretty_line``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import unicodedata
import uuid
from typing import Any

import pytest

from pgpubsub_dispatch import cli

from .support.cli import (
    RECEIVED_AT,
    UNREACHABLE,
    Conn,
    FakeNotification,
    Terminal,
    run,
    unique,
)
from .support.notifying import send

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
