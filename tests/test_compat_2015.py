"""Programs written for the 2015 ``pgpubsub`` 0.0.5, run with only their import changed.

Each ``program_*`` function below is a small 2015-style program; its only "import" is its
``pgpubsub`` argument (and ``triggers``, for ``pgpubsub.triggers``). Tests marked IDENTICAL run
the same program against this package and against the 2015 package itself (see
``tests/support/ancestor.py``) and assert the same outcome, counting every notification. Tests
marked SAFETY check the only places where this package behaves differently, on purpose: text that
2015 pasted into SQL is refused with a clear error instead of being run.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

import pgpubsub_dispatch
from pgpubsub_dispatch import triggers as new_triggers

from .support.ancestor import ancestor_module
from .support.notifying import send
from .support.waiting import BOUND

Conn = psycopg2.extensions.connection


def unique(prefix: str = "compat") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def ancestor(tmp_path_factory: pytest.TempPathFactory) -> tuple[types.ModuleType, Any]:
    return ancestor_module(tmp_path_factory.mktemp("pgpubsub2015"))


@pytest.fixture(params=["pgpubsub_dispatch", "pgpubsub 0.0.5"])
def flavour(request: pytest.FixtureRequest, ancestor: Any) -> tuple[types.ModuleType, Any]:
    """(``pgpubsub``, ``pgpubsub.triggers``) as a 2015 program sees them, from either package."""
    if request.param == "pgpubsub_dispatch":
        return pgpubsub_dispatch, new_triggers
    return ancestor  # type: ignore[no-any-return]


def ours(flavour: tuple[types.ModuleType, Any]) -> bool:
    return flavour[0] is pgpubsub_dispatch


def collect(pubsub: Any, count: int) -> list[Any]:
    """2015-style: get_event(select_timeout=...) until ``count`` events, bounded in time."""
    got: list[Any] = []
    deadline = time.monotonic() + BOUND
    while len(got) < count and time.monotonic() < deadline:
        event = pubsub.get_event(select_timeout=0.2)
        if event is not None:
            got.append(event)
    return got


def quiet(pubsub: Any) -> list[Any]:
    """What else arrives within 0.3 s (a notification that must not come would, by then)."""
    return pubsub.get_events(select_timeout=0.3) or []


def sessions(sender: Conn, application_name: str) -> int:
    with sender.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )
        return int(cur.fetchone()[0])


def terminate(sender: Conn, pid: int) -> None:
    with sender.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))


# ------------------------------------------------------------------ 1. PubSub(your connection)


def program_own_connection(pgpubsub: Any, dsn: str, channel: str, sender: Conn) -> dict[str, Any]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    pubsub = pgpubsub.PubSub(conn)
    pubsub.listen(channel)
    pubsub.notify(channel, "mine")
    send(sender, channel, "theirs")
    events = collect(pubsub, 2)
    with conn.cursor() as cur:  # the program keeps using its connection
        cur.execute("SELECT 41 + 1")
        answer = cur.fetchone()[0]
    result = {
        "events": [(e.channel, e.payload) for e in events],
        "own": [e.pid == pubsub.conn.get_backend_pid() for e in events],
        "more": quiet(pubsub),
        "answer": answer,
    }
    pubsub.close()
    result["closed"] = bool(conn.closed)
    return result


def test_pubsub_built_from_your_own_connection(flavour: Any, dsn: str, sender: Conn) -> None:
    """IDENTICAL: listen, notify, receive; your connection keeps working; close() closes it."""
    channel = unique()
    result = program_own_connection(flavour[0], dsn, channel, sender)
    assert result == {
        "events": [(channel, "mine"), (channel, "theirs")],
        "own": [True, False],
        "more": [],
        "answer": 42,
        "closed": True,
    }


def test_pubsub_from_your_connection_listens_on_a_session_of_its_own(dsn: str) -> None:
    """DIFFERS (thread safety): the listening session is opened with your connection's
    parameters; your connection runs no LISTEN, and pubsub.conn stands in for it."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    pubsub = pgpubsub_dispatch.PubSub(conn)
    try:
        pubsub.listen(unique())
        assert pubsub.conn.get_backend_pid() != conn.get_backend_pid()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_listening_channels()")
            assert cur.fetchone()[0] == 0
        assert pubsub.conn.dsn == conn.dsn  # everything else is your connection's
    finally:
        pubsub.close()
    assert conn.closed


def test_a_dropped_pubsub_leaves_your_connection_open(dsn: str, sender: Conn) -> None:
    conn = psycopg2.connect(dsn, application_name=unique("adopted"))
    conn.autocommit = True
    pubsub = pgpubsub_dispatch.PubSub(conn)
    pubsub.listen(unique())
    del pubsub
    gc.collect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()


