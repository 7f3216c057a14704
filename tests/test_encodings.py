"""Encodings: names and payloads round-trip whatever ``client_encoding`` the DSN gives.

The dispatcher's own session is pinned to UTF8 (the server converts for everyone else). A name
the *database* encoding cannot hold is refused in the caller, never a reconnect loop; a
payload's size is counted in the database encoding (``pg-rules``: "Client encoding", "Payload
size").
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

from pgpubsub_dispatch import Dispatcher, InvalidChannelName, PayloadTooLarge, reconnected

from .support.dispatching import unique
from .support.notifying import Collector, send
from .support.pgbouncer import PgBouncer
from .support.waiting import BOUND, wait_until

SAMPLES = {"LATIN1": "é", "WIN1252": "é€", "SJIS": "日本", "EUC_JP": "日本"}
"""Per client encoding, text an application in that encoding can send."""

EVERYTHING = "é € 日本 🎉"
"""Text only UTF-8 holds all of."""


def connect_in(dsn: str, encoding: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(psycopg2.extensions.make_dsn(dsn, client_encoding=encoding))
    conn.autocommit = True
    return conn


def listen_raw(conn: psycopg2.extensions.connection, channel: str) -> None:
    """LISTEN on ``conn`` in its own encoding (``psycopg2.sql.Identifier`` quotes as UTF-8
    text, which another client encoding turns into mojibake: the bug the pin avoids)."""
    quoted = '"' + channel.replace('"', '""') + '"'
    with conn.cursor() as cur:
        cur.execute(f"LISTEN {quoted}")


def receive_raw(conn: psycopg2.extensions.connection, pid: int | None) -> Any:
    """The first notification ``conn`` receives from session ``pid``."""
    deadline = time.monotonic() + BOUND
    while True:
        for notification in conn.notifies:
            if notification.pid == pid:
                return notification
        assert time.monotonic() < deadline, "no notification arrived"
        select.select([conn], [], [], deadline - time.monotonic())
        conn.poll()


def last_query_start(dsn: str, pid: int) -> Any:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT query_start FROM pg_stat_activity WHERE pid = %s", (pid,))
            row = cur.fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


def wait_heartbeats(dsn: str, bus: Dispatcher, count: int) -> None:
    """Wait (bounded) until ``bus`` has run ``count`` more statements (heartbeats when idle)."""
    pid = bus.backend_pid
    assert pid is not None
    for _ in range(count):
        seen = last_query_start(dsn, pid)
        wait_until(lambda s=seen: last_query_start(dsn, pid) != s, "a heartbeat", 3.0)


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
def test_names_and_payloads_round_trip_whatever_the_client_encoding(
    dsn: str, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgpubsub_dispatch")
    their_dsn = psycopg2.extensions.make_dsn(dsn, client_encoding=encoding)
    ours, theirs = f"{unique()}_{EVERYTHING}", f"{unique()}_{SAMPLES[encoding]}"
    got_ours, got_theirs = Collector(), Collector()
    external = connect_in(dsn, encoding)
    listen_raw(external, theirs)
    try:
        with Dispatcher(their_dsn, heartbeat_interval=0.3, heartbeat_timeout=1) as bus:
            bus.subscribe(ours, got_ours)
            bus.subscribe(theirs, got_theirs)
            bus.notify(ours, EVERYTHING)
            send(external, theirs, f"from {encoding}: {SAMPLES[encoding]}")
            bus.notify(theirs, SAMPLES[encoding])
            assert got_ours.wait(1) and got_theirs.wait(2)
            outside = receive_raw(external, bus.backend_pid)
            wait_heartbeats(dsn, bus, 2)
            stats, channels = bus.stats(), bus.channels
    finally:
        external.close()
    assert [(n.channel, n.payload) for n in got_ours.items] == [(ours, EVERYTHING)]
    assert got_theirs.payloads == [f"from {encoding}: {SAMPLES[encoding]}", SAMPLES[encoding]]
    assert {n.channel for n in got_theirs.items} == {theirs}
    assert (outside.channel, outside.payload) == (theirs, SAMPLES[encoding])
    assert stats.reconnects == 0 and channels == {ours, theirs}
    assert any(
        f"client_encoding {encoding} is not used" in r.getMessage() and r.levelno == logging.INFO
        for r in caplog.records
    )


def test_a_name_the_database_cannot_hold_is_refused_in_the_caller(latin1_dsn: str) -> None:
    japanese = f"{unique()}_日本"
    bus = Dispatcher(latin1_dsn, heartbeat_interval=0.3, heartbeat_timeout=1)
    bus.listen(japanese)  # recorded: the database's encoding is not known yet
    with pytest.raises(InvalidChannelName, match="LATIN1"):
        bus.start(timeout=BOUND)
    assert not bus.running
    bus.unlisten(japanese)
    café, got = f"{unique()}_café", Collector()
    with bus:
        for call in (
            lambda: bus.listen(japanese),
            lambda: bus.subscribe(japanese, got),
            lambda: bus.notify(japanese, "x"),
        ):
            with pytest.raises(InvalidChannelName, match="cannot be represented"):
                call()
        bus.subscribe(café, got)
        bus.notify(café, "é, ü, ß")
        assert got.wait(1)
        with pytest.raises(psycopg2.errors.UntranslatableCharacter):
            bus.notify(café, "€")  # the server's own clear error, passed through
        wait_heartbeats(latin1_dsn, bus, 2)
        stats = bus.stats()
        assert bus.running and bus.connected and bus.channels == {café}
    assert stats.reconnects == 0 and got.payloads == ["é, ü, ß"]
    with pytest.raises(InvalidChannelName):
        bus.listen(japanese)  # stopped: checked against the last database's encoding
    assert bus.channels == {café}


def test_a_name_the_new_database_cannot_hold_is_skipped_on_reconnection(
    dsn: str, latin1_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reconnection lands on a LATIN1 database (the pooler now points there): the one
    channel it cannot hold is logged and skipped; the rest works; no reconnect loop."""
    caplog.set_level(logging.WARNING, logger="pgpubsub_dispatch")
    japanese, café = f"{unique()}_日本", f"{unique()}_café"
    got_japanese, got_café = Collector(), Collector()
    with PgBouncer(psycopg2.extensions.parse_dsn(dsn), "session") as bouncer:
        bus = Dispatcher(bouncer.dsn, heartbeat_interval=0.3, heartbeat_timeout=1)
        back = threading.Event()

        def on_reconnected(sender: Any, backend_pid: int) -> None:
            back.set()

        reconnected.connect(on_reconnected, sender=bus, weak=False)
        try:
            with bus:
                bus.subscribe(japanese, got_japanese)
                bus.subscribe(café, got_café)
                bouncer.reconfigure(target=psycopg2.extensions.parse_dsn(latin1_dsn))
                with psycopg2.connect(dsn) as admin, admin.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(%s)", (bus.backend_pid,))
                admin.close()
                assert back.wait(BOUND)
                admin = psycopg2.connect(latin1_dsn)
                admin.autocommit = True
                send(admin, café, "on LATIN1 now")
                admin.close()
                assert got_café.wait(1)
                wait_heartbeats(latin1_dsn, bus, 3)
                stats = bus.stats()
                assert bus.connected and bus.channels == {japanese, café}
        finally:
            reconnected.disconnect(on_reconnected, sender=bus)
    assert stats.reconnects == 1 and not stats.deaf
    assert got_café.payloads == ["on LATIN1 now"] and got_japanese.items == []
    skipped = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(skipped) == 1 and japanese in skipped[0].getMessage()


@pytest.mark.parametrize(
    ("database", "character", "limit"),
    [("dsn", "日", 2666), ("latin1_dsn", "é", 7999), ("euc_jp_dsn", "日", 3999)],
)
def test_the_payload_limit_is_counted_in_the_database_encoding(
    request: pytest.FixtureRequest, database: str, character: str, limit: int
) -> None:
    """7999 bytes at most: 2666 three-byte characters in UTF-8, 7999 one-byte ones in LATIN1,
    3999 two-byte ones in EUC_JP (each more than 7999 bytes in UTF-8)."""
    target = request.getfixturevalue(database)
    channel, got = unique(), Collector()
    with Dispatcher(target) as bus:
        bus.subscribe(channel, got)
        bus.notify(channel, character * limit)
        with pytest.raises(PayloadTooLarge):
            bus.notify(channel, character * (limit + 1))
        with pytest.raises(PayloadTooLarge):
            bus.notify_many([(channel, "fits"), (channel, character * (limit + 1))])
        assert got.wait(1)
    assert got.payloads == [character * limit]
