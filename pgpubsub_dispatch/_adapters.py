"""Handlers that are not plain callables: ``async def`` handlers, and handlers given ``decode=``.

``subscribe`` wraps such a handler once, at subscribe time, in an adapter that the routing
table holds in its place; a plain handler is stored as it is, so the hot path never asks which
kind it calls. An adapter compares equal to the handler it wraps, so ``unsubscribe(channel,
handler)`` finds it, and a handler is kept once per channel whatever it was given.

Threads: an adapter is called where handlers are called (the dispatcher thread, or an
executor's). :class:`DecodingHandler` calls its handler there. :class:`CoroutineHandler` only
appends to its bounded buffer and, when no task of its own is draining it, hands one to its
event loop with ``loop.call_soon_threadsafe``; the task (on the loop) awaits the handler for
each notification in turn, so one handler's invocations for one channel never overlap and keep
arrival order. Its buffer is guarded by ``CoroutineHandler._lock``, held only to append or pop.
The dispatcher never waits for the loop, and the loop never waits for the dispatcher.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

from .notification import DecodedNotification

__all__ = [
    "COROUTINE_BUFFER",
    "CoroutineHandler",
    "DecodingHandler",
    "adapt",
    "is_coroutine_handler",
]

log = logging.getLogger("pgpubsub_dispatch")

COROUTINE_BUFFER = 10_000
"""The most notifications waiting for one coroutine handler's event loop, per channel."""

Report = Callable[[Any, Any, BaseException], None]
"""``report(handler, notification, error)``: the dispatcher's ``handler_error`` path."""

Decode = Union[Callable[[str], Any], str]


class _Adapter:
    """What both adapters share: the wrapped handler, and equality with it."""

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Adapter):
            return bool(other.handler == self.handler)
        return bool(other == self.handler)

    def __hash__(self) -> int:
        return hash(self.handler)

    def __repr__(self) -> str:
        return repr(self.handler)


class DecodingHandler(_Adapter):
    """Call ``handler`` with a :class:`DecodedNotification`; report what does not decode.

    A payload that ``decode`` refuses (any ``Exception``) is reported through ``report`` with
    the raw notification, and the handler is not called. An exception of the handler itself
    is reported with the decoded notification it was given.
    """

    __slots__ = ("_decode", "_report")

    def __init__(self, handler: Callable[..., Any], decode: Callable[[str], Any], report: Report):
        super().__init__(handler)
        self._decode = decode
        self._report = report

    def __call__(self, notification: Any) -> None:
        try:
            decoded = decoded_notification(notification, self._decode)
        except Exception as error:
            self._report(self.handler, notification, error)
            return
        try:
            self.handler(decoded)
        except BaseException as error:
            self._report(self.handler, decoded, error)


