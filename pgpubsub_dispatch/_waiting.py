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

__all__ = ["Waker", "wait"]


def wait(reads: list[int], writes: list[int], timeout: float | None) -> set[int]:
    """Block until one of the descriptors is ready or ``timeout`` seconds pass.

    :param reads: file descriptors to wait on for reading.
    :param writes: file descriptors to wait on for writing.
    :param timeout: seconds (``None`` waits without end; ``0`` only looks).
    :returns: the set of descriptors that are ready (readable, writable, or in error/hang-up,
        which the caller discovers by reading); empty on timeout.
    """
    if _HAVE_POLL:
        poller = select.poll()
        for fd in reads:
            poller.register(fd, select.POLLIN)
        for fd in writes:
            poller.register(fd, select.POLLOUT)
        millis = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return {fd for fd, _ in poller.poll(millis)}
    readable, writable, errored = select.select(reads, writes, reads + writes, timeout)
    return {*readable, *writable, *errored}


_HAVE_POLL = hasattr(select, "poll")


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
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass  # BlockingIOError: nothing left

    def disarm(self) -> None:
        """Ask for a byte on the next :meth:`wake`; then look at the queue before waiting."""
        self._armed = False

    def close(self) -> None:
        """Close both ends."""
        self._reader.close()
        self._writer.close()
