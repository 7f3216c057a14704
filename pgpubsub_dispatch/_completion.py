"""How a caller waits for its command: a lighter :class:`concurrent.futures.Future`.

A ``Future`` costs about 8 µs per command (a ``Condition`` over an ``RLock``, a waiter lock per
wait) and its waiter, once woken, must take the condition's lock again from the thread that
woke it. A :class:`Completion` is one lock, held when made and released when the command is
done, so waiting is one ``acquire`` and waking one ``release``. A waiter woken that way holds
the lock again, and nobody will release it any more: it gives the lock to the next
completion made (a new lock and its first ``acquire`` cost every caller about 0.6 µs).

The callers of one shared transaction are all woken at once (:func:`finish_all`). Waking them
one after another, each waking the next as it resumed, was tried: with 8 and 32 threads it
sent 15 % and 8 % fewer notifies per second (``benchmarks/README.md``), since every hand-off
of the chain waited for a thread to be scheduled.

Threads: the dispatcher thread takes and finishes completions; the caller's thread waits and
cancels. Taking (one, or a batch's with :func:`start_all`) and cancelling happen under one
module lock, never held across anything that waits; a child process made by ``fork()`` gets a
new one (:func:`after_fork_in_child`, called by ``_fork``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

__all__ = ["Completion", "after_fork_in_child", "finish_all", "start_all"]

_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)

_lock = threading.Lock()
"""Guards the moves out of ``_PENDING`` (taken to run, or cancelled)."""

_spare: list[threading.Lock] = []
"""Locks held (acquired) and free for new completions. A waiter woken by its completion's
release holds that lock again, and nobody else will release it, so it puts it here: making a
lock and acquiring it took about 0.6 µs a command on Python 3.11, paid by every caller while
the others wait for the GIL. ``list.append`` and ``list.pop`` are atomic."""

_USED = threading.Lock()
"""Stands for a lock given back, never acquired: releasing it again raises ``RuntimeError``,
as releasing a finished completion's own lock twice would."""


def after_fork_in_child() -> None:
    """In a child process (``_fork``): new module lock and no spare locks. The child starts
    with only the thread that forked, so a lock another thread of the parent held at that
    moment would stay held for good (the child's first ``notify`` would hang)."""
    global _lock
    _lock = threading.Lock()
    _spare.clear()


class Completion:
    """The outcome of one command, and the one caller waiting for it.

    The subset of :class:`concurrent.futures.Future` the dispatcher uses, with the same
    meaning: :meth:`set_running_or_notify_cancel`, :meth:`cancel`, :meth:`done`,
    :meth:`cancelled`, :meth:`set_result`, :meth:`set_exception`, :meth:`result`. One thread
    waits on it (the caller); :meth:`result` may be called again once it has returned. It is
    finished once (by the dispatcher thread).
    """

    __slots__ = ("_error", "_ready", "_state", "_value")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        if _spare:
            try:
                self._ready = _spare.pop()  # released once finished: the waiter may go on
                return
            except IndexError:  # another thread took the last one meanwhile
                pass
        self._ready = threading.Lock()
        self._ready.acquire()

    def set_running_or_notify_cancel(self) -> bool:
        """Mark it running; ``False`` if it was cancelled first (then never run it)."""
        with _lock:
            if self._state == _PENDING:
                self._state = _RUNNING
                return True
            return False

    def cancel(self) -> bool:
        """Cancel it if nobody took it yet; return whether it is cancelled (``bool``)."""
        with _lock:
            if self._state == _PENDING:
                self._state = _CANCELLED
            return self._state == _CANCELLED

    def done(self) -> bool:
        """Whether it finished or was cancelled (``bool``)."""
        return self._state >= _CANCELLED

    def cancelled(self) -> bool:
        """Whether it was cancelled (``bool``)."""
        return self._state == _CANCELLED

    def set_result(self, value: Any) -> None:
        """Finish it with ``value`` and wake its waiter."""
        self._value = value
        self._state = _FINISHED
        self._ready.release()

    def set_exception(self, error: BaseException) -> None:
        """Finish it with ``error`` (raised by :meth:`result`) and wake its waiter."""
        self._error = error
        self._state = _FINISHED
        self._ready.release()

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds (``None``: without end); return the value.

        :raises concurrent.futures.TimeoutError: if it is not done in time.
        :raises concurrent.futures.CancelledError: if it was cancelled.
        :raises BaseException: the error it finished with.
        """
        state = self._state
        if state < _CANCELLED:  # pending or running
            # The value is set before the state, and the state before the release.
            ready = self._ready
            if ready.acquire(True, -1 if timeout is None else timeout):
                self._ready = _USED
                _spare.append(ready)  # held again, and finished: nobody releases it any more
            else:
                state = self._state
                if state != _FINISHED:
                    if state == _CANCELLED:
                        raise CancelledError()
                    raise FutureTimeout()
            state = _FINISHED
        if state == _CANCELLED:
            raise CancelledError()
        if self._error is not None:
            raise self._error
        return self._value


def finish_all(completions: Sequence[Completion], value: Any) -> None:
    """Finish every one of ``completions`` with ``value`` and wake their waiters."""
    for completion in completions:
        completion._value = value
        completion._state = _FINISHED
        completion._ready.release()


def start_all(completions: Sequence[Completion]) -> list[bool]:
    """:meth:`Completion.set_running_or_notify_cancel` for each, under one lock.

    :returns: for each, whether it is now running (``False``: cancelled first, never run it).
    """
    # Taking a lock per completion cost the dispatcher thread about 1 µs a notify in a batch.
    started = []
    with _lock:
        for completion in completions:
            if completion._state == _PENDING:
                completion._state = _RUNNING
                started.append(True)
            else:
                started.append(False)
    return started
