"""Table-change triggers, proven against a real server.

Each test works in schemas of its own (unique names, dropped afterwards), on a connection whose
``search_path`` is such a schema, so the shared trigger function ``tables_notify_func()`` is
created there too and tests never touch each other's objects or ``public``. Channels are
database-wide, so every table and channel name carries a per-test tag as well. Notifications are
received on a plain psycopg2 connection that LISTENs, polled with bounded waits.
"""

from __future__ import annotations

import json
import select
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
from psycopg2 import sql

from pgpubsub_dispatch import triggers
from pgpubsub_dispatch.errors import InvalidChannelName

BOUND = 10.0
"""Seconds a notification that should arrive may take."""

QUIET = 0.3
"""Seconds to wait when asserting that nothing (more) arrives."""

Conn = psycopg2.extensions.connection

TIMEOUTS = "-c lock_timeout=5s -c statement_timeout=10s"
"""Every test connection gets these, so that a lock left by a broken helper fails a test
instead of hanging it (pytest-timeout cannot interrupt a blocked libpq call)."""


def quoted(name: str) -> str:
    """``name`` written as a double-quoted SQL identifier: the helpers then read it exactly."""
    return '"' + name.replace('"', '""') + '"'


def connect(dsn: str) -> Conn:
    return psycopg2.connect(dsn, options=TIMEOUTS)


class Listener:
    """A LISTENing session that gathers notifications; every wait is bounded."""

    def __init__(self, dsn: str) -> None:
        self.conn = connect(dsn)
        self.conn.autocommit = True
        self.received: list[psycopg2.extensions.Notify] = []

    def listen(self, *channels: str) -> None:
        with self.conn.cursor() as cur:
            for channel in channels:
                cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def _pump(self, timeout: float) -> None:
        if timeout > 0:
            select.select([self.conn], [], [], timeout)
        self.conn.poll()
        while self.conn.notifies:
            self.received.append(self.conn.notifies.pop(0))

    def take(self, count: int) -> list[psycopg2.extensions.Notify]:
        """Wait for ``count`` notifications, check that no more follow, and return them."""
        deadline = time.monotonic() + BOUND
        while len(self.received) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"expected {count} notifications, got {self.received!r}"
            self._pump(left)
        self.assert_silent(already=count)
        got, self.received = self.received, []
        return got

    def take_one(self, channel: str) -> dict[str, Any]:
        """The payload, decoded, of exactly one notification on ``channel``."""
        (note,) = self.take(1)
        assert note.channel == channel
        payload = json.loads(note.payload)
        assert isinstance(payload, dict)
        return payload

    def assert_silent(self, already: int = 0) -> None:
        """Wait QUIET seconds; fail if anything beyond the ``already`` collected arrived."""
        deadline = time.monotonic() + QUIET
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._pump(left)
        extra = self.received[already:]
        assert not extra, f"unexpected notifications: {extra!r}"

    def close(self) -> None:
        self.conn.close()


class Space:
    """Unique schemas for one test, a connection whose search_path is the first one, cleanup."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.admin = connect(dsn)
        self.admin.autocommit = True
        self.schemas: list[str] = []
        self.connections: list[Conn] = []
        self.tag = uuid.uuid4().hex[:8]
        self.schema = self.new_schema("pgpd_trig")
        self.conn = self.connect()

    def name(self, base: str) -> str:
        """A name unique to this test: channels are database-wide, and tests run concurrently
        with other suites that notify ordinary names such as ``orders``."""
        return f"{base}_{self.tag}"

    def new_schema(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.run(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        self.schemas.append(name)
        return name

    def connect(self, *, autocommit: bool = False) -> Conn:
        """A connection whose search_path is this test's schema, in the given mode."""
        conn = connect(self.dsn)
        self.connections.append(conn)
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        conn.commit()
        conn.autocommit = autocommit
        return conn

    def run(self, statement: sql.Composable | str, args: Any = None) -> list[Any]:
        """Run a statement on the autocommit admin connection; its rows, if any."""
        with self.admin.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description is not None else []

    def table(self, name: str, schema: str | None = None) -> sql.Identifier:
        return sql.Identifier(schema or self.schema, name)

    def create_table(self, name: str, columns: str, schema: str | None = None) -> None:
        self.run(sql.SQL("CREATE TABLE {} (" + columns + ")").format(self.table(name, schema)))

    def triggers_on(self, name: str, schema: str | None = None) -> list[str]:
        rows = self.run(
            "SELECT t.tgname FROM pg_trigger t"
            " JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal",
            (schema or self.schema, name),
        )
        return [row[0] for row in rows]

    def close(self) -> None:
        try:
            for conn in self.connections:
                conn.close()
            for schema in self.schemas:
                drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                self.run(drop)
        finally:
            self.admin.close()


