"""The routing table: which channels to LISTEN to, and which handlers each notification reaches.

Thread contract: every change happens under ``Routes._lock``, whichever thread makes it (a
caller while the dispatcher is not running, the dispatcher thread while it runs, any thread
connecting to a channel's blinker signal). Readers on the hot path (the dispatcher thread,
executor threads) read :attr:`Routes.table` and :attr:`Routes.version` without the lock: the
table is an immutable snapshot, replaced whole on every change. ``database_encoding`` is written
by the dispatcher thread at each connection and read by any thread (one reference).

Handlers given to ``subscribe`` are kept here in subscription order (blinker's own receiver
order is undefined); receivers connected straight to ``signal(channel)`` are called after them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import blinker
from psycopg2 import sql

from ._names import DatabaseEncoding

__all__ = ["Handler", "Routes", "SignalReceivers", "listen_sql", "unlisten_sql"]

Handler = Callable[[Any], object]
"""A handler: any callable taking one positional argument, the notification."""


class SignalReceivers:
    """Stands in a channel's handler tuple for the receivers of its blinker signal.

    Calling it calls each live receiver (weak ones that died are skipped) through
    ``call_one``, which isolates each call, so it is one more handler to whoever calls it.
    """

    __slots__ = ("call_one", "signal")

    def __init__(self, signal: blinker.Signal, call_one: Callable[[Handler, Any], None]) -> None:
        self.signal = signal
        self.call_one = call_one

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignalReceivers) and other.signal is self.signal

    def __hash__(self) -> int:
        return id(self.signal)

    def __call__(self, notification: Any) -> None:
        for receiver in tuple(self.signal.receivers_for(notification)):
            self.call_one(receiver, notification)


class Routes:
    """Channels wanted and listened to, their signals, and their ordered handlers."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._signals: dict[str, blinker.Signal] = {}
        self._subscribed: dict[str, tuple[Handler, ...]] = {}
        self._explicit: set[str] = set()  # listened to with listen(), not only subscribe()
        self._listening: set[str] = set()  # LISTENed on the current (or last) session
        self.wanted: frozenset[str] = frozenset()
        """Channels to LISTEN to: explicit ones and subscribed ones (published snapshot)."""
        self.table: Mapping[str, tuple[Handler, ...]] = {}
        """Channel -> handlers to call in order (a signal's receivers last, as one
        :class:`SignalReceivers`), for channels LISTENed now (published snapshot)."""
        self.version = 0
        """Bumped by every change of :attr:`table`, and by :meth:`interrupt`."""
        self.on_unroute: Callable[[str], None] = _ignore
        """Called (inside the lock) with a channel that stops being routed."""
        self.call_one: Callable[[Handler, Any], None] = _call_plainly
        """How a signal's receivers are called (set by delivery, which isolates them)."""
        self.database_encoding: DatabaseEncoding | None = None
        """The encoding of the database last connected to, which channel names must be
        representable in; ``None`` before the first connection."""

    def check_representable(self, channel: str) -> None:
        """Raise if the database last connected to cannot hold ``channel`` as a name.

        :raises InvalidChannelName: if it has a character the database encoding lacks, or is
            longer than 63 bytes in it.
        """
        encoding = self.database_encoding
        if encoding is not None:
            encoding.check_channel(channel)

    # ---------------------------------------------------------------- reading

    @property
    def listening(self) -> frozenset[str]:
        """Channels LISTENed on the current session (dispatcher thread)."""
        return frozenset(self._listening)

    def signal(self, channel: str) -> blinker.Signal:
        """Return ``channel``'s signal, made on first use."""
        found = self._signals.get(channel)
        if found is not None:
            return found
        with self._lock:
            found = self._signals.get(channel)
            if found is None:
                found = self._signals[channel] = blinker.Signal(
                    f"notifications on channel {channel!r}"
                )
                changed = _on_receivers_change(self, channel)
                found.receiver_connected.connect(changed, weak=False)
                found.receiver_disconnected.connect(changed, weak=False)
            return found

    def listen_sql(self, channel: str) -> sql.Composable | None:
        """``LISTEN channel`` unless the current session already does; else ``None``."""
        return None if channel in self._listening else listen_sql([channel])

    def unlisten_sql(self, channel: str) -> sql.Composable | None:
        """``UNLISTEN channel`` if the current session listens to it; else ``None``."""
        return unlisten_sql(channel) if channel in self._listening else None

    def unsubscribe_sql(self, channel: str, handler: Handler) -> sql.Composable | None:
        """``UNLISTEN channel`` if ``handler`` is what keeps it listened to; else ``None``."""
        if channel not in self._listening or self._kept_without(channel, handler):
            return None
        return unlisten_sql(channel)

    # ---------------------------------------------------------------- changes

    def listen(self, channel: str, *, listening: bool) -> None:
        """Record ``listen(channel)``; ``listening``: the current session now LISTENs to it."""
        with self._lock:
            self._explicit.add(channel)
            self._want(channel, listening)

    def subscribe(self, channel: str, handler: Handler, *, listening: bool) -> None:
        """Record ``subscribe(channel, handler)`` (a handler already there is kept once)."""
        with self._lock:
            handlers = self._subscribed.get(channel, ())
            if handler not in handlers:
                self._subscribed[channel] = (*handlers, handler)
            self._want(channel, listening)

    def unlisten(self, channel: str) -> bool:
        """Record ``unlisten(channel)``; its handlers stay. ``True``: it is no longer routed."""
        with self._lock:
            self._explicit.discard(channel)
            return self._unroute(channel)

    def unsubscribe(self, channel: str, handler: Handler) -> bool:
        """Record ``unsubscribe``; ``True`` when the channel is no longer routed as a result."""
        with self._lock:
            kept = self._kept_without(channel, handler)
            handlers = tuple(h for h in self._subscribed.get(channel, ()) if h != handler)
            if handlers:
                self._subscribed[channel] = handlers
            else:
                self._subscribed.pop(channel, None)
            if kept:
                self._publish(channel)
                return False
            return self._unroute(channel)

    def session_also_listens(self, channels: frozenset[str]) -> None:
        """The session now LISTENs to ``channels`` too (those still wanted get routed)."""
        with self._lock:
            for channel in channels & self.wanted:
                self._listening.add(channel)
                self._publish(channel)

    def after_fork(self) -> None:
        """In a child process: new locks (the parent's may have been held at fork time)."""
        self._lock = threading.RLock()
        for handlers in self._subscribed.values():
            for handler in handlers:
                after_fork = getattr(handler, "after_fork", None)  # coroutine handlers
                if after_fork is not None:
                    after_fork()

    def session_listens(self, channels: frozenset[str]) -> None:
        """A new session LISTENs to exactly ``channels`` (empty: none, after stopping)."""
        with self._lock:
            self._listening = set(channels)
            self._publish(None)

    # ---------------------------------------------------------------- inside the lock

    def _want(self, channel: str, listening: bool) -> None:
        self.signal(channel)
        if listening:
            self._listening.add(channel)
        if channel not in self.wanted:
            self.wanted = self.wanted | {channel}
        self._publish(channel)

    def _kept_without(self, channel: str, handler: Handler) -> bool:
        """Whether ``channel`` stays wanted once ``handler`` is unsubscribed from it."""
        if channel in self._explicit:
            return True
        if any(h != handler for h in self._subscribed.get(channel, ())):
            return True
        signal = self._signals.get(channel)
        return signal is not None and bool(signal.receivers)

    def _unroute(self, channel: str) -> bool:
        routed = channel in self._listening
        self._listening.discard(channel)
        if channel in self.wanted:
            self.wanted = self.wanted - {channel}
        signal = self._signals.get(channel)
        if channel not in self._subscribed and (signal is None or not signal.receivers):
            self._signals.pop(channel, None)  # a web app's short-lived channels add up
        self._publish(channel)
        if routed:
            self.on_unroute(channel)
        return routed

    def interrupt(self) -> None:
        """Bump :attr:`version` with the table unchanged: a delivery run in progress ends
        after its current call (``stop()`` was requested, or the session was lost in place),
        the one check it makes per notification. Any thread."""
        with self._lock:
            self.version += 1

    def _publish(self, channel: str | None) -> None:
        """Publish a new table: ``channel``'s entry redone, or every entry for ``None``."""
        table = dict(self.table) if channel is not None else {}
        for name in self._listening if channel is None else (channel,):
            handlers: tuple[Handler, ...] = self._subscribed.get(name, ())
            signal = self._signals.get(name)
            if signal is not None and signal.receivers:
                handlers = (*handlers, SignalReceivers(signal, self.call_one))
            if handlers and name in self._listening:
                table[name] = handlers
            else:
                table.pop(name, None)
        self.table = table  # never changed once published
        self.version += 1


def _ignore(_channel: str) -> None:
    pass


def _call_plainly(handler: Handler, notification: Any) -> None:
    handler(notification)


def _on_receivers_change(routes: Routes, channel: str) -> Callable[..., None]:
    def changed(_signal: Any, **_kwargs: Any) -> None:
        with routes._lock:
            routes._publish(channel)

    return changed


def listen_sql(channels: list[str]) -> sql.Composable:
    """``LISTEN "a"; LISTEN "b"``: one round trip for any number of channels."""
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)


def unlisten_sql(channel: str) -> sql.Composable:
    """``UNLISTEN "channel"``, quoted."""
    return sql.SQL("UNLISTEN {}").format(sql.Identifier(channel))
