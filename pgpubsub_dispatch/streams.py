"""Streams: the notifications of some channels, as an iterator, for one consumer.

A stream suits a subscriber that comes and goes, such as one browser connection of a web app:
``with bus.stream("chat") as stream: for notification in stream: ...``. It subscribes on enter
and unsubscribes on exit. Its handler only appends to a bounded buffer, so a slow consumer
never stalls the dispatcher: when the buffer is full, the oldest notification is dropped and
counted (``overflow="drop_oldest"``, the default), or the new one is (``"drop_newest"``).

It is a blocking iterator (``for``, :meth:`NotificationStream.get`) for threads and an async
iterator (``async for``) for any asyncio event loop, in any thread.

The handler (``_put``) runs on the dispatcher thread (or an executor's); readers run on their
own threads or event loops; the buffer is guarded by the stream's condition variable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from . import _timeouts
from ._names import check_channel
from .errors import DispatcherStopped, WouldDeadlock
from .notification import Notification

__all__ = ["OVERFLOW_POLICIES", "NotificationStream", "StreamHost"]

Handler = Callable[[Any], object]


class StreamHost(Protocol):
    """What a stream needs of its dispatcher: the public calls, and four internal ones.

    :class:`~pgpubsub_dispatch.Dispatcher` implements it; the four underscored methods exist
    for streams only: keeping the set of open streams (closed when the dispatcher stops), an
    unsubscribe that never waits (to undo a subscription whose caller gave up), and telling
    whether the caller is the dispatcher thread (which must never wait for a stream).
    """

    @property
    def running(self) -> bool:
        """Whether the dispatcher runs."""

    def subscribe(self, channel: str, handler: Any, timeout: float | None = None) -> Any:
        """As :meth:`Dispatcher.subscribe`."""

    def unsubscribe(self, channel: str, handler: Handler, timeout: float | None = None) -> None:
        """As :meth:`Dispatcher.unsubscribe`."""

    def _stream_opened(self, stream: NotificationStream) -> None:
        """Remember ``stream`` as open."""

    def _stream_closed(self, stream: NotificationStream) -> None:
        """Forget ``stream``."""

    def _unsubscribe_soon(self, channel: str, handler: Handler) -> None:
        """Unsubscribe after what is queued, without waiting; any state."""

    def _on_dispatcher_thread(self) -> bool:
        """Whether the calling thread is the dispatcher's (a handler runs there)."""


OVERFLOW_POLICIES = ("drop_oldest", "drop_newest")
"""What a full stream does with one more notification: drop its oldest, or the new one."""


