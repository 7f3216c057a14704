"""Watching dispatchers from outside: their threads, server sessions and lifecycle signals.

This module is a pytest plugin (loaded by ``tests/conftest.py``) for its ``bus`` fixture.
"""

from __future__ import annotations

import select
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.sql
import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher

from .waiting import BOUND


def unique(prefix: str = "t") -> str:
    """A channel name no other test (or test run) uses: ``prefix`` and 12 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bus(dsn: str) -> Iterator[Dispatcher]:
    """A started :class:`Dispatcher` on the test server; stopped (and checked) afterwards."""
    dispatcher = Dispatcher(dsn)
    dispatcher.start(timeout=BOUND)
    yield dispatcher
    dispatcher.stop(timeout=BOUND)
    assert not dispatcher.running


def dispatcher_threads() -> list[threading.Thread]:
    """The threads of every dispatcher of this process (named ``pgpubsub-dispatch-...``)."""
    return [t for t in threading.enumerate() if t.name.startswith("pgpubsub-dispatch-")]


def session_state(sender: psycopg2.extensions.connection, pid: int) -> str | None:
    """The ``pg_stat_activity`` state of server session ``pid``; ``None`` once it has ended."""
    with sender.cursor() as cur:
        cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cur.fetchone()
    return None if row is None else str(row[0])


def sessions_named(sender: Any, application_name: str) -> list[int]:
    """Pids of the server sessions whose ``application_name`` is ``application_name``."""
    with sender.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        )
        return [row[0] for row in cur.fetchall()]


class Listener:
    """A raw psycopg2 LISTENing session, to see what the dispatcher sends."""

    def __init__(self, dsn: str, *channels: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            for channel in channels:
                cur.execute(psycopg2.sql.SQL("LISTEN {}").format(psycopg2.sql.Identifier(channel)))

    def receive(self, count: int, timeout: float = BOUND) -> list[Any]:
        """Return at least ``count`` notifications; fail the test after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        got: list[Any] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"expected {count} notifications, got {got!r}"
            select.select([self.conn], [], [], remaining)
            self.conn.poll()
            got.extend(self.conn.notifies)
            self.conn.notifies.clear()
        return got

    def close(self) -> None:
        self.conn.close()


class Lifecycle:
    """Records connected / disconnected / reconnected of one dispatcher, waitable."""

    def __init__(self, bus: Dispatcher) -> None:
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()
        for name in ("connected", "disconnected", "reconnected"):
            getattr(pg, name).connect(self._recorder(name), sender=bus, weak=False)

    def _recorder(self, name: str) -> Any:
        def record(sender: Any, **kwargs: Any) -> None:
            with self._cond:
                self.events.append((name, kwargs))
                self._cond.notify_all()

        return record

    def count(self, name: str) -> int:
        with self._cond:
            return sum(1 for event, _ in self.events if event == name)

    def wait_for(self, name: str, count: int, timeout: float = BOUND) -> dict[str, Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.count(name) >= count, timeout)
            assert ok, f"no {count}x {name} within {timeout}s: {self.events!r}"
            return [kw for event, kw in self.events if event == name][count - 1]
