"""Delivery: calling the handlers of received notifications, on the dispatcher thread or on an
executor, each call isolated so that one handler's exception never reaches another.

Threads: :meth:`Delivery.run` and :meth:`Delivery.forget` run on the dispatcher thread (or in
a caller's thread while the dispatcher is not running, when there is nothing pending);
:meth:`Delivery.call_all` runs on the dispatcher thread or, with an executor, on the
executor's threads. ``pending`` belongs to the dispatcher thread. Lifecycle signals are sent
by :func:`send_signal` on whichever thread has something to tell (``handler_error``: the
thread that ran the handler).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import blinker

from . import signals
from ._control import Control
from ._executor import ChannelWork
from ._routing import Handler, Routes
from ._stats import Counters

__all__ = ["Delivery", "Sequencing", "send_signal"]

log = logging.getLogger("pgpubsub_dispatch")


class Sequencing(Protocol):
    """What orders gap-free channels' notifications (``gapless._sequencer.Sequencer``)."""

    def ready(self, pending: collections.deque[Any]) -> collections.deque[Any]:
        """Take out of ``pending`` what may be delivered now, in order."""

    def give_back(self, ready: collections.deque[Any], pending: collections.deque[Any]) -> None:
        """Put back into ``pending`` what delivery did not hand over."""

    def session_started(self) -> None:
        """A new session LISTENs."""


