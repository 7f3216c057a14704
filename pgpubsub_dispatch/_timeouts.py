"""Timeouts and deadlines: one reading of "how long may this take", for every public call.

Pure functions, any thread. A timeout is seconds as an ``int`` or ``float``: ``None``, infinity
or anything longer than :data:`NO_LIMIT_ABOVE` means "no limit"; NaN, a negative number or a
non-number is refused with the same error everywhere, before anything is done.
"""

from __future__ import annotations

import math
import time

__all__ = ["NO_LIMIT_ABOVE", "check_timeout", "deadline", "remaining", "seconds_until"]

NO_LIMIT_ABOVE = 1e8
"""Seconds (about three years) above which a timeout means "no limit".

Waits below it fit every primitive used (``select.poll`` milliseconds, ``Lock.acquire``), so a
huge timeout never overflows into an error after the call has taken effect.
"""

WAIT_SLICE = 3600.0
"""The longest single wait on a socket, in seconds; longer waits are made of several."""


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """Return ``timeout`` as seconds, or ``None`` for no limit.

    :param timeout: seconds (``int`` or ``float``, ``0`` only looks), or ``None``.
    :param name: how the argument is called, for the error message.
    :returns: a finite ``float`` of seconds, or ``None``.
    :raises TypeError: if ``timeout`` is not a number (``bool`` included) or ``None``.
    :raises ValueError: if it is NaN or negative.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{name} must be >= 0 seconds or None, not {timeout!r}")
    if timeout > NO_LIMIT_ABOVE:
        return None
    return float(timeout)


def deadline(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` instant ``timeout`` seconds from now (``None``: never).

    :param timeout: seconds, already checked with :func:`check_timeout`, or ``None``.
    """
    return None if timeout is None else time.monotonic() + timeout


def remaining(at: float | None) -> float | None:
    """Seconds left until the monotonic instant ``at`` (``0.0`` once passed; ``None``: never)."""
    if at is None:
        return None
    return max(0.0, at - time.monotonic())


def seconds_until(at: float | None) -> float:
    """Seconds to wait on a socket before looking again: up to ``at``, at most an hour."""
    left = remaining(at)
    return WAIT_SLICE if left is None else min(left, WAIT_SLICE)