# --------------------------------------------------------- 2. pubsub.conn as a psycopg2 connection


def program_uses_pubsub_conn(pgpubsub: Any, dsn: str, channel: str) -> dict[str, Any]:
    pubsub = pgpubsub.connect(dsn)
    pubsub.listen(channel)
    cur = pubsub.conn.cursor()
    cur.execute("SELECT pg_notify(%s, %s)", (channel, "via cursor"))
    with pubsub.conn.cursor() as cur2:
        cur2.execute("SELECT current_database()")
        database = cur2.fetchone()[0]
    events = collect(pubsub, 1)
    result = {
        "events": [e.payload for e in events],
        "autocommit": pubsub.conn.autocommit,
        "closed before": bool(pubsub.conn.closed),
        "database": database,
        "more": quiet(pubsub),
    }
    pubsub.conn.close()
    result["closed after"] = bool(pubsub.conn.closed)
    return result


def test_pubsub_conn_works_as_a_connection(flavour: Any, dsn: str) -> None:
    """IDENTICAL: cursor(), autocommit, closed and close() on pubsub.conn."""
    channel = unique()
    result = program_uses_pubsub_conn(flavour[0], dsn, channel)
    assert result == {
        "events": ["via cursor"],
        "autocommit": True,
        "closed before": False,
        "database": psycopg2.extensions.parse_dsn(dsn).get("dbname", result["database"]),
        "more": [],
        "closed after": True,
    }


def test_pubsub_conn_is_safe_from_many_threads(dsn: str) -> None:
    """DIFFERS (thread safety): 8 threads use pubsub.conn's cursors and notify() at once; the
    dispatcher's own connection is never theirs, and every notification arrives."""
    channel = unique()
    errors: list[BaseException] = []
    with pgpubsub_dispatch.connect(dsn) as pubsub:
        pubsub.listen(channel)

        def worker(index: int) -> None:
            try:
                for i in range(10):
                    with pubsub.conn.cursor() as cur:
                        cur.execute("SELECT pg_notify(%s, %s)", (channel, f"c{index}-{i}"))
                    pubsub.notify(channel, f"n{index}-{i}")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND)
        assert errors == []
        payloads = sorted(e.payload for e in collect(pubsub, 160))
        expected = sorted(f"{k}{i}-{j}" for k in "cn" for i in range(8) for j in range(10))
        assert payloads == expected
        assert quiet(pubsub) == []
        with pytest.raises(AttributeError, match="get_event"):
            pubsub.conn.notifies  # noqa: B018 - the listening session is not this one


# ----------------------------------------------------------------- 3. waiting: select_timeout


def program_waits(pgpubsub: Any, dsn: str, channel: str, sender: Conn) -> dict[str, Any]:
    pubsub = pgpubsub.connect(dsn)
    pubsub.listen(channel)
    nothing = pubsub.get_events()
    timer = threading.Timer(0.3, send, args=(sender, channel, "late"))
    started = time.monotonic()
    timer.start()
    late = pubsub.get_event(select_timeout=BOUND)
    waited_for_late = time.monotonic() - started
    timer.join(BOUND)
    started = time.monotonic()
    none = pubsub.get_event(0.5)
    waited_for_none = time.monotonic() - started
    for payload in ("a", "b", "c"):
        send(sender, channel, payload)
    batch: list[Any] = []
    deadline = time.monotonic() + BOUND
    while len(batch) < 3 and time.monotonic() < deadline:
        batch.extend(pubsub.get_events(select_timeout=0.5) or [])
    pubsub.close()
    return {
        "nothing": nothing,
        "late": late.payload,
        "waited for late": 0.25 < waited_for_late < BOUND / 2,
        "none": none,
        "waited for none": 0.45 < waited_for_none < 2,
        "batch": [e.payload for e in batch],
    }


def test_get_event_and_get_events_wait_as_in_2015(flavour: Any, dsn: str, sender: Conn) -> None:
    """IDENTICAL: get_event(select_timeout=...), get_event(0.5), get_events(select_timeout=...)
    wait for the first notification up to the timeout; get_events() is None when none waits."""
    result = program_waits(flavour[0], dsn, unique(), sender)
    assert result == {
        "nothing": None,
        "late": "late",
        "waited for late": True,
        "none": None,
        "waited for none": True,
        "batch": ["a", "b", "c"],
    }


# ------------------------------------------------------------- 4. channel names as identifiers