class NotificationStream:
    """A bounded buffer of the notifications of some channels; make one with ``bus.stream()``.

    Use it as a context manager: entering subscribes to every channel (LISTENing as needed),
    leaving unsubscribes (UNLISTENing channels nothing else wants) and ends iteration.

    :param dispatcher: the :class:`~pgpubsub_dispatch.Dispatcher` (any :class:`StreamHost`)
        to subscribe to.
    :param channels: one or more exact channel names.
    :param maxsize: the most notifications kept waiting (``int`` >= 1).
    :param overflow: ``"drop_oldest"`` (default) or ``"drop_newest"``, when full.
    :raises InvalidChannelName: if a channel name is not acceptable.
    :raises ValueError: without channels, with ``maxsize`` < 1, or an unknown ``overflow``.
    """

    def __init__(
        self,
        dispatcher: StreamHost,
        channels: tuple[str, ...],
        *,
        maxsize: int = 1000,
        overflow: str = "drop_oldest",
    ) -> None:
        if not channels:
            raise ValueError("a stream needs at least one channel")
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be an int >= 1, not {maxsize!r}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {overflow!r}")
        self._dispatcher = dispatcher
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(map(check_channel, channels)))
        """The channels, without duplicates, in the order given."""
        self.maxsize = maxsize
        self._drop_oldest = overflow == "drop_oldest"
        self._items: collections.deque[Notification] = collections.deque()
        self._cond = threading.Condition()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._dropped = 0
        self._subscribed: list[str] = []
        self._closed = False

    # -------------------------------------------------------------- life cycle

    def __enter__(self) -> NotificationStream:
        """Subscribe to every channel; on failure, undo what was done and raise."""
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Unsubscribe and end iteration (see :meth:`close`)."""
        self.close()

    async def __aenter__(self) -> NotificationStream:
        """``async with``: subscribe in a worker thread, so the event loop never waits.

        If the task is cancelled meanwhile, the stream is closed and whatever the worker
        thread still subscribes is undone: nothing is left behind.
        """
        try:
            return await asyncio.to_thread(self.open)
        except asyncio.CancelledError:
            threading.Thread(target=self.close, name="pgpubsub-stream-close").start()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        """``async with``: unsubscribe in a worker thread (see :meth:`close`)."""
        await asyncio.to_thread(self.close)

    def open(self, timeout: float | None = None) -> NotificationStream:
        """Subscribe to every channel (what ``with`` does on enter).

        :param timeout: seconds for each subscription; ``None`` waits as long as it takes.
        :returns: ``self``.
        :raises RuntimeError: if the stream is already open or was closed.
        :raises DispatcherStopped: if the dispatcher is not running (a stream of a stopped
            dispatcher would wait for nothing).
        :raises psycopg2.Error, TimeoutError: as :meth:`Dispatcher.subscribe`; then, and if
            the stream is closed meanwhile, every subscription made or still on its way is
            undone.
        """
        if self._subscribed or self._closed:
            raise RuntimeError("a stream is opened once")
        if not self._dispatcher.running:
            raise DispatcherStopped("a stream needs a running dispatcher: start() it first")
        self._dispatcher._stream_opened(self)
        for channel in self.channels:
            try:
                self._dispatcher.subscribe(channel, self._put, timeout=timeout)
            except BaseException:
                # A subscribe that timed out may still happen: queue its undoing behind it.
                self._dispatcher._unsubscribe_soon(channel, self._put)
                self.close()
                raise
            with self._cond:
                abandoned = self.closed  # closed meanwhile (a cancelled ``async with``)
                if not abandoned:
                    self._subscribed.append(channel)
            if abandoned:
                self._dispatcher._unsubscribe_soon(channel, self._put)
                break
        return self

    def close(self) -> None:
        """Unsubscribe from every channel and end iteration. Idempotent, any thread.

        Also done when the dispatcher stops, so that readers never wait on a stopped one.
        Notifications still buffered can be read with :meth:`get` until it is empty.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
            subscribed, self._subscribed = self._subscribed, []
        _wake_all(waiters)
        self._dispatcher._stream_closed(self)
        for channel in subscribed:
            try:
                self._dispatcher.unsubscribe(channel, self._put)
            except Exception:  # stopping: its subscription must go all the same
                self._dispatcher._unsubscribe_soon(channel, self._put)

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` ran (``with`` exited)."""
        return self._closed

    @property
    def dropped(self) -> int:
        """How many notifications were dropped because the stream was full (``int``)."""
        return self._dropped

    def __len__(self) -> int:
        """How many notifications are waiting to be read."""
        return len(self._items)

    def _abandon_after_fork(self) -> list[str]:
        """In a child process: the parent's stream ends here; return its subscribed channels."""
        self._cond = threading.Condition()
        self._closed = True
        self._async_waiters = []
        subscribed, self._subscribed = self._subscribed, []
        return subscribed

    # -------------------------------------------------------------- the handler

    def _put(self, notification: Notification) -> None:
        """The stream's handler (dispatcher thread): buffer, never block."""
        with self._cond:
            if self._closed:
                return
            if len(self._items) >= self.maxsize:
                self._dropped += 1
                if not self._drop_oldest:
                    return
                self._items.popleft()
            self._items.append(notification)
            self._cond.notify()
            waiters, self._async_waiters = self._async_waiters, []
        _wake_all(waiters)

    # -------------------------------------------------------------- reading, threads

    def get(self, timeout: float | None = None) -> Notification:
        """Return the oldest waiting notification, waiting for one if needed.

        In a handler running on the dispatcher thread, only ``timeout=0`` works: that thread
        fills the stream, so waiting there would wait for ever (:exc:`WouldDeadlock`).

        :param timeout: seconds to wait; ``None`` waits as long as it takes; ``0`` only looks.
        :returns: a notification (``channel``, ``payload``, ``pid``).
        :raises queue.Empty: if none arrived within ``timeout``, or the stream is closed
            and empty.
        :raises ValueError: if ``timeout`` is negative or NaN.
        :raises WouldDeadlock: on the dispatcher thread, when it would have to wait.
        """
        timeout = _timeouts.check_timeout(timeout)
        with self._cond:
            if (
                not self._items
                and not self._closed
                and timeout != 0
                and self._dispatcher._on_dispatcher_thread()
            ):
                raise WouldDeadlock(
                    "a stream read in a handler on the dispatcher thread would wait for ever "
                    "(that thread fills the stream): read it in another thread or in asyncio, "
                    "use get(timeout=0), or give the Dispatcher an executor"
                )
            self._cond.wait_for(lambda: self._items or self._closed, timeout)
            if self._items:
                return self._items.popleft()
        raise queue.Empty("no notification" + (" (stream closed)" if self._closed else ""))

    def __iter__(self) -> Iterator[Notification]:
        """Yield notifications as they arrive, until the stream is closed and empty.

        :raises WouldDeadlock: in a handler on the dispatcher thread, when it would wait.
        """
        while True:
            try:
                yield self.get()
            except queue.Empty:
                return

    # -------------------------------------------------------------- reading, asyncio

    def __aiter__(self) -> NotificationStream:
        """``async for notification in stream``: waits without blocking the event loop.

        The stream is its own iterator, so a cancelled ``anext()`` (a timeout) leaves it
        usable.
        """
        return self

    async def __anext__(self) -> Notification:
        """The next notification; ``StopAsyncIteration`` once closed and empty."""
        notification = await self.get_async()
        if notification is None:
            raise StopAsyncIteration
        return notification

    async def get_async(self) -> Notification | None:
        """Return the oldest waiting notification, awaiting one; ``None`` once closed and empty.

        Works in any event loop, in any thread; wrap it in ``asyncio.wait_for`` for a timeout.
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    return None
                arrived: asyncio.Future[None] = loop.create_future()
                waiter = (loop, arrived)
                self._async_waiters.append(waiter)
            try:
                await arrived
            except asyncio.CancelledError:  # e.g. asyncio.wait_for timing out: leave no trace
                with self._cond, contextlib.suppress(ValueError):
                    self._async_waiters.remove(waiter)
                raise


def _wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, future in waiters:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
