"""Gap-free channels: each notification exactly once per dispatcher, in commit order, whatever
happens to the connection; payloads beyond 8000 bytes; retention that respects readers.

The fault tests run on private servers (killed backends, a stopped server, a promoted
standby); the others on the test server, each in a schema of its own, dropped afterwards. The
ground truth is always the log table itself: what committed is what must be delivered.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher, gapless, triggers
from pgpubsub_dispatch.cli import main as cli_main

from .support.dispatching import Lifecycle
from .support.notifying import Collector
from .support.replication import promote, standby_of
from .support.servers import PrivateServer
from .support.waiting import BOUND, wait_until


def unique(prefix: str = "g") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def connect(dsn: str, autocommit: bool = True) -> Any:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = autocommit
    return conn


def send(conn: Any, schema: str, channel: str, payload: str) -> int:
    """``schema.pgpubsub_notify(channel, payload)`` on ``conn``: the non-Python sender's way."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {}.pgpubsub_notify(%s, %s)").format(sql.Identifier(schema)),
            (channel, payload),
        )
        return int(cur.fetchone()[0])


def log_rows(dsn: str, schema: str, channel: str) -> list[tuple[int, str]]:
    """What committed on ``channel``: (position, payload), in position order."""
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT position, payload FROM {} WHERE channel = %s ORDER BY position"
                ).format(sql.Identifier(schema, "pgpubsub_log")),
                (channel,),
            )
            return [(int(p), str(v)) for p, v in cur.fetchall()]
    finally:
        conn.close()


def reader_position(dsn: str, schema: str, reader: str, channel: str) -> int | None:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT position FROM {} WHERE reader = %s AND channel = %s").format(
                    sql.Identifier(schema, "pgpubsub_readers")
                ),
                (reader, channel),
            )
            row = cur.fetchone()
            return None if row is None else int(row[0])
    finally:
        conn.close()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    """A gap-free log installed in a schema of its own on the test server; dropped after."""
    name = unique("gl")
    conn = connect(dsn, autocommit=False)
    gapless.install(conn, schema=name)
    yield name
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    conn.commit()
    conn.close()


class Gaps:
    """Records the ``gap`` signals of one dispatcher."""

    def __init__(self, bus: Dispatcher) -> None:
        self.seen: list[tuple[str, range]] = []
        pg.gap.connect(self.record, sender=bus, weak=False)

    def record(self, sender: Any, channel: str, missing: range) -> None:
        self.seen.append((channel, missing))


class Senders:
    """External senders: each a thread with its own session, sending transactions of 1 to 3
    notifications through ``pgpubsub_notify``, one in five rolled back, each held open a
    moment after taking its position (so the others queue behind its counter lock). Any
    error (a stopped server, a failover) closes the session; the thread connects again."""

    def __init__(self, dsn: str, schema: str, channel: str, count: int = 2) -> None:
        self.dsn, self.schema, self.channel = dsn, schema, channel
        self.stop = threading.Event()
        self.committed = 0
        self.errors = 0
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True) for index in range(count)
        ]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(BOUND)
            assert not thread.is_alive()

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        conn = None
        sequence = 0
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn, connect_timeout=2)
                for _ in range(rng.randint(1, 3)):
                    sequence += 1
                    send(conn, self.schema, self.channel, f"sender {index} #{sequence}")
                self.stop.wait(rng.random() * 0.003)  # the transaction stays open a moment
                if rng.random() < 0.2:
                    conn.rollback()
                else:
                    conn.commit()
                    self.committed += 1
            except psycopg2.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                    conn = None
                self.stop.wait(0.05)  # the server is away: try again shortly
        if conn is not None:
            conn.close()


class OwnNotifies:
    """The dispatcher's own ``notify`` on the channel, from a thread, outcome not always known
    (a killed session may or may not have committed it): the log tells."""

    def __init__(self, bus: Dispatcher, channel: str) -> None:
        self.bus, self.channel = bus, channel
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OwnNotifies:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(BOUND + 5)
        assert not self.thread.is_alive()

    def _run(self) -> None:
        sequence = 0
        while not self.stop.is_set():
            sequence += 1
            try:
                self.bus.notify(self.channel, f"own #{sequence}", timeout=2)
            except (psycopg2.Error, TimeoutError):
                self.stop.wait(0.05)


