"""A command's dispatcher: started with a clear error, stopped bounded, stopped by a signal.

Runs on the main thread, except the stop requested by SIGINT or SIGTERM, which a helper thread
(``pgpubsub-dispatch-signals``) makes while the main thread unwinds.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import psycopg2

from .._connection import describe_target
from ..dispatcher import Dispatcher
from ..errors import PubSubError
from ._common import EXIT_OK, PROG, CommandError, one_line

__all__ = ["Interrupted", "interrupted_exit", "start", "stop_on_signal", "stop_quietly"]

_STOP_TIMEOUT = 5.0  # seconds to let the dispatcher UNLISTEN and close before exiting anyway


def start(bus: Dispatcher, dsn: str, source: str) -> None:
    """Start ``bus``; a failure to connect says where to, and where the DSN came from.

    :raises CommandError: when the connection attempt fails.
    :raises psycopg2.Error: when the session is up but a LISTEN fails (e.g. on a hot standby).
    """
    try:
        bus.start()
    except psycopg2.OperationalError as exc:
        if exc.pgcode:
            raise
        raise CommandError(
            f"cannot connect to {describe_target(dsn)} (DSN from {source}): {one_line(str(exc))}"
        ) from exc


def stop_quietly(bus: Dispatcher) -> None:
    """Stop ``bus``, bounded; a failure to close cleanly does not matter when exiting."""
    with contextlib.suppress(
        PubSubError, psycopg2.Error, OSError, TimeoutError, concurrent.futures.TimeoutError
    ):
        bus.stop(timeout=_STOP_TIMEOUT)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so ``finally`` blocks run, quietly.

    :param signum: the signal's number (``signum`` attribute).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_exit(command: str, interruption: KeyboardInterrupt) -> int:
    """0 for ``listen`` (a signal is how it normally ends), else 128 + the signal number."""
    if command == "listen":
        return EXIT_OK
    return 128 + getattr(interruption, "signum", signal.SIGINT)


@contextlib.contextmanager
def stop_on_signal(bus: Dispatcher) -> Iterator[None]:
    """For the block, SIGINT and SIGTERM stop ``bus`` and raise :class:`Interrupted`.

    The stop is requested from a helper thread, at once: the main thread may be inside
    ``bus.start()`` waiting for a connection that never answers, and only a stop request ends
    that wait. A signal the parent process ignores stays ignored. The previous handlers are
    restored afterwards, so calling ``main`` in-process is safe; outside the main thread,
    Python cannot install handlers and nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SimpleQueue.put is reentrant, hence safe in a signal handler; Event.set is not.
    requests: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def stop_when_asked() -> None:
        if requests.get():
            stop_quietly(bus)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        requests.put(True)
        raise Interrupted(signum)

    threading.Thread(target=stop_when_asked, name=f"{PROG}-signals", daemon=True).start()
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        requests.put(False)
