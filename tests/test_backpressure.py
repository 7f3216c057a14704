"""Backpressure bounds memory: with an executor full, the backlog stays in the server's queue.

While handlers on the executor are blocked, nothing runs on the listening session (the server
would send the whole backlog before answering any statement there): the heartbeat waits,
notify and queue_usage use a side connection, unlisten/unsubscribe take effect at once, and
listen/subscribe wait. Handlers on the executor that call the dispatcher never deadlock it.
Every notification still arrives once handlers are released: none lost, none duplicated, each
channel in order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import pytest

from pgpubsub_dispatch import Dispatcher

from .support.dispatching import unique
from .support.notifying import Collector, send
from .support.waiting import BOUND, wait_until

HEARTBEAT = 0.5
"""Seconds between heartbeats in these tests: several come due while handlers are blocked."""

BACKLOG = 200_000
"""Notifications committed while the handlers are blocked (100,000 per channel)."""

GROWTH_BOUND_MB = 20.0
"""Generous bound on RSS growth while the backlog waits: holding it all would take ~50 MB."""

HELD_BOUND = 5_000
"""Most notifications read from the server and not yet handled, with ``max_pending=1000``."""


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure of this process (``VmRSS``, ``VmHWM``), in kB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``); ``False`` where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def held(bus: Dispatcher) -> int:
    """Notifications read from the server and not yet handled (or dropped)."""
    stats = bus.stats()
    return stats.received - stats.dispatched - stats.dropped + stats.pending


def commit_backlog(sender: Any, first: str, second: str, count: int) -> None:
    """One transaction: payloads 1..count, even ones on ``first``, odd ones on ``second``."""
    with sender.cursor() as cur:
        cur.execute(
            "SELECT count(pg_notify(CASE WHEN i %% 2 = 0 THEN %s ELSE %s END, i::text))"
            " FROM generate_series(1, %s) AS i",
            (first, second, count),
        )


class Gated:
    """A handler that records payloads as ints and blocks until released (once armed)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.payloads: list[int] = []
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def __call__(self, notification: Any) -> None:
        self.entered.set()
        assert self.release.wait(BOUND * 6), "never released"
        with self._cond:
            self.payloads.append(int(notification.payload))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float) -> list[int]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.payloads) >= count, timeout), (
                f"{len(self.payloads)} of {count} arrived"
            )
            return list(self.payloads)


