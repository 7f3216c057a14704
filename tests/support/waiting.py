"""Bounded waits: how long a test may wait, and the one poll of state that has no event."""

from __future__ import annotations

import time
from collections.abc import Callable

BOUND = 10.0
"""Seconds any single wait in a test may take before the test fails."""

POLL_INTERVAL = 0.005
"""Seconds between two looks at the state :func:`wait_until` polls."""


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = BOUND,
    interval: float = POLL_INTERVAL,
) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout`` seconds.

    For state that no event or signal announces (a server session ending, a thread gone, a
    public counter): prefer a ``threading.Event``, a ``Condition`` or a signal when there is one.

    :param predicate: a look at public state, called until it returns true.
    :param what: what is awaited, for the failure message.
    :param timeout: seconds to wait at most.
    :param interval: seconds between two calls of ``predicate`` (a query costs the server).
    :raises AssertionError: if ``predicate()`` is still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)