@pytest.fixture
def space(dsn: str) -> Iterator[Space]:
    s = Space(dsn)
    yield s
    s.close()


@pytest.fixture
def listener(dsn: str) -> Iterator[Listener]:
    lis = Listener(dsn)
    yield lis
    lis.close()


@pytest.fixture
def ready(space: Space) -> Space:
    """A space in which the trigger function exists."""
    triggers.create_tables_notify_func(space.conn)
    return space


def write(space: Space, statement: sql.Composable | str, args: Any = None) -> None:
    """A user's write, committed from a session other than the test's main connection."""
    space.run(statement, args)


def insert(space: Space, table: str, values: str, schema: str | None = None) -> None:
    """INSERT literal ``values`` (SQL text written by the test) into ``table``, committed."""
    write(
        space, sql.SQL("INSERT INTO {} VALUES (" + values + ")").format(space.table(table, schema))
    )


# --- the payload: one notification per changed row, row JSON plus tg_op -------------------


def test_insert_sends_the_new_row_with_tg_op(ready: Space, listener: Listener) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int PRIMARY KEY, name text, paid boolean, note text")
    triggers.create_table_notify_trigger(ready.conn, orders)
    listener.listen(orders)

    insert(ready, orders, "1, 'tea', true, NULL")

    assert listener.take_one(orders) == {
        "id": 1,
        "name": "tea",
        "paid": True,
        "note": None,
        "tg_op": "INSERT",
    }


def test_update_sends_the_new_row(ready: Space, listener: Listener) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int PRIMARY KEY, name text")
    insert(ready, orders, "1, 'tea'")
    triggers.create_table_notify_trigger(ready.conn, orders)
    listener.listen(orders)

    write(ready, sql.SQL("UPDATE {} SET name = 'coffee'").format(ready.table(orders)))

    assert listener.take_one(orders) == {"id": 1, "name": "coffee", "tg_op": "UPDATE"}


def test_delete_sends_the_old_row(ready: Space, listener: Listener) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int PRIMARY KEY, name text")
    insert(ready, orders, "7, 'tea'")
    triggers.create_table_notify_trigger(ready.conn, orders)
    listener.listen(orders)

    write(ready, sql.SQL("DELETE FROM {}").format(ready.table(orders)))

    assert listener.take_one(orders) == {"id": 7, "name": "tea", "tg_op": "DELETE"}


def test_a_statement_changing_several_rows_sends_one_per_row_in_order(
    ready: Space, listener: Listener
) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int PRIMARY KEY")
    triggers.create_table_notify_trigger(ready.conn, orders)
    listener.listen(orders)

    write(ready, sql.SQL("INSERT INTO {} SELECT generate_series(1, 3)").format(ready.table(orders)))

    got = [json.loads(n.payload) for n in listener.take(3)]
    assert got == [{"id": i, "tg_op": "INSERT"} for i in (1, 2, 3)]


# --- names: case, schemas, channels, injection ----------------------------------------------


def test_mixed_case_table_notifies_its_exact_name(ready: Space, listener: Listener) -> None:
    mixed = ready.name("MixedCase")
    ready.create_table(mixed, "id int")
    triggers.create_table_notify_trigger(ready.conn, quoted(mixed))  # unquoted would fold
    listener.listen(mixed.lower())  # the folded name must stay silent
    listener.listen(mixed)

    insert(ready, mixed, "1")

    assert listener.take_one(mixed) == {"id": 1, "tg_op": "INSERT"}
    assert ready.triggers_on(mixed) == [f"{mixed}_notify_trig"]