def assert_exactly_once_in_order(got: Collector, committed: list[tuple[int, str]]) -> None:
    delivered = [(n.position, n.payload) for n in got.items]
    assert [p for p, _ in committed] == list(range(1, len(committed) + 1)), "positions have holes"
    assert delivered == committed


def converge(bus: Dispatcher, dsn: str, schema: str, channel: str) -> list[tuple[int, str]]:
    """Wait until the dispatcher has delivered everything the log holds; return the log."""
    committed = log_rows(dsn, schema, channel)
    last = committed[-1][0] if committed else 0
    wait_until(lambda: bus.position(channel) == last, f"delivery up to position {last}", 30)
    return committed


# ------------------------------------------------------------------------- set-up


def test_install_is_idempotent_and_creates_the_tables_and_functions(dsn: str) -> None:
    name = unique("Gl Inst")
    conn = connect(dsn, autocommit=False)
    try:
        gapless.install(conn, schema=name)
        gapless.install(conn, schema=name)
        assert cli_main(["install", "--schema", name, "--dsn", dsn]) == 0
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
                (name,),
            )
            assert [r[0] for r in cur.fetchall()] == [
                "pgpubsub_channels",
                "pgpubsub_log",
                "pgpubsub_readers",
            ]
            cur.execute(
                "SELECT p.proname, p.prosecdef FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s ORDER BY 1",
                (name,),
            )
            assert cur.fetchall() == [("pgpubsub_notify", True), ("pgpubsub_prune", False)]
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.commit()
        conn.close()


def test_configuration_is_checked_before_anything_runs() -> None:
    with pytest.raises(TypeError):
        gapless.Config("orders")  # one str, not a list of names
    with pytest.raises(pg.InvalidChannelName):
        gapless.Config([""])
    with pytest.raises(ValueError, match="not a gap-free channel"):
        gapless.Config(["a"], since={"b": 1})
    with pytest.raises(ValueError, match="window"):
        gapless.Config(["a"], window=1)
    with pytest.raises(TypeError):
        Dispatcher("", gapless=42)
    bus = Dispatcher("", gapless=["a"])
    assert bus.position("a") is None
    with pytest.raises(ValueError, match="not a gap-free channel"):
        bus.position("b")


# ------------------------------------------------------------------------- sending, receiving


def test_handlers_get_each_notification_with_its_position(dsn: str, schema: str) -> None:
    channel = unique()
    got = Collector()
    bus = Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema))
    bus.subscribe(channel, got)
    with bus:
        wait_until(lambda: bus.position(channel) == 0, "the first read")
        assert bus.notify(channel, "one") == 1
        assert got.items[0].position == 1  # its handlers ran before notify returned
        bus.notify_many([(channel, "two"), (channel, "two"), ("plain " + channel, "p")])
        assert bus.notify_json(channel, {"n": 4}) == 4
        got.wait(4)
    assert [(n.position, n.payload) for n in got.items] == [
        (1, "one"),
        (2, "two"),
        (3, "two"),
        (4, '{"n":4}'),
    ]
    assert all(isinstance(n, pg.Notification) and n.pid for n in got.items)


def test_a_one_megabyte_payload_round_trips(dsn: str, schema: str) -> None:
    channel = unique()
    got = Collector()
    big = "é" * 600_000  # 1.2 MB in UTF-8
    with pytest.raises(pg.PayloadTooLarge):
        Dispatcher(dsn).notify(channel, big)  # a plain channel refuses it
    with Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema)) as bus:
        bus.subscribe(channel, got)
        bus.notify(channel, big)
        other = connect(dsn)
        send(other, schema, channel, big + "!")
        other.close()
        conn = connect(dsn, autocommit=False)
        with conn.cursor() as cur:
            pg.notify(cur, channel, "x" * 1_048_576, gapless=True, gapless_schema=schema)
        conn.commit()
        conn.close()
        got.wait(3)
    assert [n.payload for n in got.items] == [big, big + "!", "x" * 1_048_576]
    with pytest.raises(pg.PayloadTooLarge):
        Dispatcher(dsn, gapless=[channel]).notify(channel, "x" * (16 * 1024 * 1024 + 1))


