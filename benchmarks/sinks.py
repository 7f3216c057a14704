"""The handlers every receiver calls once per notification: counting, or timing latency.

The same sink object is the no-op handler subscribed to our ``Dispatcher``, the callable the
bare loops call, the receiver connected to the naive blinker signal and the target of the
asyncpg listener, so every receiver does the same per-notification work on top of its own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["CountingSink", "LatencySink", "Sink"]

_now = time.monotonic_ns


class Sink:
    """Base of the sinks: counts calls and says when ``target`` is reached.

    Attributes:
        target: the number of notifications to wait for.
        count: notifications seen so far.
        finished: ``True`` once ``count`` reached ``target`` (a plain attribute: cheap to poll).
        event: set at the same moment, for waiting threads.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.finished = False
        self.event = threading.Event()

    def __call__(self, notification: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def wait(self, timeout: float) -> bool:
        """Block until ``target`` notifications arrived or ``timeout`` seconds passed."""
        return self.event.wait(timeout)


class CountingSink(Sink):
    """Count notifications; note the monotonic time of the first and of the ``target``-th."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.first_ns = 0
        self.last_ns = 0

    def __call__(self, notification: Any) -> None:
        count = self.count + 1
        self.count = count
        if count == 1:
            self.first_ns = _now()
        if count == self.target:
            self.last_ns = _now()
            self.finished = True
            self.event.set()


class LatencySink(Sink):
    """Record ``(monotonic ns at the call, payload)`` for each notification.

    The payload starts with ``"<sequence> <monotonic ns before the sender's statement>"``;
    parsing waits until the measurement is over (:meth:`latencies_us`).
    """

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.records: list[tuple[int, str]] = []

    def __call__(self, notification: Any) -> None:
        self.records.append((_now(), notification.payload))
        count = self.count + 1
        self.count = count
        if count == self.target:
            self.finished = True
            self.event.set()

    def latencies_us(self, skip: int) -> list[float]:
        """Latency of each sample in µs, in sequence order, without the first ``skip`` ones."""
        samples = []
        for received, payload in self.records:
            fields = payload.split(" ", 2)
            if len(fields) < 3 or not (fields[0].isdigit() and fields[1].isdigit()):
                continue  # not a sample (e.g. a wake-up sent to stop a receiver)
            if int(fields[0]) >= skip:
                samples.append((received - int(fields[1])) / 1000.0)
        return samples