def program_identifiers(pgpubsub: Any, dsn: str, tag: str, sender: Conn) -> dict[str, Any]:
    pubsub = pgpubsub.connect(dsn)
    pubsub.listen(f'"insertCaught_{tag}"')  # pre-quoted: exact
    pubsub.listen(f"NewOrders_{tag}")  # unquoted: folded, like the senders' NOTIFY NewOrders
    with sender.cursor() as cur:
        cur.execute(f"NOTIFY NewOrders_{tag}, 'sql unquoted'")
        cur.execute(f"NOTIFY \"insertCaught_{tag}\", 'sql quoted'")
        cur.execute("SELECT pg_notify(%s, 'exact')", (f"insertCaught_{tag}",))
        cur.execute("SELECT pg_notify(%s, 'other case')", (f"NewOrders_{tag}",))  # not listened
    pubsub.notify(f"neworders_{tag}", "own, exact")  # notify is exact, as pg_notify was
    events = collect(pubsub, 4)
    more = quiet(pubsub)
    pubsub.unlisten(f"NEWORDERS_{tag}")
    with sender.cursor() as cur:
        cur.execute(f"NOTIFY NewOrders_{tag}, 'after unlisten'")
    after = quiet(pubsub)
    pubsub.close()
    return {
        "events": [(e.channel, e.payload) for e in events],
        "more": more,
        "after": after,
    }


def test_channel_names_are_read_as_sql_identifiers(flavour: Any, dsn: str, sender: Conn) -> None:
    """IDENTICAL: unquoted names fold to lower case, double-quoted ones are exact."""
    tag = uuid.uuid4().hex[:8]
    result = program_identifiers(flavour[0], dsn, tag, sender)
    assert result == {
        "events": [
            (f"neworders_{tag}", "sql unquoted"),
            (f"insertCaught_{tag}", "sql quoted"),
            (f"insertCaught_{tag}", "exact"),
            (f"neworders_{tag}", "own, exact"),
        ],
        "more": [],
        "after": [],
    }


def test_unlisten_star_unlistens_everything(flavour: Any, dsn: str, sender: Conn) -> None:
    """IDENTICAL: unlisten('*') is UNLISTEN *."""
    one, two = unique(), unique()
    pubsub = flavour[0].connect(dsn)
    try:
        pubsub.listen(one)
        pubsub.listen(two)
        pubsub.unlisten("*")
        send(sender, one, "x")
        send(sender, two, "y")
        assert quiet(pubsub) == []
    finally:
        pubsub.close()


@pytest.mark.parametrize(
    "text",
    ["x; SELECT pg_notify(%(probe)s, %(probe)s)", '"x', 'x"', '""', "1abc", "a b", "a-b", 'U&"x"'],
)
def test_text_that_is_not_one_identifier_is_refused(dsn: str, sender: Conn, text: str) -> None:
    """SAFETY: 2015 ran ``LISTEN <text>``; anything but one identifier is InvalidChannelName,
    and nothing reaches the server."""
    probe = unique()
    with pgpubsub_dispatch.connect(dsn) as pubsub:
        pubsub.listen(probe)
        written = text % {"probe": f"'{probe}'"} if "%(" in text else text
        with pytest.raises(pgpubsub_dispatch.InvalidChannelName, match="not an SQL identifier"):
            pubsub.listen(written)
        with pytest.raises(pgpubsub_dispatch.InvalidChannelName):
            pubsub.unlisten(written)
        assert pubsub.dispatcher.channels == frozenset({probe})
        assert quiet(pubsub) == []


def test_the_2015_package_ran_such_text_as_sql(ancestor: Any, dsn: str) -> None:
    """What the SAFETY difference above prevents: 2015 executed the rest of the name."""
    probe = unique()
    pubsub = ancestor[0].connect(dsn)
    try:
        pubsub.listen(probe)
        pubsub.listen(f"x; SELECT pg_notify('{probe}', 'injected')")
        assert [e.payload for e in collect(pubsub, 1)] == ["injected"]
    finally:
        pubsub.close()


# ------------------------------------------------------------------------------- 5. triggers


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    """A schema of the test's own, so the 2015 trigger function never replaces anyone's."""
    name = unique("compat_schema")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    conn.close()


