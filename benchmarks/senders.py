"""Sender processes: notifications come from other processes, so the receiver has the GIL alone.

A :class:`SenderPool` spawns its processes once per invocation (``spawn`` start method: nothing
of the parent's threads or connections is inherited). Each holds one psycopg2 connection in
autocommit with ``synchronous_commit = off``, which keeps the sender cheap (no WAL flush wait
per commit) without changing what a receiver sees. Two kinds of job:

- *batched*: ``transactions_per_trip`` transactions per query string, each committing
  ``per_transaction`` server-generated ``pg_notify`` calls with distinct payloads of
  ``payload_bytes`` (64 by default; the
  server would fold identical ones inside a transaction). The job is split between the
  processes; each reports when it started and finished, so the harness can print the senders'
  own rate next to the receiver's.
- *paced*: one notification per transaction at a fixed rate, the payload starting with
  ``"<sequence> <time.monotonic_ns()>"`` taken just before the statement is sent (CLOCK_MONOTONIC
  is system-wide on Linux, so the receiver can subtract it from its own reading).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import psycopg2
import psycopg2.extensions

__all__ = ["SendResult", "SenderPool", "SideConnection"]

_READY_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class SendResult:
    """What the sender processes did for one job.

    Attributes:
        sent: notifications committed.
        started_ns: ``time.monotonic_ns()`` when the first process began sending.
        finished_ns: ``time.monotonic_ns()`` when the last process finished.
        round_trip_us: median statement round trip (paced jobs only), µs.
    """

    sent: int
    started_ns: int
    finished_ns: int
    round_trip_us: float | None = None

    @property
    def rate(self) -> float:
        """Notifications committed per second, all processes together."""
        elapsed = (self.finished_ns - self.started_ns) / 1e9
        return self.sent / elapsed if elapsed > 0 else float("inf")


class SideConnection:
    """A plain autocommit psycopg2 connection of the harness itself (markers, gates, facts)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def notify(self, channel: str, payload: str = "") -> None:
        """Commit one notification."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def scalar(self, query: str) -> Any:
        """Run ``query`` and return the first column of its first row."""
        with self.conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
            return None if row is None else row[0]

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class _Job:
    """Jobs sent to some of the pool's processes; :meth:`wait` collects their answers."""

    def __init__(self, pipes: list[Connection]) -> None:
        self._pipes = pipes

    def wait(self, timeout: float) -> SendResult:
        """Wait for every process of the job; raise ``RuntimeError`` if one failed or is late."""
        deadline = time.monotonic() + timeout
        answers = []
        for pipe in self._pipes:
            try:
                if not pipe.poll(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"a sender process did not finish within {timeout} s")
                kind, value = pipe.recv()
            except (EOFError, OSError):
                raise RuntimeError("a sender process died") from None
            if kind != "done":
                raise RuntimeError(f"a sender process failed: {value}")
            answers.append(value)
        trips = [a[3] for a in answers if a[3] is not None]
        return SendResult(
            sent=sum(a[0] for a in answers),
            started_ns=min(a[1] for a in answers),
            finished_ns=max(a[2] for a in answers),
            round_trip_us=trips[0] if trips else None,
        )