def test_schema_qualified_table_gets_the_trigger_not_its_namesake(
    ready: Space, listener: Listener
) -> None:
    other = ready.new_schema("Other.Schema x")
    items = ready.name("items")
    ready.create_table(items, "id int", schema=other)
    ready.create_table(items, "id int")  # same name, in the search_path schema
    triggers.create_table_notify_trigger(ready.conn, items, schema=quoted(other))
    listener.listen(items)

    insert(ready, items, "1")
    listener.assert_silent()
    insert(ready, items, "2", schema=other)

    assert listener.take_one(items) == {"id": 2, "tg_op": "INSERT"}
    assert ready.triggers_on(items, other) == [f"{items}_notify_trig"]
    assert ready.triggers_on(items) == []


def test_channel_argument_overrides_the_table_name(ready: Space, listener: Listener) -> None:
    orders, events = ready.name("orders"), ready.name("Shop Events")
    ready.create_table(orders, "id int")
    triggers.create_table_notify_trigger(ready.conn, orders, channel=events)
    listener.listen(orders, events)

    insert(ready, orders, "1")

    assert listener.take_one(events) == {"id": 1, "tg_op": "INSERT"}


def test_channel_is_fixed_when_the_trigger_is_created(ready: Space, listener: Listener) -> None:
    before, after = ready.name("before"), ready.name("after")
    ready.create_table(before, "id int")
    triggers.create_table_notify_trigger(ready.conn, before)
    rename = sql.SQL("ALTER TABLE {} RENAME TO {}")
    ready.run(rename.format(ready.table(before), sql.Identifier(after)))
    listener.listen(before, after)

    insert(ready, after, "1")

    assert listener.take_one(before) == {"id": 1, "tg_op": "INSERT"}


WEIRD_NAMES = [
    'x"; DROP TABLE victim; --',
    "x'); DROP TABLE victim; --",
    "a space.a dot; \"quotes\" 'apostrophes' \\ é",
]


@pytest.mark.parametrize("weird", WEIRD_NAMES)
def test_no_table_schema_or_channel_name_can_inject_sql(
    ready: Space, listener: Listener, weird: str
) -> None:
    name = ready.name(weird)
    ready.create_table("victim", "id int")
    insert(ready, "victim", "42")
    odd_schema = ready.new_schema(weird[:40])
    ready.create_table(name, "id int PRIMARY KEY, body text", schema=odd_schema)
    ready.create_table(name, "id int")
    listener.listen(name, name + "!")

    with pytest.raises(ValueError, match="not an SQL identifier"):
        triggers.create_table_notify_trigger(ready.conn, name)  # unquoted: refused, never run
    triggers.create_table_notify_trigger(ready.conn, quoted(name))
    triggers.create_table_notify_trigger(
        ready.conn, quoted(name), schema=quoted(odd_schema), channel=name + "!"
    )
    insert(ready, name, "1")
    assert listener.take_one(name) == {"id": 1, "tg_op": "INSERT"}
    write(
        ready,
        sql.SQL("INSERT INTO {} VALUES (2, %s)").format(ready.table(name, odd_schema)),
        (weird,),
    )
    assert listener.take_one(name + "!") == {"id": 2, "body": weird, "tg_op": "INSERT"}
    triggers.drop_table_notify_trigger(ready.conn, quoted(name))
    triggers.drop_table_notify_trigger(ready.conn, quoted(name), schema=quoted(odd_schema))

    assert ready.run(sql.SQL("SELECT id FROM {}").format(ready.table("victim"))) == [(42,)]
    assert ready.triggers_on(name) == []
    assert ready.triggers_on(name, odd_schema) == []


@pytest.mark.parametrize(
    ("tablename", "schema", "error"),
    [
        ("", None, ValueError),
        ("a\x00b", None, ValueError),
        ("t" * 64, None, ValueError),
        ("é" * 32, None, ValueError),  # 32 characters, 64 bytes
        (5, None, TypeError),
        ("orders", "", ValueError),
        ("orders", "s" * 64, ValueError),
        ("orders", b"public", TypeError),
    ],
)
def test_bad_table_or_schema_names_are_refused_before_anything_is_sent(
    ready: Space, tablename: Any, schema: Any, error: type[Exception]
) -> None:
    pending = ready.conn.cursor()
    pending.execute("SELECT 1")  # opens a transaction that a sent statement would end
    for helper in (triggers.create_table_notify_trigger, triggers.drop_table_notify_trigger):
        with pytest.raises(error):
            helper(ready.conn, tablename, schema=schema)
        status = ready.conn.get_transaction_status()
        assert status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS


@pytest.mark.parametrize("channel", ["", "c" * 64, "é" * 32, "a\x00b"])
def test_bad_channels_are_refused_before_anything_is_sent(ready: Space, channel: str) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int")
    with pytest.raises(InvalidChannelName):
        triggers.create_table_notify_trigger(ready.conn, orders, channel=channel)
    assert ready.triggers_on(orders) == []


def test_a_63_byte_table_name_gets_a_63_byte_trigger_name(ready: Space, listener: Listener) -> None:
    name = ready.tag + "é" * 27 + "x"  # 8 + 54 + 1 = 63 bytes
    ready.create_table(name, "id int")
    triggers.create_table_notify_trigger(ready.conn, quoted(name))  # the tag may start with 0-9
    listener.listen(name)

    insert(ready, name, "1")

    assert listener.take_one(name) == {"id": 1, "tg_op": "INSERT"}
    (trigger,) = ready.triggers_on(name)
    # 51 bytes are left for the table's part: 8 + 21 * 2 = 50, and half an "é" is dropped.
    assert trigger == triggers.trigger_name(name) == ready.tag + "é" * 21 + "_notify_trig"
    triggers.drop_table_notify_trigger(ready.conn, quoted(name))
    assert ready.triggers_on(name) == []


def test_trigger_name_is_the_ancestors_for_ordinary_names() -> None:
    assert triggers.trigger_name("orders") == "orders_notify_trig"
    assert triggers.trigger_name("Orders") == "Orders_notify_trig"


# --- rows too big for NOTIFY --------------------------------------------------------------


