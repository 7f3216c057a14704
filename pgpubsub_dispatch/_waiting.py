"""Waiting on sockets: the one place where the dispatcher thread blocks.

Uses ``select.poll`` where the platform has it (no FD_SETSIZE limit, so a process with more
than 1024 open files still works) and ``select.select`` elsewhere.
"""

from __future__ import annotations

import contextlib
import select
import socket

__all__ = ["Waker", "wait"]

READ = 1
WRITE = 2


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

    ``wake()`` may be called from any thread, any number of times; the bytes are coalesced.
    ``fileno()`` is the descriptor to wait on for reading; ``clear()`` (dispatcher thread only)
    consumes what was written.
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
        """Make the next (or current) :func:`wait` on :meth:`fileno` return. Never blocks."""
        if self._armed:
            return  # a byte is already on its way and has not been consumed yet
        self._armed = True
        # OSError: the buffer is full (so the reader wakes anyway) or the pair is closed.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def clear(self) -> None:
        """Consume pending wake-ups; call before looking at the work they announce."""
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass  # BlockingIOError: nothing left
        # Disarm only after draining: a waker that saw the flag still set has queued its work
        # before looking, so the caller's look at the queue, which follows, will find it.
        self._armed = False

    def close(self) -> None:
        """Close both ends."""
        self._reader.close()
        self._writer.close()
