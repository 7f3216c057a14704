"""The hand-off between callers' threads and the dispatcher thread.

Thread contract: ``state``, ``thread``, ``waker`` and ``stop_requested`` change only under
``Control.lock`` (any thread reads them: each is one reference, read whole). ``queue`` is a
:class:`collections.deque`, whose appends and pops are thread-safe: callers append under
``lock`` (so that checking ``state`` and queueing are one step), the dispatcher thread pops.
``loop_ident``, ``backend_pid``, ``last_exception`` and ``lost`` are written by the dispatcher
thread only (and reset under ``lock`` when it ends).
"""

from __future__ import annotations

import collections
import enum
import threading

from ._commands import Command
from ._waiting import Waker

__all__ = ["Control", "State"]


class State(enum.Enum):
    """Where a dispatcher is in its life."""

    IDLE = "idle"  # never started, or stopped: calls record their changes
    STARTING = "starting"  # thread connecting: calls queue up
    RUNNING = "running"  # connected, or reconnecting
    STOPPING = "stopping"  # calls fail with DispatcherStopped
    FORKED = "inherited through fork()"  # a child's copy, with an executor: every call fails
    INHERITED = "inherited through fork(), to restart on first use"  # a child's copy


class Control:
    """State, queue and wake-up shared by a dispatcher's callers and its thread."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.state = State.IDLE
        self.thread: threading.Thread | None = None
        self.queue: collections.deque[Command] = collections.deque()
        self.waker: Waker | None = None
        self.stop_requested = False
        self.loop_ident: int | None = None
        self.backend_pid: int | None = None
        self.last_exception: BaseException | None = None
        self.lost: BaseException | None = None
        """The session was lost during a handler's in-place call: the loop reconnects once the
        handler returns (a ``_session.SessionLost``)."""

    def on_loop_thread(self) -> bool:
        """Whether the calling thread is the dispatcher thread."""
        return threading.get_ident() == self.loop_ident

    def wake(self) -> None:
        """Have the dispatcher thread look at its queue (caller holds ``lock``)."""
        if self.waker is not None:
            self.waker.wake()

    def after_fork(self, state: State) -> None:
        """In a child process: forget the parent's thread, queue and waker; enter ``state``.

        The lock is replaced: another thread of the parent may have held it at fork time. The
        waker's sockets are closed (the child's copies only).
        """
        self.lock = threading.RLock()
        if self.waker is not None:
            self.waker.close()
        self.waker = None
        self.queue.clear()
        self.thread = None
        self.finish_locked()
        self.state = state

    def finish_locked(self) -> None:
        """Mark the dispatcher stopped (caller holds ``lock``)."""
        self.state = State.IDLE
        self.loop_ident = None
        self.backend_pid = None
        self.stop_requested = False
        self.lost = None
        if self.waker is not None:
            self.waker.close()
            self.waker = None