def program_triggers(
    pgpubsub: Any, triggers: Any, dsn: str, schema: str, tag: str
) -> dict[str, Any]:
    conn = psycopg2.connect(dsn, options=f"-c search_path={schema}")
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE OrderLines_{tag} (id int PRIMARY KEY, qty int)")
    conn.commit()
    returned = [
        triggers.create_tables_notify_func(conn),
        triggers.create_table_notify_trigger(conn, f"OrderLines_{tag}"),
    ]
    pubsub = pgpubsub.connect(dsn)
    pubsub.listen(f"OrderLines_{tag}")  # folded, like the table's name and so the channel
    cur.execute(f"INSERT INTO OrderLines_{tag} VALUES (1, 2)")
    cur.execute(f"UPDATE OrderLines_{tag} SET qty = 3")
    cur.execute(f"DELETE FROM OrderLines_{tag}")
    conn.commit()
    events = collect(pubsub, 3)
    more = quiet(pubsub)
    pubsub.close()
    conn.close()
    return {
        "returned": [isinstance(r, psycopg2.extensions.cursor) for r in returned],
        "events": [(e.channel, e.payload.replace(" ", "")) for e in events],
        "more": more,
    }


def test_trigger_helpers_read_table_names_as_2015_did(flavour: Any, dsn: str, schema: str) -> None:
    """IDENTICAL: an unquoted mixed-case table name is folded; the helpers return the cursor;
    every row change notifies the table's (folded) name with the row and its tg_op."""
    tag = uuid.uuid4().hex[:8]
    result = program_triggers(*flavour, dsn, schema, tag)
    channel = f"orderlines_{tag}"
    assert result == {
        "returned": [True, True],
        "events": [
            (channel, '{"id":1,"qty":2,"tg_op":"INSERT"}'),
            (channel, '{"id":1,"qty":3,"tg_op":"UPDATE"}'),
            (channel, '{"id":1,"qty":3,"tg_op":"DELETE"}'),
        ],
        "more": [],
    }


def test_trigger_helpers_refuse_a_table_name_that_is_not_an_identifier(
    dsn: str, schema: str
) -> None:
    """SAFETY: 2015 pasted the name into CREATE TRIGGER; here it is refused before any SQL."""
    conn = psycopg2.connect(dsn, options=f"-c search_path={schema}")
    try:
        with pytest.raises(ValueError, match="not an SQL identifier"):
            new_triggers.create_table_notify_trigger(conn, "t; DROP SCHEMA public")
        assert conn.status == psycopg2.extensions.STATUS_READY  # nothing was sent
    finally:
        conn.close()


# ------------------------------------------------------------------------ 6. lost connection


def program_echo(
    pgpubsub: Any, dsn: str, channel: str, on_listening: Any, on_echo: Any
) -> dict[str, Any]:
    """The 2015 README's echo loop, with a counter that would show a storm (and two hooks)."""
    pubsub = pgpubsub.connect(dsn)
    my_pid = pubsub.conn.get_backend_pid()
    pubsub.listen(channel)
    on_listening()
    echoed = 0
    ended: BaseException | None = None
    try:
        for e in pubsub.events(select_timeout=0.5):
            sender_pid = e.pid
            if sender_pid != my_pid:
                pubsub.notify(channel, e.payload)
                echoed += 1
                on_echo(my_pid)
                if echoed >= 50:
                    break  # an echo storm
    except psycopg2.Error as exc:
        ended = exc
    pubsub.close()
    return {"echoed": echoed, "ended with": type(ended)}