def test_a_sender_waits_for_the_previous_one_so_positions_follow_commit_order(
    dsn: str, schema: str
) -> None:
    channel, elsewhere = unique(), unique()
    got = Collector()
    first, second, third = (connect(dsn, autocommit=False) for _ in range(3))
    bus = Dispatcher(dsn, gapless=gapless.Config([channel, elsewhere], schema=schema))
    bus.subscribe(channel, got)
    bus.subscribe(elsewhere, got)
    second_done = threading.Event()
    with bus:
        wait_until(lambda: bus.position(channel) == 0, "the first read")
        assert send(first, schema, channel, "A, taken first, committed last") == 1

        def later_sender() -> None:
            send(second, schema, channel, "B, waits for A")
            second.commit()
            second_done.set()

        thread = threading.Thread(target=later_sender)
        thread.start()
        pid = second.get_backend_pid()
        watcher = connect(dsn)
        with watcher.cursor() as cur:

            def waits_on_a_lock() -> bool:
                cur.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
                return cur.fetchone() == ("Lock",)

            wait_until(waits_on_a_lock, "B blocked on A's counter row", interval=0.02)
        watcher.close()
        assert not second_done.is_set()
        send(third, schema, elsewhere, "another channel is not held up")
        third.commit()
        got.wait(1)
        first.commit()
        assert second_done.wait(BOUND)
        thread.join(BOUND)
        got.wait(3)
    for conn in (first, second, third):
        conn.close()
    assert [(n.channel, n.position, n.payload) for n in got.items] == [
        (elsewhere, 1, "another channel is not held up"),
        (channel, 1, "A, taken first, committed last"),
        (channel, 2, "B, waits for A"),
    ]


def test_notify_in_your_own_transaction_is_sent_only_if_it_commits(dsn: str, schema: str) -> None:
    channel = unique()
    got = Collector()
    with Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema)) as bus:
        bus.subscribe(channel, got)
        conn = connect(dsn, autocommit=False)
        with conn.cursor() as cur:
            assert pg.notify(cur, channel, "rolled back", gapless=True, gapless_schema=schema) == 1
        conn.rollback()
        assert pg.notify(conn, channel, "committed", gapless=True, gapless_schema=schema) == 1
        conn.commit()
        conn.close()
        got.wait(1)
        bus.notify(channel, "after")
        got.wait(2)
    assert [(n.position, n.payload) for n in got.items] == [(1, "committed"), (2, "after")]


def test_a_notification_without_a_position_is_ignored_with_a_warning(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel = unique()
    got = Collector()
    with Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema)) as bus:
        bus.subscribe(channel, got)
        wait_until(lambda: bus.position(channel) == 0, "the first read")
        other = connect(dsn)
        with caplog.at_level(logging.WARNING, logger="pgpubsub_dispatch"):
            with other.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, 'plain')", (channel,))
            send(other, schema, channel, "positioned")
            got.wait(1)
        other.close()
    assert [n.payload for n in got.items] == ["positioned"]
    assert "has no position" in caplog.text


def test_a_forged_or_stale_position_is_dropped_once_and_delivery_goes_on(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel, plain = unique(), unique("plain")
    got, plain_got = Collector(), Collector()
    with Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema)) as bus:
        bus.subscribe(channel, got)
        bus.subscribe(plain, plain_got)
        wait_until(lambda: bus.position(channel) == 0, "the first read")
        other = connect(dsn)
        with caplog.at_level(logging.WARNING, logger="pgpubsub_dispatch"):
            with other.cursor() as cur:
                for forged in (f"{gapless.MARKER}999999", f"{gapless.MARKER}5:stale payload"):
                    cur.execute("SELECT pg_notify(%s, %s)", (channel, forged))
                cur.execute("SELECT pg_notify(%s, 'after')", (plain,))
            assert plain_got.wait(1)[0].payload == "after"
            bus.notify(plain, "mine", timeout=BOUND)
            assert send(other, schema, channel, "real") == 1
            assert bus.notify(channel, "own", timeout=BOUND) == 2
            got.wait(2)
        other.close()
        assert bus.stats().gapless_stale == 2
    assert [p.payload for p in plain_got.items] == ["after", "mine"]
    assert [(n.position, n.payload) for n in got.items] == [(1, "real"), (2, "own")]
    assert caplog.text.count("the server's counter never reached it") == 1


