"""How a caller waits for its command: a lighter :class:`concurrent.futures.Future`.

A ``Future`` costs about 8 µs per command (a ``Condition`` over an ``RLock``, a waiter lock per
wait) and its waiter, once woken, must take the condition's lock again from the thread that
woke it. A :class:`Completion` is one lock, acquired when made and released when the command
is done, so waiting is one ``acquire`` and waking one ``release``.

The commands of one transaction are woken one after another (:func:`finish_all`): the loop
wakes the first, and each waiter wakes the next as it resumes. Woken all at once, 8 or 32
threads would fight for the GIL at the same instant, each switch a context switch; woken in a
chain, at most two run at a time (see ``benchmarks/README.md`` for the numbers).

Threads: the dispatcher thread takes and finishes completions; the caller's thread waits,
cancels, and wakes the next of its chain. Every change of state, and every hand-off of the
chain, happens under one module lock, held for a few instructions.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

__all__ = ["Completion", "finish_all"]

_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)

_lock = threading.Lock()
"""Guards every completion's ``_state``, ``_abandoned`` and hand-off of ``_then``."""


class Completion:
    """The outcome of one command, and the one caller waiting for it.

    The subset of :class:`concurrent.futures.Future` the dispatcher uses, with the same
    meaning: :meth:`set_running_or_notify_cancel`, :meth:`cancel`, :meth:`done`,
    :meth:`cancelled`, :meth:`set_result`, :meth:`set_exception`, :meth:`result`. One thread
    waits on it (the caller); :meth:`result` may be called again once it has returned.
    """

    __slots__ = ("_abandoned", "_error", "_ready", "_state", "_then", "_value", "_woken")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._ready = threading.Lock()
        self._ready.acquire()  # released once: the waiter may go on
        self._woken = False  # the waiter acquired _ready (waiter's thread only)
        self._abandoned = False  # the waiter gave up: whoever wakes it wakes _then instead
        self._then: Completion | None = None  # woken after this one (a transaction's chain)

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
        _wake(self)

    def set_exception(self, error: BaseException) -> None:
        """Finish it with ``error`` (raised by :meth:`result`) and wake its waiter."""
        self._error = error
        self._state = _FINISHED
        _wake(self)

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds (``None``: without end); return the value.

        :raises concurrent.futures.TimeoutError: if it is not done in time.
        :raises concurrent.futures.CancelledError: if it was cancelled.
        :raises BaseException: the error it finished with.
        """
        if not self._woken and not self._wait(timeout) and self._state != _FINISHED:
            if self._state == _CANCELLED:
                raise CancelledError()
            raise FutureTimeout()
        # Finished (or woken): a waiter that timed out was passed over by the chain.
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._error is not None:
            raise self._error
        return self._value

    def _wait(self, timeout: float | None) -> bool:
        """Wait for the wake-up; wake the next of the chain. ``False``: gave up (timed out)."""
        if not self._ready.acquire(True, -1 if timeout is None else timeout):
            with _lock:
                # Woken between the timeout and here: go on as woken. Else, say so, so that
                # whoever wakes this one wakes the next instead.
                if not self._ready.acquire(False):
                    self._abandoned = True
                    return False
                self._abandoned = False
        self._woken = True
        then = self._then
        if then is not None:
            self._then = None
            _wake(then)
        return True


def _wake(completion: Completion | None) -> None:
    """Release the waiter of ``completion``, or of the first of its chain still waiting."""
    while completion is not None:
        with _lock:
            if not completion._abandoned:
                completion._ready.release()  # its waiter wakes the next
                return
            passed_over = completion
            completion = passed_over._then
            passed_over._then = None


def finish_all(completions: Sequence[Completion], value: Any) -> None:
    """Finish every one of ``completions`` with ``value``; wake their waiters in order.

    The first is woken here; each waiter wakes the next as it resumes.
    """
    if not completions:
        return
    with _lock:
        previous: Completion | None = None
        for completion in completions:
            completion._value = value
            completion._state = _FINISHED
            if previous is not None:
                previous._then = completion
            previous = completion
    _wake(completions[0])
