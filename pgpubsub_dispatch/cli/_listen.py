"""``pgpubsub-dispatch listen``: print notifications until a count, a timeout or a signal.

Two threads: the dispatcher thread only turns what it receives (notifications, a lost or
regained connection) into events on a queue; the main thread takes them from the queue and
prints them, so a slow reader of standard output never holds the dispatcher.
"""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import NamedTuple, Union

from .. import signals
from ..dispatcher import Dispatcher
from ..notification import Notification
from ._common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    CommandError,
    checked_channel,
    describe_chain,
    report,
    say,
)
from ._output import ensure_utf8, json_line, pretty_line, print_line, quoted
from ._running import start, stop_on_signal, stop_quietly

__all__ = ["listen"]

_POLL_INTERVAL = 0.5  # seconds between checks that the dispatcher is still running


class _Received(NamedTuple):
    """A notification as captured on the dispatcher thread, for the main thread to print."""

    channel: str
    payload: str
    pid: int
    received_at: datetime  # aware, UTC


class _ConnectionLost(NamedTuple):
    """The dispatcher reported its connection gone (it may reconnect, or stop)."""

    error: BaseException


class _Reconnected(NamedTuple):
    """The dispatcher listens again on a new session (notifications may have been missed)."""

    backend_pid: int


# Not ``X | Y``: this alias is evaluated at run time, and Python 3.9 has no ``|`` on types.
_Event = Union[_Received, _ConnectionLost, _Reconnected]


def listen(
    dsn: str,
    source: str,
    channels: Sequence[str],
    *,
    count: int | None,
    timeout: float | None,
    output: str,
) -> int:
    """Print notifications of ``channels`` in ``output`` form (see the package docstring).

    :param dsn: the DSN to connect with; ``source`` says where it came from, for messages.
    :param channels: channel names (repeats are listened to once).
    :param count: exit after this many notifications; ``None``: no limit.
    :param timeout: seconds to listen after ``listening on`` is written; ``None``: no limit.
    :param output: ``"json"`` or ``"pretty"``.
    :returns: :data:`EXIT_OK`, or :data:`EXIT_INCOMPLETE` when ``timeout`` passed before
        ``count`` notifications.
    :raises CommandError: for a bad channel name, a failure to connect, or a dispatcher that
        stopped on its own.
    """
    wanted = list(dict.fromkeys(checked_channel(channel) for channel in channels))
    ensure_utf8(sys.stdout)
    events: queue.Queue[_Event] = queue.Queue()

    def enqueue(notification: Notification) -> None:  # runs on the dispatcher thread
        received_at = datetime.now(timezone.utc)
        events.put(
            _Received(notification.channel, notification.payload, notification.pid, received_at)
        )

    def on_disconnected(sender: object, error: BaseException | None = None) -> None:
        if error is not None:  # runs on the dispatcher thread
            events.put(_ConnectionLost(error))

    def on_reconnected(sender: object, backend_pid: int) -> None:
        events.put(_Reconnected(backend_pid))

    bus = Dispatcher(dsn)
    for channel in wanted:
        bus.subscribe(channel, enqueue)
    signals.disconnected.connect(on_disconnected, sender=bus, weak=False)
    signals.reconnected.connect(on_reconnected, sender=bus, weak=False)
    try:
        with stop_on_signal(bus):
            try:
                start(bus, dsn, source)
                listening = f"listening on {', '.join(quoted(channel) for channel in wanted)}"
                say(listening)
                return _print_events(
                    events,
                    bus,
                    dsn,
                    count=count,
                    timeout=timeout,
                    listening=listening,
                    format_line=pretty_line if output == "pretty" else json_line,
                )
            finally:
                stop_quietly(bus)
    finally:
        signals.disconnected.disconnect(on_disconnected, sender=bus)
        signals.reconnected.disconnect(on_reconnected, sender=bus)


def _print_events(
    events: queue.Queue[_Event],
    bus: Dispatcher,
    dsn: str,
    *,
    count: int | None,
    timeout: float | None,
    listening: str,
    format_line: Callable[[Notification, datetime], str],
) -> int:
    """Print events, each as ``format_line`` makes it, until ``count`` or ``timeout``.

    After a reconnection, ``listening`` is written to stderr again, with a note that
    notifications sent while disconnected may have been missed.

    :returns: the exit code.
    :raises CommandError: when the dispatcher stops on its own (its connection is lost and it
        does not reconnect). A loss it recovers from is only a warning on stderr.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    printed = 0
    lost: BaseException | None = None
    while count is None or printed < count:
        wait = _POLL_INTERVAL
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return EXIT_OK if count is None else EXIT_INCOMPLETE
        try:
            event = events.get(timeout=wait)
        except queue.Empty:
            if not bus.running:
                raise CommandError(_lost_message(lost)) from lost
            continue
        if isinstance(event, _ConnectionLost):
            lost = event.error
            if not bus.running:
                raise CommandError(_lost_message(lost)) from lost
            report(_lost_message(lost), dsn, "warning")
            continue
        if isinstance(event, _Reconnected):
            say(f"{listening} again (reconnected; notifications sent meanwhile may be missing)")
            continue
        if not print_line(format_line(event, event.received_at)):
            return EXIT_OK  # the reader closed our standard output: nobody is listening
        printed += 1
    return EXIT_OK


def _lost_message(error: BaseException | None) -> str:
    if error is None:
        return "the dispatcher stopped unexpectedly"
    return f"connection lost: {describe_chain(error)}"