class CoroutineHandler(_Adapter):
    """Run an ``async def`` handler on ``loop``, one notification after another.

    When ``COROUTINE_BUFFER`` notifications already wait (the loop is slow or blocked), the
    oldest is dropped and counted through ``on_drop``, so the dispatcher never waits for the
    loop. Once ``loop`` is closed, notifications are dropped and counted too (a warning is
    logged once). A notification whose handler is no longer routed when its turn comes
    (unsubscribed, unlistened, dispatcher stopped) is dropped without a call.

    :param handler: the coroutine function, called with each notification.
    :param loop: the event loop to run it on.
    :param routed: ``routed(adapter)`` tells whether the adapter is still routed.
    :param report: the ``handler_error`` path, for exceptions (and payloads that do not decode).
    :param on_drop: counts dropped notifications (any thread).
    :param decode: decodes each payload on the loop first, as :class:`DecodingHandler` does.
    """

    __slots__ = (
        "_decode",
        "_items",
        "_lock",
        "_on_drop",
        "_report",
        "_routed",
        "_scheduled",
        "_task",
        "_warned",
        "loop",
    )

    def __init__(
        self,
        handler: Callable[..., Awaitable[Any]],
        loop: asyncio.AbstractEventLoop,
        routed: Callable[[CoroutineHandler], bool],
        report: Report,
        on_drop: Callable[[int], None],
        decode: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__(handler)
        self.loop = loop
        self._routed = routed
        self._report = report
        self._on_drop = on_drop
        self._decode = decode
        self._lock = threading.Lock()
        self._items: collections.deque[Any] = collections.deque()
        self._scheduled = False  # a task drains _items, or is about to
        self._task: asyncio.Task[None] | None = None  # the loop keeps only weak references
        self._warned = False

    def __call__(self, notification: Any) -> None:
        """Where handlers run: buffer ``notification``, and wake the loop if it is not busy."""
        if self.loop.is_closed():
            self._drop_all_closed(extra=1)
            return
        with self._lock:
            dropped = 0
            if len(self._items) >= COROUTINE_BUFFER:
                self._items.popleft()
                dropped = 1
            self._items.append(notification)
            schedule = not self._scheduled
            self._scheduled = True
        if dropped:
            self._on_drop(dropped)
        if schedule:
            try:
                self.loop.call_soon_threadsafe(self._start)
            except RuntimeError:  # closed between the check and the call
                self._drop_all_closed(extra=0)

    def after_fork(self) -> None:
        """In a child process: a lock held by another thread at fork time is never released."""
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the loop's side

    def _start(self) -> None:
        self._task = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._items:
                        self._scheduled = False
                        return
                    notification = self._items.popleft()
                if not self._routed(self):
                    self._on_drop(1)
                    continue
                await self._call(notification)
        finally:
            with self._lock:
                self._scheduled = False  # cancelled (the loop is shutting down), or done

    async def _call(self, notification: Any) -> None:
        if self._decode is not None:
            try:
                notification = decoded_notification(notification, self._decode)
            except Exception as error:
                self._report(self.handler, notification, error)
                return
        try:
            await self.handler(notification)
        except Exception as error:  # CancelledError and the like end the task, as in asyncio
            self._report(self.handler, notification, error)

    def _drop_all_closed(self, extra: int) -> None:
        with self._lock:
            dropped = len(self._items) + extra
            self._items.clear()
            warn, self._warned = not self._warned, True
        if dropped:
            self._on_drop(dropped)
        if warn:
            log.warning(
                "the event loop of coroutine handler %r is closed: its notifications are "
                "dropped (unsubscribe it before closing its loop)",
                self.handler,
            )


def is_coroutine_handler(handler: object) -> bool:
    """Whether calling ``handler`` makes a coroutine (``async def``, also through a partial)."""
    if inspect.iscoroutinefunction(handler):
        return True
    while isinstance(handler, functools.partial):
        handler = handler.func
        if inspect.iscoroutinefunction(handler):
            return True
    if inspect.isfunction(handler) or inspect.ismethod(handler) or not callable(handler):
        return False
    return inspect.iscoroutinefunction(type(handler).__call__)  # ``async def __call__``


def json_decode(payload: str) -> Any:
    """``decode="json"``: :func:`json.loads`."""
    return json.loads(payload)


def check_decode(decode: Decode | None) -> Callable[[str], Any] | None:
    """The decoding callable ``decode=`` names, or ``None``.

    :raises ValueError: for a string other than ``"json"``.
    :raises TypeError: for anything else that is not callable.
    """
    if decode is None:
        return None
    if isinstance(decode, str):
        if decode != "json":
            raise ValueError(f'decode must be a callable or "json", not {decode!r}')
        return json_decode
    if not callable(decode):
        raise TypeError(f"decode must be a callable or 'json', not {type(decode).__name__}")
    return decode


def decoded_notification(
    notification: Any, decode: Callable[[str], Any]
) -> DecodedNotification[Any]:
    """Decode ``notification``'s payload (raises what ``decode`` raises)."""
    return DecodedNotification(
        notification.channel, notification.payload, notification.pid, decode(notification.payload)
    )


def adapt(
    channel: str,
    handler: Any,
    *,
    loop: asyncio.AbstractEventLoop | None,
    decode: Decode | None,
    report: Report,
    table: Callable[[], Mapping[str, tuple[Any, ...]]],
    on_drop: Callable[[int], None],
) -> Any:
    """What the routing table holds for ``handler``: itself, or an adapter (caller's thread).

    :param channel: the channel it is subscribed to.
    :param handler: what the user gave ``subscribe``.
    :param loop: ``loop=``: for a coroutine handler, the event loop to run it on; ``None``: the
        loop running in this thread.
    :param decode: ``decode=``: a callable, ``"json"``, or ``None``.
    :param report: the dispatcher's ``handler_error`` path.
    :param table: returns the routing table now (channel -> handlers).
    :param on_drop: counts notifications a coroutine handler's buffer dropped.
    :raises TypeError: if ``handler`` is not callable, ``loop`` is given for a handler that is
        not a coroutine function or is not an event loop, a coroutine handler has no loop (none
        given, none running in this thread), or ``decode`` is neither callable nor a string.
    :raises ValueError: if ``loop`` is closed, or ``decode`` is a string other than ``"json"``.
    """
    if not callable(handler):
        raise TypeError(f"handler must be callable, not {type(handler).__name__}")
    decoder = check_decode(decode)
    if not is_coroutine_handler(handler):
        if loop is not None:
            raise TypeError(
                f"loop= is for async def handlers; {handler!r} is not a coroutine function"
            )
        return handler if decoder is None else DecodingHandler(handler, decoder, report)
    loop = _event_loop(handler, loop)

    def routed(adapter: CoroutineHandler) -> bool:
        return any(h is adapter for h in table().get(channel, ()))

    return CoroutineHandler(handler, loop, routed, report, on_drop, decoder)


def _event_loop(handler: Any, loop: object) -> asyncio.AbstractEventLoop:
    if loop is None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            raise TypeError(
                f"{handler!r} is a coroutine function and no asyncio event loop runs in this "
                "thread: pass the loop to run it on (subscribe(..., loop=loop)), subscribe it "
                "from a coroutine on that loop, or read a stream (async for n in bus.stream(...))"
            ) from None
    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an asyncio event loop, not {type(loop).__name__}")
    if loop.is_closed():
        raise ValueError("loop is closed: a coroutine handler needs a loop that will run")
    return loop