def test_two_logs_numbering_the_same_channel_do_not_mix(dsn: str, schema: str) -> None:
    channel, elsewhere = unique(), unique("gl")
    admin = connect(dsn, autocommit=False)
    gapless.install(admin, schema=elsewhere)
    got = Collector()
    try:
        with Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema)) as bus:
            bus.subscribe(channel, got)
            wait_until(lambda: bus.position(channel) == 0, "the first read")
            other = connect(dsn)
            assert send(other, elsewhere, channel, "b1") == 1  # the other log's positions
            assert send(other, elsewhere, channel, "b" * 9000) == 2  # its payload in the row
            assert send(other, schema, channel, "a1") == 1
            assert send(other, elsewhere, channel, "b3") == 3
            assert bus.notify(channel, "a2", timeout=BOUND) == 2
            got.wait(2)
            other.close()
            assert bus.position(channel) == 2
            assert bus.stats().gapless_stale == 0
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(elsewhere)))
        admin.commit()
        admin.close()
    assert [(n.position, n.payload) for n in got.items] == [(1, "a1"), (2, "a2")]


def test_the_trigger_helper_sends_whole_rows_through_the_log(dsn: str, schema: str) -> None:
    channel = unique()
    conn = connect(dsn, autocommit=False)
    table = sql.Identifier(schema, "orders")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(table))
    conn.commit()
    triggers.create_tables_notify_func(conn)
    triggers.create_table_notify_trigger(
        conn,
        "orders",
        schema=f'"{schema}"',
        channel=channel,
        gapless=True,
        gapless_schema=schema,
    )
    got = Collector()
    with Dispatcher(dsn, gapless=gapless.Config([channel], schema=schema)) as bus:
        bus.subscribe(channel, got)
        with conn.cursor() as cur:
            cur.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(table), ("n" * 20_000,))
            cur.execute(sql.SQL("DELETE FROM {}").format(table))
        conn.commit()
        got.wait(2)
    conn.close()
    rows = [json.loads(n.payload) for n in got.items]
    assert rows == [
        {"id": 1, "note": "n" * 20_000, "tg_op": "INSERT"},
        {"id": 1, "note": "n" * 20_000, "tg_op": "DELETE"},
    ]
    assert [n.position for n in got.items] == [1, 2]


def test_a_consumer_resumes_after_the_position_it_persisted(dsn: str, schema: str) -> None:
    channel = unique()
    other = connect(dsn)
    for n in range(1, 6):
        send(other, schema, channel, f"n{n}")
    other.close()
    got = Collector()
    config = gapless.Config([channel], schema=schema, since={channel: 2})
    with Dispatcher(dsn, gapless=config) as bus:
        bus.subscribe(channel, got)
        got.wait(3)
        assert bus.position(channel) == 5
    assert [(n.position, n.payload) for n in got.items] == [(3, "n3"), (4, "n4"), (5, "n5")]


