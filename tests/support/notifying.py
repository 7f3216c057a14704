"""Sending notifications from another session, and collecting what handlers receive."""

from __future__ import annotations

import threading
from typing import Any

import psycopg2.extensions

from .waiting import BOUND


def send(conn: psycopg2.extensions.connection, channel: str, payload: str = "") -> None:
    """NOTIFY from ``conn`` (autocommit) with the exact, case-sensitive channel name."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class Collector:
    """A handler that records every notification and lets a test wait for a count of them."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, notification: Any) -> None:
        with self._cond:
            self.items.append(notification)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = BOUND) -> list[Any]:
        """Wait until at least ``count`` items arrived; fail the test after ``timeout`` s."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.items) >= count, timeout)
            assert ok, f"expected {count} notifications within {timeout}s, got {self.items!r}"
            return list(self.items)

    @property
    def payloads(self) -> list[str]:
        with self._cond:
            return [n.payload for n in self.items]
