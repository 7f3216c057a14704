"""Receiving on gap-free channels: each notification once, in position (= commit) order.

The :class:`Sequencer` stands between the notifications a session has received and their
delivery. Each time the dispatcher thread delivers, :meth:`Sequencer.ready` walks the pending
notifications from the oldest and takes out those that may be delivered now:

* a notification of a plain channel: as it is;
* one of a gap-free channel whose position is at most the last delivered: dropped (a catch-up
  read already delivered it);
* position ``last + 1`` with its payload carried in the NOTIFY: delivered at once, no query
  (the fast path);
* otherwise (a later position: notifications were missed; or a payload too big for the
  NOTIFY): a :class:`~._commands.CatchUp` read of everything after ``last`` is queued, and the
  walk stops there. Nothing behind it is delivered until the read is back: a channel that is
  catching up holds up delivery (of every channel, which keeps this simple and correct). If
  that read shows the server's counter below the notification's position (a NOTIFY forged
  with ``pg_notify()``, or one sent before the log was reset), the notification is dropped
  (one warning per channel, counted in ``stats().gapless_stale``): a read is never repeated
  for the same notification, so such a NOTIFY cannot stall delivery.

After every new session (``Delivery.new_session``) and whenever a gap-free channel starts being
LISTENed, a catch-up read runs before any live notification of the channel is delivered: it
delivers what was committed while nobody listened. The read's rows go to the front of the
pending notifications, where the same walk admits them by position. Positions a read finds
missing were pruned: the ``gap`` signal says which.

What is "delivered": handed to the handlers (or to the executor). If delivery stops early
(``stop()``, a lost session, executor backpressure), what was taken out and not handed over is
put back, and ``last`` set back to match (:meth:`Sequencer.give_back`).

Threads: everything runs on the dispatcher thread, except :meth:`Sequencer.position`, which
any thread may call (it reads one ``int`` reference).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg2

from .. import _timeouts, signals
from .._commands import Statement
from .._control import Control, State
from .._delivery import send_signal
from .._routing import Routes
from ..errors import DispatcherStopped
from ._commands import CatchUp, Report
from ._config import Config, GaplessNotification
from ._sql import (
    CATCH_UP_MAX_BYTES,
    CATCH_UP_MAX_ROWS,
    MARKER,
    catch_up_statement,
    log_tag,
    report_statement,
)

__all__ = ["Sequencer"]

log = logging.getLogger("pgpubsub_dispatch")

_MARKER_LENGTH = len(MARKER)

REPORT_CHANGED_SECONDS = 5.0
"""How often changed positions are recorded in ``pgpubsub_readers``."""

REPORT_ALIVE_SECONDS = 15.0
"""How often the registration is refreshed even when nothing changed."""

_RETRY_MAX_SECONDS = 30.0


class _Channel:
    """One gap-free channel's reading state (dispatcher thread)."""

    __slots__ = (
        "claim",
        "claimed",
        "failure",
        "failures",
        "last",
        "listened",
        "more",
        "name",
        "reading",
        "refuted",
        "reported",
        "retry_at",
        "stale_warned",
        "token",
        "warned",
    )

    def __init__(self, name: str, since: int | None) -> None:
        self.name = name
        self.last: int | None = since
        """The last position handed to the handlers; ``None`` until the first read."""
        self.listened = False  # LISTENed on the current session, and caught up on it
        self.reading = False  # a catch-up read is queued or in flight
        self.token = 0  # identifies the current read; older ones are obsolete
        self.more = False  # the last read stopped at its size limit
        self.failures = 0
        self.failure: BaseException | None = None  # the last read's error, until one succeeds
        self.retry_at = 0.0
        self.reported: int | None = None
        self.warned = False
        self.claim: Any = None  # the live notification whose position the current read seeks
        self.claimed = 0  # its position
        self.refuted: Any = None  # a live notification a read showed the server never reached
        self.stale_warned = False