def test_handlers_on_an_executor_get_the_same_order(dsn: str, schema: str) -> None:
    channel = unique()
    got = Collector()
    other = connect(dsn)
    for n in range(1, 1501):  # more than one catch-up read holds
        send(other, schema, channel, f"n{n}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        config = gapless.Config([channel], schema=schema, since={channel: 0})
        with Dispatcher(dsn, gapless=config, executor=pool, max_pending=100) as bus:
            bus.subscribe(channel, got)
            send(other, schema, channel, "live")
            got.wait(1501)
    other.close()
    assert [n.position for n in got.items] == list(range(1, 1502))


def test_a_handler_on_an_executor_notifies_a_gap_free_channel_promptly(
    dsn: str, schema: str
) -> None:
    trigger, channel = unique("plain"), unique()
    got = Collector()
    results: list[int | BaseException] = []
    done = threading.Event()
    count = 12
    with ThreadPoolExecutor(max_workers=2) as pool:
        config = gapless.Config([channel], schema=schema)
        bus = Dispatcher(dsn, gapless=config, executor=pool, max_pending=2)

        def relay(notification: Any) -> None:
            try:
                results.append(bus.notify(channel, "re " + notification.payload, timeout=BOUND))
            except BaseException as exc:  # the test's assertion reports it
                results.append(exc)
            if len(results) == count:
                done.set()

        bus.subscribe(trigger, relay)
        bus.subscribe(channel, got)
        with bus:
            bus.notify_many([(trigger, str(n)) for n in range(count)])
            assert done.wait(BOUND), f"the handler's notifies did not return: {results!r}"
            got.wait(count)
            assert bus.position(channel) == count
    assert sorted(results) == list(range(1, count + 1))  # type: ignore[type-var]
    assert [n.position for n in got.items] == list(range(1, count + 1))
    assert sorted(n.payload for n in got.items) == sorted(f"re {n}" for n in range(count))
    assert [(p, v) for p, v in log_rows(dsn, schema, channel)] == [
        (n.position, n.payload) for n in got.items
    ]


# ------------------------------------------------------------------------- retention


def test_pruning_keeps_what_a_dispatcher_has_not_delivered(dsn: str, schema: str) -> None:
    channel = unique()
    got = Collector()
    config = gapless.Config([channel], schema=schema, reader=unique("reader"))
    bus = Dispatcher(dsn, gapless=config)
    gaps = Gaps(bus)
    bus.subscribe(channel, got)
    admin = connect(dsn, autocommit=False)
    with bus:
        for n in range(3):
            bus.notify(channel, f"early {n}")
        wait_until(
            lambda: reader_position(dsn, schema, config.reader, channel) == 3,
            "the dispatcher's position recorded",
            timeout=20,
            interval=0.2,
        )
    assert gapless.prune(admin, keep_last=0, schema=schema) == 3  # delivered: gone
    other = connect(dsn)
    for n in range(4):
        send(other, schema, channel, f"while stopped {n}")  # positions 4 to 7
    other.close()
    assert gapless.prune(admin, keep_last=0, older_than=0, schema=schema) == 0
    with bus:
        got.wait(7)
    assert [n.position for n in got.items] == list(range(1, 8))
    assert gaps.seen == []
    assert gapless.forget_reader(admin, config.reader, schema=schema) == 1
    assert gapless.prune(admin, keep_last=0, schema=schema) == 4
    admin.close()


def test_a_start_beyond_the_servers_counter_registers_the_counter_at_once(
    dsn: str, schema: str
) -> None:
    channel = unique()
    other = connect(dsn)
    for n in range(1, 3):
        send(other, schema, channel, f"n{n}")
    got = Collector()
    config = gapless.Config([channel], schema=schema, since={channel: 100}, reader=unique("reader"))
    bus = Dispatcher(dsn, gapless=config)
    gaps = Gaps(bus)
    bus.subscribe(channel, got)
    with bus:
        wait_until(lambda: bus.position(channel) == 2, "the position taken from the server")
    assert reader_position(dsn, schema, config.reader, channel) == 2  # not 100
    for n in range(3, 6):
        send(other, schema, channel, f"n{n}")  # while stopped: the registration keeps them
    other.close()
    admin = connect(dsn, autocommit=False)
    assert gapless.prune(admin, keep_last=0, schema=schema) == 2
    with bus:
        got.wait(3)
    assert gapless.forget_reader(admin, config.reader, schema=schema) == 1
    admin.close()
    assert [(n.position, n.payload) for n in got.items] == [(3, "n3"), (4, "n4"), (5, "n5")]
    assert gaps.seen == []


def test_the_gap_signal_names_rows_pruned_outside_the_window(dsn: str, schema: str) -> None:
    channel = unique()
    got = Collector()
    config = gapless.Config([channel], schema=schema, reader=unique("reader"), window=60)
    bus = Dispatcher(dsn, gapless=config)
    gaps = Gaps(bus)
    bus.subscribe(channel, got)
    with bus:
        bus.notify(channel, "1")
    other = connect(dsn)
    for n in range(2, 7):
        send(other, schema, channel, str(n))
    with other.cursor() as cur:  # rows 1 to 4 are now two minutes old: outside the window
        cur.execute(
            sql.SQL(
                "UPDATE {} SET created_at = now() - interval '2 minutes' "
                "WHERE channel = %s AND position <= 4"
            ).format(sql.Identifier(schema, "pgpubsub_log")),
            (channel,),
        )
    other.close()
    admin = connect(dsn, autocommit=False)
    assert gapless.prune(admin, older_than=60, schema=schema) == 4
    admin.close()
    with bus:
        got.wait(3)
    assert gaps.seen == [(channel, range(2, 5))]
    assert [(n.position, n.payload) for n in got.items] == [(1, "1"), (5, "5"), (6, "6")]


# ------------------------------------------------------------------------- faults


def run_kills_and_outage(
    server: PrivateServer, bus: Dispatcher, got: Collector, lifecycle: Lifecycle, admin: Any
) -> None:
    """20 kills of the dispatcher's session, then the server stopped for 10 s, under traffic."""
    for kill in range(1, 21):
        seen = len(got.items)
        wait_until(lambda: len(got.items) >= seen + 5, "traffic between kills")  # noqa: B023
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (bus.backend_pid,))
        lifecycle.wait_for("reconnected", kill)
    admin.close()
    server.stop()
    lifecycle.wait_for("disconnected", 21)
    threading.Event().wait(10.0)  # the outage itself; the senders keep trying
    server.start()
    lifecycle.wait_for("reconnected", 21, timeout=BOUND + 5)
    seen = len(got.items)
    wait_until(lambda: len(got.items) >= seen + 20, "traffic after the outage")