@pytest.mark.timeout(180)
def test_memory_stays_bounded_whatever_the_heartbeat_and_callers_do(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    even, odd, other = unique("even"), unique("odd"), unique("other")
    release, poke, handler_notified = threading.Event(), threading.Event(), threading.Event()
    first_call = threading.Event()
    got = {even: Gated(release), odd: Gated(release)}
    others = Collector()
    bus = Dispatcher(dsn, executor=pool, max_pending=1000, heartbeat_interval=HEARTBEAT)

    def even_handler(notification: Any) -> None:
        if not first_call.is_set():
            first_call.set()
            assert poke.wait(BOUND * 3)
            bus.notify(other, "from a handler on the executor", timeout=BOUND)
            handler_notified.set()
        got[even](notification)

    try:
        bus.subscribe(even, even_handler)
        bus.subscribe(odd, got[odd])
        bus.subscribe(other, others)
        bus.start(timeout=BOUND)
        baseline_kb = status_kb("VmRSS")
        peak_resettable = reset_peak_rss()

        commit_backlog(sender, even, odd, BACKLOG)
        wait_until(lambda: bus.stats().backpressure, "backpressure")
        bus.notify(other, "from another thread", timeout=BOUND)
        assert 0.0 <= bus.queue_usage(timeout=BOUND) <= 1.0
        poke.set()
        assert handler_notified.wait(BOUND), "notify() from a handler did not return"
        # Not a synchronisation: the duration under test, over which heartbeats come due.
        threading.Event().wait(4 * HEARTBEAT)

        assert bus.stats().backpressure and bus.stats().pending <= 1000
        assert held(bus) <= HELD_BOUND, held(bus)
        peak_kb = status_kb("VmHWM") if peak_resettable else status_kb("VmRSS")
        growth_mb = (peak_kb - baseline_kb) / 1024
        assert growth_mb < GROWTH_BOUND_MB, f"RSS grew by {growth_mb:.1f} MB"
        assert bus.connected and bus.stats().reconnects == 0

        release.set()
        half = BACKLOG // 2
        assert got[even].wait(half, 120) == list(range(2, BACKLOG + 1, 2))
        assert got[odd].wait(half, 120) == list(range(1, BACKLOG, 2))
        assert sorted(others.wait(2)[i].payload for i in range(2)) == [
            "from a handler on the executor",
            "from another thread",
        ]
        stats = bus.stats()
        assert stats.dropped == 0 and not stats.backpressure
        assert stats.received == BACKLOG + 2
    finally:
        release.set()
        poke.set()
        bus.stop(timeout=BOUND)


def test_handlers_that_notify_under_backpressure_never_deadlock(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    channel, echoes = unique("work"), unique("echo")
    echoed = Collector()
    with Dispatcher(dsn, executor=pool, max_pending=5) as bus:

        def echo(notification: Any) -> None:
            bus.notify(echoes, notification.payload, timeout=BOUND)

        bus.subscribe(channel, echo)
        bus.subscribe(echoes, echoed)
        with sender.cursor() as cur:
            cur.execute(
                "SELECT count(pg_notify(%s, i::text)) FROM generate_series(1, 200) AS i",
                (channel,),
            )
        # Every handler notifies while the executor is full; all must return.
        assert [n.payload for n in echoed.wait(200, BOUND * 3)] == [str(i) for i in range(1, 201)]
        assert bus.stats().dropped == 0


def test_channel_changes_from_handlers_under_backpressure_never_deadlock(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    channel, later, gone = unique("work"), unique("later"), unique("gone")
    release = threading.Event()
    returned = threading.Event()
    late, left = Collector(), Collector()
    # No heartbeat within the test: a call the loop forgot would wait for it (10 s by default).
    with Dispatcher(dsn, executor=pool, max_pending=5, heartbeat_interval=600) as bus:
        bus.subscribe(gone, left)

        def changes(notification: Any) -> None:
            if notification.payload == "1":
                assert release.wait(BOUND)
                bus.subscribe(later, late, timeout=BOUND)
                bus.unsubscribe(gone, left, timeout=BOUND)
                bus.listen(unique("plain"), timeout=BOUND)
                bus.unlisten(unique("never"), timeout=BOUND)
                returned.set()

        bus.subscribe(channel, changes)
        with sender.cursor() as cur:
            cur.execute(
                "SELECT count(pg_notify(%s, i::text)) FROM generate_series(1, 100) AS i",
                (channel,),
            )
        wait_until(lambda: bus.stats().backpressure, "backpressure")
        release.set()
        assert returned.wait(BOUND), "a handler's channel change did not return"
        assert later in bus.channels and gone not in bus.channels
        wait_until(lambda: not bus.stats().backpressure, "backpressure to end")
        bus.notify(unique("sync"), "after", timeout=BOUND)  # the catch-up LISTEN ran before
        send(sender, later, "subscribed from a handler")
        send(sender, gone, "unsubscribed from a handler")
        assert [n.payload for n in late.wait(1)] == ["subscribed from a handler"]
        bus.notify(unique("sync"), "after", timeout=BOUND)
    assert left.payloads == []


def test_unsubscribe_under_backpressure_takes_effect_at_once(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    channel, victim = unique("work"), unique("victim")
    release = threading.Event()
    gated = Gated(release)
    dropped = Collector()
    with Dispatcher(dsn, executor=pool, max_pending=5) as bus:
        bus.subscribe(channel, gated)
        bus.subscribe(victim, dropped)
        commit_backlog(sender, channel, victim, 2000)
        wait_until(lambda: bus.stats().backpressure, "backpressure")
        bus.unsubscribe(victim, dropped, timeout=BOUND)  # must not wait for the handlers
        assert victim not in bus.channels
        release.set()
        assert gated.wait(1000, BOUND * 3) == list(range(2, 2001, 2))
        assert dropped.payloads == [] or all(int(p) % 2 for p in dropped.payloads)
        handled_before = len(dropped.payloads)
        bus.subscribe(victim, dropped, timeout=BOUND)  # LISTENed again: delivered again
        send(sender, victim, "again")
        assert dropped.wait(handled_before + 1)[-1].payload == "again"


def test_listen_waits_for_backpressure_to_end(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    channel, wanted = unique("work"), unique("wanted")
    release = threading.Event()
    gated = Gated(release)
    arrived = Collector()
    with Dispatcher(dsn, executor=pool, max_pending=5) as bus:
        bus.subscribe(channel, gated)
        commit_backlog(sender, channel, channel, 100)
        wait_until(lambda: bus.stats().backpressure, "backpressure")
        with pytest.raises(TimeoutError):
            bus.subscribe(wanted, arrived, timeout=0.2)
        assert wanted not in bus.channels  # a call that raises has no effect

        done = threading.Event()

        def subscribe() -> None:
            bus.subscribe(wanted, arrived, timeout=BOUND)
            done.set()

        caller = threading.Thread(target=subscribe, daemon=True)
        caller.start()
        assert not done.wait(0.2), "subscribe() returned while backpressured"
        release.set()
        assert done.wait(BOUND), "subscribe() did not return once backpressure ended"
        caller.join(BOUND)
        send(sender, wanted, "after")
        assert [n.payload for n in arrived.wait(1)] == ["after"]
        assert gated.wait(100, BOUND) == list(range(1, 101))


def test_a_session_lost_under_backpressure_is_replaced_once_handlers_catch_up(
    dsn: str, sender: Any, pool: ThreadPoolExecutor
) -> None:
    import pgpubsub_dispatch as pg

    channel = unique("work")
    release = threading.Event()
    gated = Gated(release)
    back = threading.Event()
    bus = Dispatcher(dsn, executor=pool, max_pending=5, backoff_min=0.05, backoff_max=0.2)
    pg.reconnected.connect(lambda s, backend_pid: back.set(), sender=bus, weak=False)
    with bus:
        bus.subscribe(channel, gated)
        commit_backlog(sender, channel, channel, 100)
        wait_until(lambda: bus.stats().backpressure, "backpressure")
        with sender.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (bus.backend_pid,))
        release.set()
        assert back.wait(BOUND), "no reconnection"
        send(sender, channel, "0")
        wait_until(lambda: 0 in gated.payloads, "a notification sent after the reconnection")
    before = gated.payloads[: gated.payloads.index(0)]
    assert before == sorted(set(before))  # what was read before the loss: once, in order


def test_handlers_notify_promptly_through_heartbeats_under_lasting_backpressure(
    dsn: str,
) -> None:
    """Found by a new user's trial: once a heartbeat had begun just before backpressure, the
    dispatcher slept without a wake-up for its callers, and every handler's notify waited
    out its timeout (or, with none, for ever)."""
    work, echo = unique("work"), unique("echo")
    echoed = Collector()
    failures: list[BaseException] = []
    stop_sending = threading.Event()

    def handler(notification: Any) -> None:
        threading.Event().wait(0.0003)  # a little work per notification
        if int(notification.payload) % 50 == 0:
            try:
                bus.notify(echo, notification.payload, timeout=BOUND)
            except Exception as exc:  # the assertion below names it
                failures.append(exc)

    def send_until_stopped() -> None:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            number = 0
            while not stop_sending.is_set():
                send(conn, work, str(number))
                number += 1
        finally:
            conn.close()

    with ThreadPoolExecutor(4) as pool:
        bus = Dispatcher(
            dsn, executor=pool, max_pending=3, heartbeat_interval=0.3, heartbeat_timeout=0.2
        )
        bus.subscribe(work, handler)
        bus.subscribe(echo, echoed)
        with bus:
            sender = threading.Thread(target=send_until_stopped)
            sender.start()
            try:
                wait_until(lambda: bus.stats().backpressure, "backpressure")
                echoed.wait(20, timeout=BOUND)  # heartbeats come and go under backpressure
            finally:
                stop_sending.set()
                sender.join(BOUND)
            assert failures == []
