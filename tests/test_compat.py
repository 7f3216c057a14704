"""The ancestor's API (pgpubsub 2015), kept working on the dispatcher."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

import pgpubsub_dispatch as pgpubsub

from .support.notifying import send
from .support.waiting import BOUND


def unique() -> str:
    return f"compat_{uuid.uuid4().hex[:12]}"


def test_the_ancestors_readme_example(dsn: str) -> None:
    pubsub = pgpubsub.connect(dsn)
    try:
        pubsub.listen("test")
        assert pubsub.get_event() is None
        pubsub.notify("test", "message 1")
        pubsub.notify("test", "message 2")
        first, second = pubsub.get_event(), pubsub.get_event()
        assert (first.channel, first.payload) == ("test", "message 1")
        assert (second.channel, second.payload) == ("test", "message 2")
        assert first.pid == pubsub.backend_pid == pubsub.conn.get_backend_pid()
        assert pubsub.get_event() is None
        pubsub.unlisten("test")
    finally:
        pubsub.close()
    pubsub.close()  # idempotent


def test_connect_takes_psycopg2_keyword_arguments(dsn: str) -> None:
    params = psycopg2.extensions.parse_dsn(dsn)
    database = params.pop("dbname", None)
    with pgpubsub.connect(database=database, **params) as pubsub:
        assert isinstance(pubsub.backend_pid, int)


def test_events_yields_notifications_and_timeouts(dsn: str, sender: Any) -> None:
    channel = unique()
    with pgpubsub.connect(dsn) as pubsub:
        pubsub.listen(channel)
        send(sender, channel, "a")
        events = pubsub.events(select_timeout=0.05, yield_timeouts=True)
        assert next(events).payload == "a"
        started = time.monotonic()
        assert next(events) is None  # a timeout, reported as asked
        assert time.monotonic() - started >= 0.04
        send(sender, channel, "b")
        assert next(e for e in events if e is not None).payload == "b"


def test_events_without_timeouts_keeps_waiting(dsn: str, sender: Any) -> None:
    channel = unique()
    with pgpubsub.connect(dsn) as pubsub:
        pubsub.listen(channel)
        timer = threading.Timer(0.2, send, args=(sender, channel, "late"))
        timer.start()
        try:
            event = next(pubsub.events(select_timeout=0.05))
        finally:
            timer.join(BOUND)
        assert event.payload == "late"


def test_get_events_returns_all_waiting(dsn: str) -> None:
    channel = unique()
    with pgpubsub.connect(dsn) as pubsub:
        pubsub.listen(channel)
        for i in range(5):
            pubsub.notify(channel, str(i))
        assert [e.payload for e in pubsub.get_events()] == ["0", "1", "2", "3", "4"]
        assert pubsub.get_events() is None  # as in 2015: None, not [], when nothing waits


def test_unlisten_stops_new_events(dsn: str, sender: Any) -> None:
    channel, probe = unique(), unique()
    with pgpubsub.connect(dsn) as pubsub:
        pubsub.listen(channel)
        pubsub.listen(probe)
        pubsub.unlisten(channel)
        send(sender, channel, "not received")
        pubsub.notify(probe, "received")
        assert [(e.channel, e.payload) for e in pubsub.get_events()] == [(probe, "received")]


def test_channel_names_are_read_as_identifiers_never_as_sql(dsn: str, sender: Any) -> None:
    with pgpubsub.connect(dsn) as pubsub:
        with pytest.raises(pgpubsub.InvalidChannelName):
            pubsub.listen("Mixed Case; DROP")  # 2015 ran it as SQL
        assert pubsub.dispatcher.channels == frozenset()
        pubsub.listen('"Mixed Case; DROP"')  # quoted: one exact identifier, quoted again by us
        send(sender, "Mixed Case; DROP", "x")
        event = next(pubsub.events(select_timeout=BOUND))
        assert event.channel == "Mixed Case; DROP"


def test_safe_across_threads(dsn: str) -> None:
    channel = unique()
    errors: list[BaseException] = []
    with pgpubsub.connect(dsn) as pubsub:
        pubsub.listen(channel)

        def worker(index: int) -> None:
            try:
                for i in range(20):
                    pubsub.notify(channel, f"{index}-{i}")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BOUND)
        assert errors == []
        payloads = sorted(e.payload for e in pubsub.get_events())
        assert payloads == sorted(f"{i}-{j}" for i in range(8) for j in range(20))


def test_calls_after_close_fail_fast(dsn: str) -> None:
    pubsub = pgpubsub.connect(dsn)
    pubsub.close()
    with pytest.raises(pgpubsub.DispatcherStopped):
        pubsub.notify("x", "y")
    with pytest.raises(pgpubsub.DispatcherStopped):
        pubsub.conn.get_backend_pid()
    with pytest.raises(psycopg2.InterfaceError):  # what 2015's closed connection raised
        pubsub.get_event()
    assert pubsub.backend_pid is None
    assert pubsub.conn.closed == 1