def test_exactly_once_in_commit_order_through_kills_and_an_outage(
    private_server: PrivateServer,
) -> None:
    dsn, schema, channel = private_server.dsn, "pgpubsub", unique()
    gapless.install(connect(dsn, autocommit=False))
    got = Collector()
    bus = Dispatcher(
        dsn,
        gapless=[channel],
        backoff_min=0.01,
        backoff_max=1.0,
        heartbeat_interval=2,
        heartbeat_timeout=2,
    )
    bus.subscribe(channel, got)
    lifecycle = Lifecycle(bus)
    admin = connect(dsn)
    with bus:
        with Senders(dsn, schema, channel) as senders, OwnNotifies(bus, channel):
            run_kills_and_outage(private_server, bus, got, lifecycle, admin)
        committed = converge(bus, dsn, schema, channel)  # everything, before stopping
    print(
        f"\ngap-free through 20 kills and a 10 s outage: {len(committed)} notifications "
        f"committed and delivered once each, in order ({senders.committed} sender "
        f"transactions, {senders.errors} sender errors)"
    )
    assert len(committed) > 200
    assert any(p.startswith("own") for _, p in committed)
    assert_exactly_once_in_order(got, committed)


def test_exactly_once_in_commit_order_through_a_failover_to_a_promoted_standby() -> None:
    with PrivateServer() as primary:
        gapless.install(connect(primary.dsn, autocommit=False))
        standby = standby_of(primary)
        try:
            dsn = (
                f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} dbname=postgres "
                "user=postgres target_session_attrs=read-write connect_timeout=2"
            )
            channel = unique()
            got = Collector()
            bus = Dispatcher(dsn, gapless=[channel], backoff_min=0.01, backoff_max=0.5)
            bus.subscribe(channel, got)
            lifecycle = Lifecycle(bus)
            with bus:
                with Senders(dsn, "pgpubsub", channel), OwnNotifies(bus, channel):
                    wait_until(lambda: len(got.items) >= 50, "traffic on the primary")
                    primary.stop()
                    promote(standby)
                    lifecycle.wait_for("reconnected", 1, timeout=BOUND + 5)
                    seen = len(got.items)
                    wait_until(lambda: len(got.items) >= seen + 50, "traffic on the new primary")
                committed = converge(bus, standby.dsn, "pgpubsub", channel)
        finally:
            standby.close()
    print(f"\ngap-free through a failover: {len(committed)} delivered once each, in order")
    assert_exactly_once_in_order(got, committed)