class SenderPool:
    """Sender processes, started once and reused by every workload.

    :param dsn: where to connect.
    :param processes: how many sender processes to start.
    :param payload_bytes: the size of every payload (at least 40: sequence and timestamp).
    :raises RuntimeError: if a process cannot connect.
    """

    def __init__(self, dsn: str, processes: int, payload_bytes: int = 64) -> None:
        self.payload_bytes = payload_bytes
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        self._next = 0  # first payload number of the next batched job: payloads never repeat
        for _ in range(processes):
            mine, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(dsn, theirs), daemon=True)
            process.start()
            theirs.close()
            self._pipes.append(mine)
            self._processes.append(process)
        for pipe in self._pipes:
            try:
                if not pipe.poll(_READY_SECONDS):
                    raise EOFError
                kind, value = pipe.recv()
            except (EOFError, OSError):
                self.close()
                raise RuntimeError("a sender process did not start") from None
            if kind != "ready":
                self.close()
                raise RuntimeError(f"a sender process could not connect: {value}")

    @property
    def size(self) -> int:
        """The number of sender processes."""
        return len(self._pipes)

    def batched(
        self,
        channel: str,
        count: int,
        per_transaction: int = 100,
        transactions_per_trip: int = 10,
        processes: int | None = None,
        channels: int = 1,
    ) -> _Job:
        """Start sending ``count`` notifications on ``channel``, split between the processes.

        :param channels: with more than one, notification ``g`` goes to channel
            ``f"{channel}_{g % channels}"`` instead: the channels take turns.
        :returns: a job whose ``wait(timeout)`` gives the :class:`SendResult`.
        """
        pipes = self._pipes[: processes or len(self._pipes)]
        share, extra = divmod(count, len(pipes))
        for index, pipe in enumerate(pipes):
            mine = share + (1 if index < extra else 0)
            pipe.send(
                (
                    "batched",
                    channel,
                    self._next,
                    mine,
                    per_transaction,
                    transactions_per_trip,
                    self.payload_bytes,
                    channels,
                )
            )
            self._next += mine
        return _Job(pipes)

    def paced(self, channel: str, count: int, rate: float) -> _Job:
        """Start sending ``count`` timestamped notifications at ``rate`` per second (one process).

        :returns: a job whose ``wait(timeout)`` gives the :class:`SendResult`.
        """
        self._pipes[0].send(("paced", channel, count, rate, self.payload_bytes))
        return _Job(self._pipes[:1])

    def close(self) -> None:
        """Ask every process to exit, and end those that do not."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for pipe in self._pipes:
            pipe.close()
        self._pipes, self._processes = [], []


# ------------------------------------------------------------------ in the sender process


def _serve(dsn: str, pipe: Connection) -> None:
    """Body of a sender process: connect, then run jobs until told to stop."""
    try:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = off")
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("ready", os.getpid()))
    while True:
        try:
            message = pipe.recv()
        except EOFError:
            return
        if message[0] == "stop":
            conn.close()
            return
        try:
            if message[0] == "batched":
                pipe.send(("done", _send_batched(cur, *message[1:])))
            elif message[0] == "paced":
                pipe.send(("done", _send_paced(cur, *message[1:])))
            else:
                pipe.send(("error", f"unknown job {message[0]!r}"))
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))


def _send_batched(
    cur: psycopg2.extensions.cursor,
    channel: str,
    first: int,
    count: int,
    per_transaction: int,
    transactions_per_trip: int,
    payload_bytes: int,
    channels: int = 1,
) -> tuple[int, int, int, None]:
    """Commit ``count`` notifications, ``per_transaction`` per transaction, payload numbers
    ``first``, ``first + 1``, ... left-padded with ``x`` to ``payload_bytes`` characters
    (number ``g`` on channel ``f"{channel}_{g % channels}"`` when ``channels`` > 1)."""
    quoted = cur.mogrify("%s", (channel,)).decode()
    if channels > 1:
        quoted = f"{cur.mogrify('%s', (channel + '_',)).decode()} || (g % {int(channels)})"
    statements = []
    number, end = first, first + count
    while number < end:
        last = min(number + per_transaction, end) - 1
        statements.append(
            f"BEGIN; SELECT count(pg_notify({quoted}, lpad(g::text, {int(payload_bytes)}, 'x'))) "
            f"FROM generate_series({number}, {last}) g; COMMIT"
        )
        number = last + 1
    trips = [
        "; ".join(statements[i : i + transactions_per_trip])
        for i in range(0, len(statements), transactions_per_trip)
    ]
    started = time.monotonic_ns()
    for trip in trips:
        cur.execute(trip)
    return count, started, time.monotonic_ns(), None


def _send_paced(
    cur: psycopg2.extensions.cursor, channel: str, count: int, rate: float, payload_bytes: int
) -> tuple[int, int, int, float]:
    """Commit ``count`` notifications one per transaction, ``rate`` per second, timestamped."""
    interval = int(1e9 / rate)
    now = time.monotonic_ns
    trips = []
    started = now() + interval
    for sequence in range(count):
        due = started + sequence * interval
        ahead = due - now()
        if ahead > 0:
            time.sleep(ahead / 1e9)
        stamp = now()
        cur.execute(
            "SELECT pg_notify(%s, %s)", (channel, f"{sequence} {stamp} ".ljust(payload_bytes, "."))
        )
        trips.append(now() - stamp)
    return count, started, now(), statistics.median(trips) / 1000.0
