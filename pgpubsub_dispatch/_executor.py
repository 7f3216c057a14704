"""Handing notifications to an Executor: one task per busy channel, a bound on the total.

The dispatcher thread calls :meth:`ChannelWork.hand_off`; a task on the executor drains one
channel's queue in order and ends, so each channel's notifications are handled one at a time
while different channels run in parallel. When ``max_pending`` notifications wait, hand_off
refuses and :attr:`ChannelWork.backpressure` is set until a task makes room, when ``on_room``
is called (to wake the dispatcher thread).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

__all__ = ["ChannelWork"]

log = logging.getLogger("pgpubsub_dispatch")


class ChannelWork:
    """Per-channel queues of notifications waiting for an executor (any thread).

    :param executor: where the tasks run.
    :param max_pending: the most notifications waiting, all channels together.
    :param handle: ``handle(channel, notification)`` calls the channel's handlers (on the
        executor's thread).
    :param on_room: called once room is made after a refusal (from an executor thread).
    """

    def __init__(
        self,
        executor: Executor,
        max_pending: int,
        handle: Callable[[str, Any], None],
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

    def hand_off(self, notification: Any) -> bool:
        """Queue ``notification`` for its channel's task; ``False`` (and backpressure) if full."""
        channel = notification.channel
        with self._lock:
            if self.pending >= self._max_pending:
                self.backpressure = True
                return False
            self.pending += 1
            queue = self._queues.get(channel)
            if queue is not None:
                queue.append(notification)  # the channel's task is running: it will see it
                return True
            self._queues[channel] = collections.deque([notification])
        try:
            self._executor.submit(self._drain, channel)
        except Exception as exc:  # e.g. the executor was shut down while we run
            log.error("the executor refused work (%s): running handlers on the dispatcher", exc)
            self._drain(channel)
        return True

    def drop(self, channel: str) -> int:
        """Forget what waits on ``channel`` (a task already running finishes its notification).

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
        while True:
            with self._lock:
                queue = self._queues.get(channel)
                if not queue:
                    self._queues.pop(channel, None)
                    return
                notification = queue.popleft()
                self.pending -= 1
                made_room = self.backpressure and self.pending < self._max_pending
                if made_room:
                    self.backpressure = False
            if made_room:
                self._on_room()
            try:
                self._handle(channel, notification)
            except BaseException:
                log.exception("delivering a notification on channel %r failed", channel)