def test_a_lost_connection_ends_the_echo_loop_with_an_error(
    flavour: Any, dsn: str, sender: Conn
) -> None:
    """IDENTICAL: no silent reconnection, so no new pid and no echo storm: after its first
    echo its session is terminated, and the loop ends with a psycopg2.OperationalError (ours:
    ConnectionLost, a subclass)."""
    channel = unique()
    listening = threading.Event()
    result: dict[str, Any] = {}
    killer = psycopg2.connect(dsn)
    killer.autocommit = True

    def run() -> None:
        result.update(
            program_echo(
                flavour[0], dsn, channel, listening.set, lambda pid: terminate(killer, pid)
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert listening.wait(BOUND)
        send(sender, channel, "hello")
        thread.join(BOUND)
        assert not thread.is_alive()
    finally:
        killer.close()
    assert result == {"echoed": 1, "ended with": result["ended with"]}
    assert issubclass(result["ended with"], psycopg2.OperationalError)


def test_reconnection_is_an_opt_in_and_changes_the_pid(dsn: str, sender: Conn) -> None:
    """DIFFERS (opt-in only): connect(..., reconnect=True) reconnects and LISTENs again, with a
    new backend pid: a loop that stored its pid once must re-read it (see the README)."""
    channel = unique()
    with pgpubsub_dispatch.connect(dsn, reconnect=True) as pubsub:
        pubsub.listen(channel)
        old_pid = pubsub.conn.get_backend_pid()
        terminate(sender, old_pid)
        deadline = time.monotonic() + BOUND
        while pubsub.backend_pid in (None, old_pid) and time.monotonic() < deadline:
            pubsub.get_event(select_timeout=0.05)
        new_pid = pubsub.conn.get_backend_pid()
        assert new_pid != old_pid
        send(sender, channel, "after")
        assert [e.payload for e in collect(pubsub, 1)] == ["after"]


# ---------------------------------------------------------------- 7. close() from another thread


def program_closed_from_another_thread(pgpubsub: Any, dsn: str, channel: str) -> dict[str, Any]:
    pubsub = pgpubsub.connect(dsn)
    pubsub.listen(channel)
    outcome: dict[str, Any] = {}
    ready = threading.Event()

    def loop() -> None:
        ready.set()
        try:
            for _ in pubsub.events(select_timeout=0.5):
                pass
        except Exception as exc:
            outcome["ended with"] = type(exc)
        outcome["ended at"] = time.monotonic()

    thread = threading.Thread(target=loop)
    thread.start()
    ready.wait(BOUND)
    closed_at = time.monotonic()
    pubsub.close()
    thread.join(BOUND)
    outcome["took"] = outcome.pop("ended at", float("inf")) - closed_at
    return outcome


def test_close_from_another_thread_ends_a_waiting_events_loop(flavour: Any, dsn: str) -> None:
    """IDENTICAL: the loop ends with an exception within about one select_timeout (ours: at
    once). Only its class differs: 2015's depended on the race (select() on the closed socket
    raised OSError, or fileno() psycopg2.InterfaceError); ours is always PubSubClosed, a
    psycopg2.InterfaceError ("connection already closed")."""
    outcome = program_closed_from_another_thread(flavour[0], dsn, unique())
    expected = psycopg2.InterfaceError if ours(flavour) else (OSError, psycopg2.Error)
    assert issubclass(outcome["ended with"], expected)
    assert outcome["took"] < 1.5


# -------------------------------------------------------------- 8. dropped without close()


def program_django_views(pgpubsub: Any, dsn: str, app: str, channel: str) -> None:
    """A connect() per request, never closed."""
    for i in range(30):
        pubsub = pgpubsub.connect(dsn, application_name=app)
        pubsub.listen(channel)
        pubsub.notify(channel, str(i))
        pubsub.get_event(select_timeout=1)


def test_dropped_pubsubs_release_their_sessions(flavour: Any, dsn: str, sender: Conn) -> None:
    """IDENTICAL: 30 connect()s never closed leave no server session once collected (ours
    also leaves no thread)."""
    app = unique("dropped")
    before = {t for t in threading.enumerate() if t.name.startswith("pgpubsub")}
    program_django_views(flavour[0], dsn, app, unique())
    gc.collect()
    deadline = time.monotonic() + BOUND
    while sessions(sender, app) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)  # a bounded poll of the server's own view, not synchronisation
    assert sessions(sender, app) == 0
    left = [t for t in threading.enumerate() if t.name.startswith("pgpubsub")]
    for thread in left:
        if thread not in before:
            thread.join(max(0.0, deadline - time.monotonic()))
    assert not [t for t in left if t.is_alive() and t not in before]


# ------------------------------------------------------------------- types under mypy --strict

USER_PROGRAM = """
import pgpubsub_dispatch as pgpubsub
from pgpubsub_dispatch.notification import Notification


def main(dsn: str) -> list[str]:
    pubsub = pgpubsub.connect(dsn)
    pubsub.listen("orders")
    payloads: list[str] = []
    first = pubsub.get_event(select_timeout=0.5)
    if first is not None:
        payloads.append(first.payload)
    batch = pubsub.get_events()
    if batch is not None:
        payloads.extend(n.channel for n in batch)
    for event in pubsub.events(select_timeout=1, yield_timeouts=True):
        if event is None:
            break
        one: Notification = event
        pid: int = one.pid
    my_pid: int = pubsub.conn.get_backend_pid()
    pubsub.close()
    return payloads
"""

WRONG_PROGRAM = """
import pgpubsub_dispatch as pgpubsub

pid: int = pgpubsub.connect("").get_event()
"""


@pytest.mark.timeout(180)
def test_a_2015_style_program_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    (tmp_path / "user_program.py").write_text(textwrap.dedent(USER_PROGRAM))
    (tmp_path / "wrong_program.py").write_text(textwrap.dedent(WRONG_PROGRAM))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "user_program.py",
            "wrong_program.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(Path(pgpubsub_dispatch.__file__).parent.parent)},
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[0] for line in errors] == ["wrong_program.py"], done.stdout
    assert "Notification | None" in errors[0]  # a real type, not Any