class Sequencer:
    """Orders, de-duplicates and completes the notifications of a dispatcher's gap-free channels.

    :param sender: the dispatcher (sender of the ``gap`` signal).
    :param config: its gap-free channels.
    :param control: where to queue reads (the front of the command queue).
    :param routes: what the session LISTENs to.
    :param pending: the delivery's pending notifications (read rows go to its front).
    """

    def __init__(
        self,
        sender: object,
        config: Config,
        control: Control,
        routes: Routes,
        pending: collections.deque[Any],
    ) -> None:
        self._sender = sender
        self._config = config
        self._control = control
        self._routes = routes
        self._pending = pending
        self._channels = {name: _Channel(name, config.since.get(name)) for name in config.channels}
        self._routes_version = -1
        self._listened_any = False
        self._retrying = False
        self._next_report = 0.0
        self._next_alive = 0.0
        self._catch_up_sql = catch_up_statement(config.schema)
        self._report_sql = report_statement(config.schema)
        self._hold = config.window
        self._tag = log_tag(config.schema)
        self._foreign_logged: set[str] = set()
        self._known = threading.Condition()
        """Notified when a read sets a channel's first position, or fails."""
        self.skipped = 0
        """Live notifications dropped because a read had delivered them already."""
        self.gaps = 0
        """Gaps found (``gap`` signals sent)."""
        self.stale = 0
        """Live notifications dropped because the server's counter never reached their
        position (a forged NOTIFY, or one sent before the log was reset)."""

    # ---------------------------------------------------------------- any thread

    def position(self, channel: str) -> int | None:
        """The last position of ``channel`` handed to handlers (``None`` before the first read).

        :raises ValueError: if ``channel`` is not one of the gap-free channels.
        """
        state = self._channels.get(channel)
        if state is None:
            raise ValueError(f"{channel!r} is not a gap-free channel of this dispatcher")
        return state.last

    def wait_known(
        self, channels: Iterable[str], deadline: float | None, *, raise_failure: bool
    ) -> None:
        """Wait until each gap-free one of ``channels`` has a position (its first read is
        back), so that whatever commits afterwards is delivered. Callers' threads only.

        :param raise_failure: raise a read's error instead of returning.
        :raises psycopg2.Error: a failed read's error, with ``raise_failure``.
        :raises TimeoutError: if ``deadline`` passes first.
        :raises DispatcherStopped: if the dispatcher stops meanwhile.
        """
        states = [self._channels[c] for c in channels if c in self._channels]
        with self._known:
            while True:
                waiting = [state for state in states if state.last is None]
                if not waiting:
                    return
                failed = next((s.failure for s in waiting if s.failure is not None), None)
                if failed is not None:
                    if raise_failure:
                        raise failed
                    return
                if self._control.state is not State.RUNNING:
                    raise DispatcherStopped("the dispatcher stopped before its first read")
                remaining = _timeouts.remaining(deadline)
                if remaining == 0.0:
                    raise TimeoutError(
                        f"the first read of gap-free channel {waiting[0].name!r} did not "
                        "complete in time"
                    )
                self._known.wait(0.1 if remaining is None else min(remaining, 0.1))

    # ---------------------------------------------------------------- delivery's side

    def session_started(self) -> None:
        """A new session LISTENs: every gap-free channel must be read again before delivery."""
        for state in self._channels.values():
            state.listened = False
            state.reading = False
            state.more = False
            state.failures = 0
            state.token += 1  # reads queued for the old session are obsolete
            state.claim = state.refuted = None
        self._routes_version = -1
        self._listened_any = False
        self._next_alive = 0.0

    def ready(self, pending: collections.deque[Any]) -> collections.deque[Any]:
        """Take the notifications that may be delivered now out of ``pending``, in order.

        Returns ``pending`` itself when no gap-free channel is LISTENed (nothing to order).
        """
        self._sync()
        if not self._listened_any:
            return pending
        channels = self._channels
        out: collections.deque[Any] = collections.deque()
        take, put = pending.popleft, out.append
        while pending:
            notification = pending[0]
            state = channels.get(notification.channel)
            if state is None or not state.listened:
                put(take())  # a plain channel (or one no longer LISTENed: dropped later)
                continue
            if state.reading:
                break
            entry = self._parse(notification, state)
            if entry is None:
                take()  # not one of this log's (a plain NOTIFY, or another schema's log)
                continue
            last = state.last
            assert last is not None  # set by the read that ended `reading`
            position = entry if isinstance(entry, int) else entry.position
            if position <= last:
                take()
                self.skipped += 1
            elif position == last + 1 and not isinstance(entry, int):
                take()
                state.last = position
                put(entry)
            elif notification is state.refuted:
                take()  # a read found the server's counter below it: it never committed there
                state.refuted = None
                self._drop_stale(state, position)
            else:
                # Missed some, or the payload is in the row only. The read settles this
                # notification: it delivers its position, or shows the server never had it.
                self._start_read(state, notification, position)
                break
        return out

    def give_back(self, ready: collections.deque[Any], pending: collections.deque[Any]) -> None:
        """Put back what delivery did not hand over, and queue the reads and reports due."""
        if ready is not pending and ready:
            seen: set[str] = set()
            for notification in ready:
                if type(notification) is GaplessNotification and notification.channel not in seen:
                    seen.add(notification.channel)
                    self._channels[notification.channel].last = notification.position - 1
            pending.extendleft(reversed(ready))
            ready.clear()
        if self._listened_any:
            self._read_more(pending)
            self._report_if_due()

    # ---------------------------------------------------------------- reads

    def expects(self, command: CatchUp) -> bool:
        """Whether ``command`` is the current read of its channel (else it is obsolete)."""
        state = self._channels[command.channel]
        return state.reading and command.token == state.token

    def catch_up_statement(self, command: CatchUp) -> Statement | None:
        """The read's SQL, from the channel's last position as it is now; ``None`` if obsolete."""
        if not self.expects(command):
            return None
        state = self._channels[command.channel]
        return self._catch_up_sql, {
            "channel": state.name,
            "after": state.last,
            "reader": self._config.reader,
            "hold": self._hold,
            "max_rows": CATCH_UP_MAX_ROWS,
            "max_bytes": CATCH_UP_MAX_BYTES,
        }

    def caught_up(self, command: CatchUp, row: tuple[Any, ...] | None) -> None:
        """A read is back: put its rows at the front of the pending notifications."""
        if row is None or not self.expects(command):
            return
        state = self._channels[command.channel]
        counter, after, _registered, positions, payloads, pids = row
        state.reading = False
        state.failures = 0
        state.failure = None
        state.reported = after
        if state.claim is not None and counter < state.claimed:
            state.refuted = state.claim  # committed before this read, yet not on the server
        state.claim = None
        if state.last is not None and counter < state.last:
            log.warning(
                "gap-free channel %r is at position %d on the server, behind the %d delivered "
                "(its log was reset, or a failover lost committed rows): continuing from %d",
                state.name,
                counter,
                state.last,
                counter,
            )
            state.last = counter
            state.more = False
            return
        if state.last is None:
            with self._known:
                state.last = after
                self._known.notify_all()
        first = positions[0] if positions else counter + 1
        if first > state.last + 1:
            self._gap(state, range(state.last + 1, first))
            state.last = first - 1
        entries = [
            GaplessNotification(state.name, payload, pid, position)
            for position, payload, pid in zip(positions, payloads, pids)
        ]
        self._pending.extendleft(reversed(entries))
        state.more = bool(positions) and positions[-1] < counter

    def catch_up_failed(self, command: CatchUp, error: BaseException) -> None:
        """The server refused a read: retry later, with a growing delay."""
        if not self.expects(command):
            return
        state = self._channels[command.channel]
        state.reading = False
        with self._known:
            state.failure = error
            self._known.notify_all()
        state.failures += 1
        delay = min(_RETRY_MAX_SECONDS, 0.5 * 2 ** min(state.failures, 10))
        state.retry_at = time.monotonic() + delay
        self._retrying = True
        hint = ""
        if isinstance(error, (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSchemaName)):
            hint = (
                f" (is the log installed in schema {self._config.schema!r}? run "
                "pgpubsub_dispatch.gapless.install(conn) or pgpubsub-dispatch install)"
            )
        log.error(
            "reading gap-free channel %r failed: %s%s; nothing of it is delivered until a read "
            "succeeds (next try in %.1f s)",
            state.name,
            " ".join(str(error).split()),
            hint,
            delay,
        )

    def _sync(self) -> None:
        """Start a read for each gap-free channel newly LISTENed, and for retries due."""
        routes = self._routes
        if routes.version != self._routes_version:
            self._routes_version = routes.version
            listening = routes.listening
            for state in self._channels.values():
                if state.name in listening:
                    if not state.listened:
                        state.listened = True
                        self._start_read(state)
                elif state.listened:
                    state.listened = False
                    state.reading = False
                    state.more = False
                    state.token += 1
            self._listened_any = any(s.listened for s in self._channels.values())
        if self._retrying:
            now = time.monotonic()
            self._retrying = False
            for state in self._channels.values():
                if state.failures and state.listened and not state.reading:
                    if now >= state.retry_at:
                        self._start_read(state)
                    else:
                        self._retrying = True

    def _start_read(self, state: _Channel, claim: Any = None, claimed: int = 0) -> None:
        """Queue a read of ``state``'s channel; ``claim``: the live notification (at position
        ``claimed``) that asks for it, if any (it was received, so committed, before the read
        runs: a read whose counter is below ``claimed`` proves it stale)."""
        state.reading = True
        state.claim, state.claimed = claim, claimed
        state.token += 1
        # At the front: it holds up delivery, so it goes before callers' commands.
        self._control.queue.appendleft(CatchUp(self, state.name, state.token))

    def _read_more(self, pending: collections.deque[Any]) -> None:
        """A read stopped at its size limit: read on once its rows have been delivered."""
        for state in self._channels.values():
            if (
                state.more
                and not state.reading
                and state.listened
                and not any(n.channel == state.name for n in pending)
            ):
                state.more = False
                self._start_read(state)

    def _drop_stale(self, state: _Channel, position: int) -> None:
        self.stale += 1
        if state.stale_warned:
            log.debug("dropped a stale notification at position %d of %r", position, state.name)
            return
        state.stale_warned = True
        log.warning(
            "dropped a notification at position %d on gap-free channel %r: the server's "
            "counter never reached it (a NOTIFY forged with pg_notify(), or sent before the log "
            "was reset); such ones are dropped and counted in stats().gapless_stale",
            position,
            state.name,
        )

    def _gap(self, state: _Channel, missing: range) -> None:
        self.gaps += 1
        log.warning(
            "gap-free channel %r: positions %d to %d were pruned before this dispatcher "
            "delivered them",
            state.name,
            missing.start,
            missing.stop - 1,
        )
        send_signal(signals.gap, self._sender, channel=state.name, missing=missing)

    def _parse(self, notification: Any, state: _Channel) -> GaplessNotification | int | None:
        """The entry to deliver, or just its position (the payload is in the row), or
        ``None`` for a notification that is not one of this log's: sent with plain NOTIFY
        (warned once), or numbered by another schema's log (its tag differs: logged once at
        debug level). A payload without a tag comes from a log installed before tags existed,
        and is taken as this log's."""
        if type(notification) is GaplessNotification:
            return notification
        payload: str = notification.payload
        if payload.startswith(MARKER):
            rest = payload[_MARKER_LENGTH:]
            digits = len(rest) - len(rest.lstrip("0123456789"))
            if 0 < digits <= 19:  # a bigint
                position, rest = int(rest[:digits]), rest[digits:]
                if rest.startswith("@"):  # the log's tag
                    tag = self._tag
                    if not rest.startswith(tag):
                        self._foreign(state)
                        return None
                    rest = rest[len(tag) :]
                if not rest:
                    return position
                if rest.startswith(":"):
                    return GaplessNotification(
                        notification.channel, rest[1:], notification.pid, position
                    )
        if not state.warned:
            state.warned = True
            log.warning(
                "ignored a notification on gap-free channel %r that has no position (sent "
                "with NOTIFY or pg_notify() instead of %s.pgpubsub_notify()); every such one "
                "is ignored",
                state.name,
                self._config.schema,
            )
        return None

    def _foreign(self, state: _Channel) -> None:
        """A notification of the channel numbered by another log (another schema's)."""
        if state.name not in self._foreign_logged:
            self._foreign_logged.add(state.name)
            log.debug(
                "ignoring notifications on gap-free channel %r numbered by another log than "
                "schema %r's (each such one is ignored)",
                state.name,
                self._config.schema,
            )

    # ---------------------------------------------------------------- reports

    def _report_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_report:
            return
        self._next_report = now + REPORT_CHANGED_SECONDS
        positions = self._reportable(self._channels.values())
        changed = any(self._channels[name].reported != last for name, last in positions.items())
        if positions and (changed or now >= self._next_alive):
            self._next_alive = now + REPORT_ALIVE_SECONDS
            self._control.queue.append(Report(self, positions))

    def _reportable(self, states: Iterable[_Channel]) -> dict[str, int]:
        """The positions to record: a channel being read is left out, as its read registers
        the reader itself, from a position it checks against the server's counter."""
        return {
            state.name: state.last
            for state in states
            if state.listened and not state.reading and state.last is not None
        }

    def report_statement(self, command: Report) -> Statement | None:
        """The report's SQL, with the positions as they are now (a read since the report was
        queued may have corrected them); ``None`` when there is none left to record."""
        command.positions = self._reportable(self._channels[name] for name in command.positions)
        if not command.positions:
            return None
        return self._report_sql, {
            "reader": self._config.reader,
            "hold": self._hold,
            "channels": list(command.positions),
            "positions": list(command.positions.values()),
        }

    def reported(self, command: Report, error: BaseException | None) -> None:
        """A report is done (``error`` is ``None``) or was refused."""
        if error is not None:
            log.warning("recording gap-free positions failed: %s", " ".join(str(error).split()))
            return
        for name, position in command.positions.items():
            self._channels[name].reported = position
