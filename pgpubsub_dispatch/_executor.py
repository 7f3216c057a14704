"""Handing notifications to an Executor: one task per busy channel, a bound on the total.

The dispatcher thread calls :meth:`ChannelWork.hand_off` with everything pending; a task on
the executor drains one channel's queue in order, a whole batch per turn of the lock, and
ends, so each channel's notifications are handled one at a time while different channels run
in parallel. When ``max_pending`` notifications wait, hand_off stops and
:attr:`ChannelWork.backpressure` is set until a task makes room, when ``on_room`` is called (to
wake the dispatcher thread). A batch counts as pending until it is handled.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Container
from concurrent.futures import Executor
from typing import Any

__all__ = ["ChannelWork"]

log = logging.getLogger("pgpubsub_dispatch")


class ChannelWork:
    """Per-channel queues of notifications waiting for an executor (any thread).

    :param executor: where the tasks run.
    :param max_pending: the most notifications waiting, all channels together.
    :param handle: ``handle(channel, notifications)`` calls the channel's handlers with each of
        ``notifications`` (a deque, emptied), on the executor's thread.
    :param on_room: called once room is made after a refusal (from an executor thread).
    """

    def __init__(
        self,
        executor: Executor,
        max_pending: int,
        handle: Callable[[str, collections.deque[Any]], None],
        on_room: Callable[[], None],
    ) -> None:
        self._executor = executor
        self._max_pending = max_pending
        self._handle = handle
        self._on_room = on_room
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Any]] = {}  # a key only while a task runs
        self.pending = 0
        """Notifications waiting, all channels together."""
        self.backpressure = False
        """Set when a hand-off was refused; cleared when a task makes room."""
        self._local = threading.local()  # .draining: this thread runs one of our tasks

    def in_task(self) -> bool:
        """Whether the calling thread is running one of this object's tasks (a handler)."""
        return bool(getattr(self._local, "draining", False))

    def hand_off(self, pending: collections.deque[Any], routed: Container[str]) -> tuple[int, int]:
        """Move ``pending`` notifications to their channels' queues, in order, under one lock.

        Stops when ``max_pending`` wait (then sets :attr:`backpressure`; the rest stay in
        ``pending``). A notification whose channel is not in ``routed`` is dropped.

        :returns: ``(handed, dropped)`` counts.
        """
        queues, started = self._queues, []
        handed = dropped = 0
        with self._lock:
            room = self._max_pending - self.pending
            while pending:
                if handed >= room:
                    self.backpressure = True
                    break
                notification = pending.popleft()
                channel = notification.channel
                if channel not in routed:
                    dropped += 1
                    continue
                queue = queues.get(channel)
                if queue is None:  # no task runs for the channel: start one
                    queue = queues[channel] = collections.deque()
                    started.append(channel)
                queue.append(notification)
                handed += 1
            self.pending += handed
        for channel in started:
            try:
                self._executor.submit(self._drain, channel)
            except Exception as exc:  # e.g. the executor was shut down while we run
                log.error("the executor refused work (%s): running handlers on the dispatcher", exc)
                self._drain(channel)
        return handed, dropped

    def drop(self, channel: str) -> int:
        """Forget what waits on ``channel`` (a running task finishes the notification in hand).

        :returns: how many notifications were dropped.
        """
        with self._lock:
            queue = self._queues.get(channel)
            if not queue:
                return 0
            dropped = len(queue)
            self.pending -= dropped
            queue.clear()
            return dropped

    def _drain(self, channel: str) -> None:
        """The task (executor thread): handle ``channel``'s notifications in order, then end."""
        local = self._local
        outer, local.draining = getattr(local, "draining", False), True
        try:
            self._drain_marked(channel)
        finally:
            local.draining = outer

    def _drain_marked(self, channel: str) -> None:
        """Take everything queued for the channel at each turn of the lock (one lock per
        notification cost more than a 0.1 ms handler's share), and count it as no longer
        pending once handled."""
        taken = 0
        while True:
            with self._lock:
                self.pending -= taken
                made_room = self.backpressure and self.pending < self._max_pending
                if made_room:
                    self.backpressure = False
                queue = self._queues.get(channel)
                if queue:
                    self._queues[channel] = collections.deque()  # hand_off appends there now
                else:
                    self._queues.pop(channel, None)
            if made_room:
                self._on_room()
            if not queue:
                return
            taken = len(queue)
            try:
                self._handle(channel, queue)
            except BaseException:
                log.exception("delivering notifications on channel %r failed", channel)