class Delivery:
    """Pending notifications and the calling of their handlers.

    :param sender: the dispatcher, sender of ``handler_error``.
    :param routes: the routing table.
    :param counters: where to count.
    :param executor: where to run handlers, or ``None`` for the dispatcher thread.
    :param max_pending: with an executor, the most notifications waiting for it.
    :param wake: wakes the dispatcher thread (an executor made room after backpressure).
    :param on_loop_thread: tells whether the calling thread is the dispatcher thread.
    """

    def __init__(
        self,
        sender: object,
        routes: Routes,
        counters: Counters,
        executor: Executor | None,
        max_pending: int,
        wake: Callable[[], None],
        on_loop_thread: Callable[[], bool],
    ) -> None:
        self._sender = sender
        self._on_loop_thread = on_loop_thread
        self._routes = routes
        self._counters = counters
        self.pending: collections.deque[Any] = collections.deque()
        """Notifications received and not yet handed to handlers (dispatcher thread)."""
        self.work = (
            None
            if executor is None
            else ChannelWork(executor, max_pending, self._call_on_executor, wake)
        )
        self._running = False  # run() is never re-entered (a handler's in-place call)
        routes.call_one = self.call_one
        self.sequencer: Sequencing | None = None
        """Set for a dispatcher with gap-free channels; ``None`` costs plain channels nothing."""

    @property
    def backpressure(self) -> bool:
        """Whether the executor is full: read nothing more from the server for now."""
        return self.work is not None and self.work.backpressure

    @property
    def stalled(self) -> bool:
        """Whether notifications wait for the executor to make room (dispatcher thread).

        While stalled, the dispatcher reads nothing more from the server: what is read stays
        bounded by ``max_pending`` plus one read of the socket (see ``_loop``). Notifications
        held back for another reason (a gap-free channel waiting for its log read, which must
        run on the session) do not stall it.
        """
        return self.work is not None and self.work.backpressure and bool(self.pending)

    def in_executor_task(self) -> bool:
        """Whether the calling thread is running handlers for this dispatcher's executor."""
        return self.work is not None and self.work.in_task()

    @property
    def waiting_for_executor(self) -> int:
        """Notifications handed to the executor and not yet handled."""
        return 0 if self.work is None else self.work.pending

    def run(self, control: Control) -> None:
        """Deliver every pending notification in arrival order, until ``control`` halts.

        The hot path. A run of notifications on one channel reuses its handler tuple until
        the routing table changes. A notification whose channel has no handler is dropped.
        Delivery halts when ``stop()`` is requested or the session was lost in place.
        """
        if self._running or (not self.pending and self.sequencer is None):
            return
        self._running = True
        try:
            sequencer, pending = self.sequencer, self.pending
            if sequencer is not None:
                pending = sequencer.ready(pending)
            if self.work is None:
                self._run_inline(control, pending)
            else:
                self._hand_off(self.work, control, pending)
            if sequencer is not None:
                sequencer.give_back(pending, self.pending)
        finally:
            self._running = False

    def new_session(self) -> None:
        """A new session LISTENs (dispatcher thread): gap-free channels are read again."""
        if self.sequencer is not None:
            self.sequencer.session_started()

    def _run_inline(self, control: Control, pending: collections.deque[Any]) -> None:
        routes = self._routes
        dispatched = dropped = 0
        try:
            while pending and not control.stop_requested and control.lost is None:
                version = routes.version  # read before the table: a change publishes it last
                handlers = routes.table.get(pending[0].channel, ())
                if handlers:
                    dispatched += self.call_all(handlers, pending, version)
                else:
                    pending.popleft()
                    dropped += 1
        finally:
            self._counters.dispatched += dispatched
            if dropped:
                self._counters.count_dropped(dropped)

    def _hand_off(
        self, work: ChannelWork, control: Control, pending: collections.deque[Any]
    ) -> None:
        # Handing off never blocks, so it is not halted part-way: what is pending goes.
        dispatched, dropped = work.hand_off(pending, self._routes.table)
        self._counters.dispatched += dispatched
        if dropped:
            self._counters.count_dropped(dropped)

    def _call_on_executor(self, channel: str, notifications: collections.deque[Any]) -> None:
        routes = self._routes
        while notifications:
            version = routes.version
            handlers = routes.table.get(channel, ())
            if not handlers:  # unrouted meanwhile (forget() dropped what was still queued)
                notifications.clear()
                return
            self.call_all(handlers, notifications, version)

    def call_all(
        self,
        handlers: tuple[Handler, ...],
        notifications: collections.deque[Any],
        version: int,
    ) -> int:
        """Take the notifications at the head of ``notifications`` that are on the first one's
        channel, and call each of ``handlers`` with each, in order, each call isolated.

        The one call-and-isolate path, inline and on an executor. It takes a run of
        notifications rather than one: a function call per notification cost the receive
        path about a third of its CPU (benchmarks/README.md).

        Any exception a handler raises (``BaseException`` included: a handler never ends the
        dispatcher or an executor's channel) is logged and sent as ``handler_error``. When a
        call changes the routing (an in-place ``unsubscribe`` or ``unlisten``), the handlers
        after it are called only if still routed for the channel.

        The run ends as soon as the routing table's version moves: a change of the table, but
        also ``stop()`` and a session lost in place, which bump it (:meth:`Routes.interrupt`),
        so that one check per notification covers all three.

        :param handlers: the channel's handlers, looked up in the routing table of ``version``.
        :param notifications: taken from the left, and only while on the same channel.
        :param version: the routing table's version when ``handlers`` were looked up.
        :returns: how many notifications were taken (``int``), at least one.
        """
        routes = self._routes
        channel = notifications[0].channel
        popleft = notifications.popleft
        before = len(notifications)
        only = handlers[0] if len(handlers) == 1 else None
        while notifications:
            notification = popleft()
            if notification.channel != channel:
                notifications.appendleft(notification)  # the next run's
                break
            if only is not None:  # the common case: no inner loop, no call (measured: -30 %)
                try:
                    only(notification)
                except BaseException as error:
                    self.report(only, notification, error)
            else:
                for handler in handlers:
                    if routes.version == version or handler in routes.table.get(channel, ()):
                        self.call_one(handler, notification)
            if routes.version != version:
                break
        return before - len(notifications)

    def call_one(self, handler: Handler, notification: Any) -> None:
        """Call one handler, isolated (see :meth:`call_all`)."""
        try:
            handler(notification)
        except BaseException as error:
            self.report(handler, notification, error)

    def report(self, handler: Handler, notification: Any, error: BaseException) -> None:
        """Count, log and send ``handler_error`` for ``error`` raised by ``handler`` (any thread:
        coroutine handlers report from their event loop's thread)."""
        self._counters.count_handler_error()
        log.error(
            "handler %r raised on channel %r",
            handler,
            notification.channel,
            exc_info=(type(error), error, error.__traceback__),
        )
        send_signal(
            signals.handler_error,
            self._sender,
            handler=handler,
            notification=notification,
            error=error,
        )

    def forget(self, channel: str) -> None:
        """``channel`` stopped being routed: drop what waits for it, pending or queued.

        Any thread (a caller records an unsubscribe while the dispatcher stops); ``pending``
        is touched on the dispatcher thread only (elsewhere it is empty or being cleared).
        """
        dropped = 0 if self.work is None else self.work.drop(channel)
        pending = self.pending
        if self._on_loop_thread() and any(n.channel == channel for n in pending):
            kept = [n for n in pending if n.channel != channel]
            dropped += len(pending) - len(kept)
            pending.clear()
            pending.extend(kept)
        if dropped:
            self._counters.count_dropped(dropped)

    def after_fork(self) -> None:
        """In a child process: forget what the parent's thread was delivering."""
        self.pending.clear()
        self._running = False

    def drop_pending(self) -> None:
        """Count every pending notification as dropped and forget them (stopping)."""
        if self.pending:
            self._counters.count_dropped(len(self.pending))
            self.pending.clear()


def send_signal(signal: blinker.Signal, sender: object, **kwargs: Any) -> None:
    """Send a lifecycle signal; a receiver that raises is logged and never stops the caller."""
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            log.exception("receiver %r of a lifecycle signal raised", receiver)
