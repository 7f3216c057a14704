"""An asyncio event loop run by ``asyncio.run`` in a thread of its own, for coroutine handlers.

This module is a pytest plugin (loaded by ``tests/conftest.py``) for its ``loop_thread``
fixture.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from .waiting import BOUND


class LoopThread:
    """``asyncio.run`` in a thread, until :meth:`stop`; records what the loop left behind.

    Attributes:
        loop: the running event loop.
        ident: the ident of the loop's thread.
        leftover_tasks: tasks other than the main one still pending when it was asked to
            stop (``asyncio.run`` then cancels them).
        errors: what the loop's exception handler was given (asyncio's "Task was destroyed
            but it is pending", "exception was never retrieved", ...).
    """

    def __init__(self) -> None:
        self.leftover_tasks: list[asyncio.Task[Any]] = []
        self.errors: list[dict[str, Any]] = []
        started: Future[asyncio.AbstractEventLoop] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(started),))
        self._thread.start()
        self.loop = started.result(BOUND)
        assert self._thread.ident is not None
        self.ident: int = self._thread.ident

    async def _main(self, started: Future[asyncio.AbstractEventLoop]) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self._stop = asyncio.Event()
        started.set_result(loop)
        await self._stop.wait()
        me = asyncio.current_task()
        self.leftover_tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]

    def run(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the loop and return its result (bounded)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(BOUND)

    def stop(self) -> None:
        """End ``asyncio.run`` (the loop is closed when this returns)."""
        if self._thread.is_alive():
            assert self._stop is not None
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(BOUND)
            assert not self._thread.is_alive(), "the event loop did not end"

    @property
    def alive(self) -> bool:
        """Whether the loop's thread still runs."""
        return self._thread.is_alive()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """An event loop running in a thread; stopped (and closed) at the end of the test."""
    running = LoopThread()
    yield running
    running.stop()
