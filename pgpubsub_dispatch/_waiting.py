"""Waiting on sockets: the one place where the dispatcher thread blocks.

Uses ``select.poll`` where the platform has it (no FD_SETSIZE limit, so a process with more
than 1024 open files still works) and ``select.select`` elsewhere. :func:`wait` and
:meth:`Waker.drain`/:meth:`Waker.disarm` run on the dispatcher thread; :meth:`Waker.wake` on
any thread.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Collection
from typing import Any

__all__ = ["Waker", "wait"]


def wait(reads: list[int], writes: list[int], timeout: float | None) -> Collection[int]:
    """Block until one of the descriptors is ready or ``timeout`` seconds pass.

    :param reads: file descriptors to wait on for reading.
    :param writes: file descriptors to wait on for writing.
    :param timeout: seconds (``None`` waits without end; ``0`` only looks).
    :returns: the descriptors that are ready (readable, writable, or in error/hang-up, which
        the caller discovers by reading), to test with ``in``; empty on timeout.
    """
    if _HAVE_POLL:
        millis = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return dict(_poller(reads, writes).poll(millis))  # descriptor -> events
    readable, writable, errored = select.select(reads, writes, reads + writes, timeout)
    return {*readable, *writable, *errored}


_HAVE_POLL = hasattr(select, "poll")

_pollers = threading.local()
"""This thread's poll objects by descriptors: a poll object serves one thread at a time."""

_MAX_POLLERS = 8


def _poller(reads: list[int], writes: list[int]) -> Any:
    """A ``select.poll`` object for these descriptors, made once per thread and reused.

    The dispatcher thread waits on the same two or three sets over and over (twice per
    ``notify``); making and registering a poll object each time cost more than the wait.
    """
    key = (*reads, -1, *writes)
    cache: dict[tuple[int, ...], Any] | None = getattr(_pollers, "cache", None)
    if cache is None:
        cache = _pollers.cache = {}
    poller = cache.get(key)
    if poller is None:
        if len(cache) >= _MAX_POLLERS:  # descriptors of closed connections: start afresh
            cache.clear()
        poller = cache[key] = select.poll()
        for fd in reads:
            poller.register(fd, select.POLLIN)
        for fd in writes:
            poller.register(fd, select.POLLOUT)
    return poller


_DRAIN_BYTES = 4096


class Waker:
    """A socket pair that lets any thread wake the dispatcher thread out of :func:`wait`.

    Callers' threads call :meth:`wake` after queueing work; only the first call after the
    dispatcher :meth:`disarm`-ed writes a byte, so a busy dispatcher (one that will look at
    the queue anyway when its query completes) costs its callers no system call. The
    dispatcher thread drains with :meth:`drain` and disarms only just before it goes idle,
    then looks at the queue once more before waiting.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._armed = False

    def fileno(self) -> int:
        """Return the readable descriptor (``int``)."""
        return self._reader.fileno()

    def wake(self) -> None:
        """Make the dispatcher look at its queue soon. Never blocks; any thread."""
        if self._armed:
            return  # a byte is on its way, or the dispatcher is busy and will look anyway
        self.wake_now()

    def wake_now(self) -> None:
        """Interrupt the dispatcher's current wait even while it is busy (``stop()``)."""
        self._armed = True
        # OSError: the buffer is full (so the reader wakes anyway) or the pair is closed.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        """Consume the bytes written so far (dispatcher thread)."""
        # Each wake() after a disarm() writes one byte, so one read takes them all (a second
        # read, to be sure, was one more system call per notify). BlockingIOError: none.
        # Not contextlib.suppress: three Python calls more on every wake-up.
        try:  # noqa: SIM105
            self._reader.recv(_DRAIN_BYTES)
        except OSError:
            pass

    def disarm(self) -> None:
        """Ask for a byte on the next :meth:`wake`; then look at the queue before waiting."""
        self._armed = False

    def close(self) -> None:
        """Close both ends."""
        self._reader.close()
        self._writer.close()