def test_row_json_is_measured_in_bytes_and_a_row_of_8000_bytes_sends_its_key(
    ready: Space, listener: Listener
) -> None:
    assert ready.run("SHOW server_encoding") == [("UTF8",)], "the arithmetic assumes UTF-8"
    docs = ready.name("docs")
    ready.create_table(docs, "id int PRIMARY KEY, body text")
    triggers.create_table_notify_trigger(ready.conn, docs)
    listener.listen(docs)
    overhead = len(b'{"id":1,"body":"","tg_op":"INSERT"}')
    fits = "é" * ((7999 - overhead) // 2) + "x" * ((7999 - overhead) % 2)
    too_big = fits + "x"
    row = {"id": 1, "body": fits, "tg_op": "INSERT"}
    assert len(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()) == 7999
    assert len(too_big) < 4100  # counted in characters it would be far below the limit
    table = ready.table(docs)

    write(ready, sql.SQL("INSERT INTO {} VALUES (1, %s)").format(table), (fits,))
    assert listener.take_one(docs) == row

    write(ready, sql.SQL("INSERT INTO {} VALUES (2, %s)").format(table), (too_big,))
    expected = {"schema": ready.schema, "table": docs, "truncated": True, "key": {"id": 2}}
    assert listener.take_one(docs) == {"tg_op": "INSERT", **expected}
    stored = ready.run(sql.SQL("SELECT body FROM {} WHERE id = 2").format(table))
    assert stored == [(too_big,)]

    write(ready, sql.SQL("UPDATE {} SET body = body || 'y' WHERE id = 2").format(table))
    assert listener.take_one(docs) == {"tg_op": "UPDATE", **expected}
    write(ready, sql.SQL("DELETE FROM {} WHERE id = 2").format(table))
    assert listener.take_one(docs) == {"tg_op": "DELETE", **expected}


def test_oversized_row_sends_a_composite_key_in_key_order(ready: Space, listener: Listener) -> None:
    schema = ready.new_schema("Big Schema")
    big = ready.name("Big Table")
    columns = 'n int, "Region" text, body text, PRIMARY KEY ("Region", n)'
    ready.create_table(big, columns, schema=schema)
    triggers.create_table_notify_trigger(ready.conn, quoted(big), schema=quoted(schema))
    listener.listen(big)

    insert(ready, big, "7, 'eu', repeat('ж', 5000)", schema=schema)

    payload = listener.take_one(big)
    assert payload == {
        "tg_op": "INSERT",
        "schema": schema,
        "table": big,
        "truncated": True,
        "key": {"Region": "eu", "n": 7},
    }
    assert list(payload["key"]) == ["Region", "n"]


def test_oversized_row_without_primary_key_sends_a_null_key(
    ready: Space, listener: Listener
) -> None:
    logs = ready.name("logs")
    ready.create_table(logs, "body text")
    triggers.create_table_notify_trigger(ready.conn, logs)
    listener.listen(logs)

    insert(ready, logs, "repeat('x', 9000)")

    assert listener.take_one(logs) == {
        "tg_op": "INSERT",
        "schema": ready.schema,
        "table": logs,
        "truncated": True,
        "key": None,
    }


def test_oversized_key_sends_the_minimal_payload(ready: Space, listener: Listener) -> None:
    blobs = ready.name("blobs")
    ready.create_table(blobs, "k text PRIMARY KEY")
    triggers.create_table_notify_trigger(ready.conn, blobs)
    listener.listen(blobs)
    key = "é" * 4500  # 9000 bytes; compresses well enough for the index

    write(ready, sql.SQL("INSERT INTO {} VALUES (%s)").format(ready.table(blobs)), (key,))

    assert listener.take_one(blobs) == {
        "tg_op": "INSERT",
        "schema": ready.schema,
        "table": blobs,
        "truncated": True,
        "key": None,
    }
    stored = ready.run(sql.SQL("SELECT k = %s FROM {}").format(ready.table(blobs)), (key,))
    assert stored == [(True,)]


# --- transactions ----------------------------------------------------------------------


def test_notification_is_sent_at_commit_and_a_rollback_sends_nothing(
    ready: Space, listener: Listener
) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int")
    triggers.create_table_notify_trigger(ready.conn, orders)
    listener.listen(orders)
    writer = ready.connect()
    statement = sql.SQL("INSERT INTO {} VALUES (%s)").format(ready.table(orders))

    with writer.cursor() as cur:
        cur.execute(statement, (1,))
    listener.assert_silent()
    writer.rollback()
    listener.assert_silent()

    with writer.cursor() as cur:
        cur.execute(statement, (2,))
    listener.assert_silent()
    writer.commit()
    assert listener.take_one(orders) == {"id": 2, "tg_op": "INSERT"}


def test_helpers_commit_like_the_ancestor(ready: Space, listener: Listener) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int")
    ready.create_table("pending", "id int")
    with ready.conn.cursor() as cur:
        cur.execute("INSERT INTO pending VALUES (1)")  # uncommitted work on the same connection

    triggers.create_table_notify_trigger(ready.conn, orders)

    assert ready.conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert ready.triggers_on(orders) == [f"{orders}_notify_trig"]  # seen by another session
    assert ready.run(sql.SQL("SELECT id FROM {}").format(ready.table("pending"))) == [(1,)]
    listener.listen(orders)
    insert(ready, orders, "1")
    assert listener.take_one(orders) == {"id": 1, "tg_op": "INSERT"}


def test_a_failed_helper_rolls_back_and_leaves_the_connection_usable(ready: Space) -> None:
    ready.create_table("pending", "id int")
    with ready.conn.cursor() as cur:
        cur.execute("INSERT INTO pending VALUES (1)")

    with pytest.raises(psycopg2.errors.UndefinedTable):
        triggers.create_table_notify_trigger(ready.conn, "no_such_table")

    assert ready.conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    with ready.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pending")
        assert cur.fetchone() == (0,)


def test_trigger_needs_the_function_first(space: Space) -> None:
    orders = space.name("orders")
    space.create_table(orders, "id int")
    with pytest.raises(psycopg2.errors.UndefinedFunction):
        triggers.create_table_notify_trigger(space.conn, orders)
    assert space.triggers_on(orders) == []


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_replacing_a_trigger_is_atomic(ready: Space, listener: Listener, autocommit: bool) -> None:
    orders, elsewhere = ready.name("orders"), ready.name("elsewhere")
    conn = ready.connect(autocommit=autocommit)
    ready.create_table(orders, "id int")
    triggers.create_table_notify_trigger(conn, orders)
    # The existing trigger holds the function by OID; a new one cannot find it by name.
    hide = sql.SQL("ALTER FUNCTION {}() RENAME TO hidden_func")
    ready.run(hide.format(ready.table("tables_notify_func")))

    with pytest.raises(psycopg2.errors.UndefinedFunction):
        triggers.create_table_notify_trigger(conn, orders, channel=elsewhere)

    assert ready.triggers_on(orders) == [f"{orders}_notify_trig"]  # the DROP was undone
    listener.listen(orders, elsewhere)
    insert(ready, orders, "1")
    assert listener.take_one(orders) == {"id": 1, "tg_op": "INSERT"}


def test_helpers_work_on_an_autocommit_connection(ready: Space, listener: Listener) -> None:
    orders = ready.name("orders")
    conn = ready.connect(autocommit=True)
    triggers.create_tables_notify_func(conn)
    ready.create_table(orders, "id int")
    triggers.create_table_notify_trigger(conn, orders)
    listener.listen(orders)

    insert(ready, orders, "1")

    assert listener.take_one(orders) == {"id": 1, "tg_op": "INSERT"}


# --- creating again, dropping -------------------------------------------------------------


def test_creating_twice_keeps_one_trigger_and_can_move_the_channel(
    ready: Space, listener: Listener
) -> None:
    orders, moved = ready.name("orders"), ready.name("moved")
    ready.create_table(orders, "id int")
    triggers.create_table_notify_trigger(ready.conn, orders)
    triggers.create_table_notify_trigger(ready.conn, orders)
    listener.listen(orders, moved)

    insert(ready, orders, "1")
    assert listener.take_one(orders) == {"id": 1, "tg_op": "INSERT"}

    triggers.create_table_notify_trigger(ready.conn, orders, channel=moved)
    insert(ready, orders, "2")
    assert listener.take_one(moved) == {"id": 2, "tg_op": "INSERT"}
    assert ready.triggers_on(orders) == [f"{orders}_notify_trig"]


def test_drop_trigger_stops_notifications_and_is_idempotent(
    ready: Space, listener: Listener
) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int")
    triggers.create_table_notify_trigger(ready.conn, orders)
    listener.listen(orders)
    insert(ready, orders, "1")
    assert listener.take_one(orders) == {"id": 1, "tg_op": "INSERT"}

    triggers.drop_table_notify_trigger(ready.conn, orders)
    insert(ready, orders, "2")

    listener.assert_silent()
    assert ready.triggers_on(orders) == []
    triggers.drop_table_notify_trigger(ready.conn, orders)
    triggers.drop_table_notify_trigger(ready.conn, "no_such_table")
    triggers.drop_table_notify_trigger(ready.conn, orders, schema=ready.name("no_such_schema"))
    assert ready.conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_drop_function_refuses_while_in_use_unless_cascading(ready: Space) -> None:
    orders = ready.name("orders")
    ready.create_table(orders, "id int")
    triggers.create_table_notify_trigger(ready.conn, orders)

    with pytest.raises(psycopg2.errors.DependentObjectsStillExist):
        triggers.drop_tables_notify_func(ready.conn)
    assert ready.triggers_on(orders) == [f"{orders}_notify_trig"]

    triggers.drop_tables_notify_func(ready.conn, cascade=True)
    assert ready.triggers_on(orders) == []
    function = f'"{ready.schema}".tables_notify_func'
    assert ready.run("SELECT to_regproc(%s)", (function,)) == [(None,)]
    triggers.drop_tables_notify_func(ready.conn)  # already gone: no error


def test_a_trigger_created_by_hand_without_arguments_notifies_the_table_name(
    ready: Space, listener: Listener
) -> None:
    legacy = ready.name("legacy")
    ready.create_table(legacy, "id int")
    ready.run(
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE PROCEDURE {}()"
        ).format(
            sql.Identifier(f"{legacy}_notify_trig"),
            ready.table(legacy),
            ready.table("tables_notify_func"),
        )
    )
    listener.listen(legacy)

    insert(ready, legacy, "1")

    assert listener.take_one(legacy) == {"id": 1, "tg_op": "INSERT"}
    triggers.drop_table_notify_trigger(ready.conn, legacy)
    assert ready.triggers_on(legacy) == []
