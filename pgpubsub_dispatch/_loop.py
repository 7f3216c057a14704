"""The dispatcher thread: connect, serve commands and notifications, reconnect, shut down.

Everything here runs on the dispatcher thread (``Loop.main`` is its body), except that a call
made from a handler runs in place through :meth:`Loop.run_in_place` (the dispatcher thread
too). The thread owns the :class:`~pgpubsub_dispatch._session.Session`, the notifies held
while reconnecting, and the heartbeat schedule; it shares the routing table, the counters and
the :class:`~pgpubsub_dispatch._control.Control` under their own rules.

When the session is lost, the thread reconnects with jittered exponential backoff, LISTENs
every wanted channel again in one round trip, and sends ``reconnected`` before dispatching
anything. Meanwhile channel changes are recorded and applied on reconnect, and notifies are
held until a session is up (or their caller gives up).

Backpressure (with an executor): when ``max_pending`` notifications wait for the executor,
the thread neither reads nor writes the listening session until the executor makes room, so
the backlog stays in the server's queue and memory holds at most ``max_pending``
notifications plus what one read of the socket brought. Nothing may run on that session
meanwhile, because the server sends every notification it has queued for a session before it
answers it: any statement, even a heartbeat, would make libpq read the whole backlog. So,
while backpressured (``Delivery.stalled``):

- a statement already in flight waits (its deadline paused), and the heartbeat is postponed:
  the session's liveness is left to TCP keepalives, which the dispatcher turns on;
- ``notify`` and ``queue_usage`` run on the side session (``_side``);
- ``unlisten``/``unsubscribe`` take effect in the routing table at once (no handler is called
  after they return) and their UNLISTEN follows once backpressure ends (``Resync``);
- ``listen``/``subscribe`` wait for backpressure to end (their caller's timeout bounds it).

A handler running on the executor never waits for the listening session, backpressured or
not, since backpressure could begin under it and its own channel could then never drain: its
notifies always use the side session, and its channel changes are recorded at once, their
statements following (for ``listen``, as while reconnecting: a notification committed before
the LISTEN runs is not received). Without an executor none of this applies: the hot path is
unchanged.

Every new session is probed (``_probe``): a notification sent from another session must
arrive. A deaf session fails ``start()``; once running, it is reported (a warning, ``deaf``,
``stats().deaf``) and replaced, and probes go on every heartbeat until one arrives again.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import psycopg2
from psycopg2 import sql

from . import _timeouts, signals
from ._commands import Command, Heartbeat, Notify, NotifyBatch, Resync
from ._control import Control, State
from ._delivery import Delivery, send_signal
from ._names import DatabaseEncoding
from ._options import Options
from ._probe import Probe, Verdict
from ._routing import Routes, listen_sql
from ._session import POLL_WRITE, Session, one_line
from ._side import SideSession
from ._stats import Counters
from ._text import plural
from ._waiting import wait
from .errors import DeafSession, DispatcherStopped, InvalidChannelName, NotConnected

__all__ = ["ConnectionLost", "Loop"]

log = logging.getLogger("pgpubsub_dispatch")

_UNLISTEN_ON_STOP_SECONDS = 1.0
"""How long stopping lets ``UNLISTEN *`` take before closing the connection anyway."""

_STOP_GRACE_SECONDS = 5.0
"""How long stopping lets a command already sent finish before failing it."""

_MAX_BATCH = 1000
"""Most notifies sent in one transaction when callers queue them faster than they commit."""


class ConnectionLost(Exception):
    """Raised on the dispatcher thread when the session is gone; ``reason`` says why."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


class Loop:
    """The dispatcher thread's state and body (one per dispatcher, reused across starts).

    :param sender: the dispatcher (sender of lifecycle signals).
    :param on_stopped: called at the end of every run (closes the dispatcher's streams).
    """

    def __init__(
        self,
        sender: object,
        options: Options,
        control: Control,
        routes: Routes,
        counters: Counters,
        on_stopped: Callable[[], None],
    ) -> None:
        self._sender = sender
        self._options = options
        self._control = control
        self.routes = routes
        self._counters = counters
        self._on_stopped = on_stopped
        self.delivery = Delivery(
            sender,
            routes,
            counters,
            options.executor,
            options.max_pending,
            self._wake_now,
            control.on_loop_thread,
        )
        routes.on_unroute = self.delivery.forget
        self.session: Session | None = None
        self.held: collections.deque[Command] = collections.deque()
        """Commands that need a session, waiting for one (reconnecting)."""
        self.side = SideSession(options, routes)
        self.waiting: collections.deque[Command] = collections.deque()
        """``listen``/``subscribe`` calls waiting for backpressure to end (not taken yet)."""
        self._unlisten_owed: set[str] = set()  # unrouted under backpressure, still LISTENed
        self._resync_due = False  # channel changes recorded under backpressure: catch up
        self._stalled_since: float | None = None
        self._completed: list[tuple[Command, Any]] = []
        """Commands done and delivered, with their results, whose callers are yet to be told
        (see :meth:`_tell_callers`)."""
        self._next_heartbeat = 0.0
        self._probe = Probe(options, self._wake_now)

    # ------------------------------------------------------------------ life cycle

    def main(self, started: Future[None], deadline: float | None) -> None:
        """Body of the dispatcher thread: connect, serve, reconnect, and always clean up."""
        control = self._control
        control.loop_ident = threading.get_ident()
        try:
            verdict = self._connect(deadline, reconnecting=False)
        except BaseException as exc:
            self._abandon_start()
            started.set_exception(self._options.secrets.redacted(exc))
            return
        error: BaseException | None = None
        try:
            with control.lock:
                if control.state is State.STARTING:
                    control.state = State.RUNNING
            assert control.backend_pid is not None
            send_signal(signals.connected, self._sender, backend_pid=control.backend_pid)
            self._settle_probe(verdict, reconnect_if_deaf=False)
            started.set_result(None)
            self._serve_until_stopped()
        except ConnectionLost as lost:
            error = lost.reason
        except BaseException as exc:  # a bug: say so, and still clean up
            error = exc
            log.exception("the dispatcher thread failed")
        finally:
            self._shutdown(error)

    def _serve_until_stopped(self) -> None:
        while True:
            try:
                self._serve()
                return  # stop() was called
            except ConnectionLost as lost:
                if not self._options.reconnect or self._control.stop_requested:
                    raise
                self._on_lost(lost.reason)
                if not self._reconnect():
                    return  # stop() was called while reconnecting

    def _abandon_start(self) -> None:
        """Undo a start() whose connection or initial LISTEN failed."""
        self._close()
        self.routes.session_listens(frozenset())
        self.delivery.pending.clear()
        control = self._control
        with control.lock:
            queued = list(control.queue)
            control.queue.clear()
            control.finish_locked()
        stopped = DispatcherStopped("the dispatcher failed to start")
        for command in queued:
            command.stopped(stopped)

    def _connect(self, deadline: float | None, *, reconnecting: bool) -> Verdict:
        """Open a session, LISTEN every wanted channel in one round trip, and probe it.

        :returns: the probe's verdict on the new session.
        :raises DeafSession: at start, if the session does not hear other sessions.
        :raises psycopg2.Error: if connecting or LISTENing fails.
        :raises TimeoutError: if ``deadline`` passes first.
        :raises DispatcherStopped: if ``stop()`` is called meanwhile.
        """
        waker = self._control.waker
        assert waker is not None
        between = self._absorb_while_connecting if reconnecting else self._raise_if_stopping
        session = self.session = Session.open(self._options, waker, deadline, between)
        session.probe_channel = self._probe.channel
        self.routes.database_encoding = DatabaseEncoding.of(session.server_encoding)
        at = deadline or _timeouts.deadline(self._options.attempt_seconds)
        try:
            channels = self._listen_wanted(session, at, reconnecting=reconnecting)
        finally:
            self._raise_if_stopping()
        self.routes.session_listens(channels)
        self._unlisten_owed.clear()
        self._resync_due = False
        self._stalled_since = None
        self.delivery.new_session()
        self._control.backend_pid = session.backend_pid
        self._counters.pooler = pooler = session.backend_pid != session.libpq_pid
        self._schedule_heartbeat()
        log.info(
            "connected to %s, backend pid %d, listening to %s",
            self._options.target,
            session.backend_pid,
            plural(len(channels), "channel"),
        )
        if pooler:
            log.warning(
                "a pooler is in the way: libpq reports backend pid %d, the server session is "
                "pid %d; LISTEN works only in session pooling (PgBouncer pool_mode = session), "
                "so the dispatcher proves delivery every heartbeat",
                session.libpq_pid,
                session.backend_pid,
            )
        self._take_notifies()
        return self._prove_hearing(session, deadline)

    def _listen_wanted(
        self, session: Session, deadline: float | None, *, reconnecting: bool
    ) -> frozenset[str]:
        """LISTEN the probe channel and every wanted channel, and read the server's pid.

        On a reconnection, a channel the database cannot hold as a name is skipped (logged as
        an error), so that one name never makes every reconnection fail.

        :returns: the channels now LISTENed (the probe's apart).
        :raises InvalidChannelName: at start, for a recorded name the database cannot hold.
        :raises psycopg2.Error, TimeoutError: if LISTENing fails or ``deadline`` passes.
        """
        waker = self._control.waker
        assert waker is not None
        wanted = self.routes.wanted  # final: commands stay queued from here on
        refused: dict[str, BaseException] = {}
        for channel in sorted(wanted):
            try:
                self.routes.check_representable(channel)
            except InvalidChannelName as exc:
                if not reconnecting:
                    raise
                refused[channel] = exc
        channels = sorted(wanted - refused.keys())
        pid_sql = sql.SQL("SELECT pg_backend_pid()")
        statement = sql.SQL("; ").join([listen_sql([self._probe.channel, *channels]), pid_sql])
        try:
            session.execute_now((statement, None), waker, deadline)
        except psycopg2.DataError:  # class 22: a name the database encoding cannot hold
            if not reconnecting or session.closed:
                raise
            for channel in [self._probe.channel, *channels]:
                try:
                    session.execute_now((listen_sql([channel]), None), waker, deadline)
                except psycopg2.DataError as exc:
                    if session.closed or channel == self._probe.channel:
                        raise
                    refused[channel] = exc
            session.execute_now((pid_sql, None), waker, deadline)
        for channel, error in sorted(refused.items()):
            log.error("not listening to %r: %s", channel, one_line(error))
        row = session.fetch_row()
        if row is not None:
            session.backend_pid = int(row[0])
        return frozenset(channels) - refused.keys()

    def _prove_hearing(self, session: Session, deadline: float | None) -> Verdict:
        """Probe a new session, waiting for the verdict (see ``_probe``).

        :raises DeafSession: at start, when the probe's notification does not arrive.
        :raises psycopg2.Error: if the session is lost meanwhile.
        :raises TimeoutError: if ``deadline`` passes first.
        :raises DispatcherStopped: if ``stop()`` is called meanwhile.
        """
        probe, waker = self._probe, self._control.waker
        assert waker is not None
        probe.begin(session.params)
        while True:
            verdict = probe.verdict(session.heard)
            if verdict is not None:
                break
            if _timeouts.remaining(deadline) == 0.0:
                raise TimeoutError("no answer in time while probing the new session")
            at = probe.next_instant()
            if deadline is not None and (at is None or deadline < at):
                at = deadline
            ready = wait([session.fd, waker.fileno()], [], _timeouts.seconds_until(at))
            if waker.fileno() in ready:
                waker.drain()
                self._raise_if_stopping()  # commands stay queued until the session serves
            if session.fd in ready:
                session.poll()
                self._take_notifies()
        if verdict is Verdict.DEAF and self._control.state is State.STARTING:
            probe.finish(frequent=True)
            raise DeafSession(probe.deaf_error_text())
        return verdict

    def _take_notifies(self) -> None:
        assert self.session is not None
        self._counters.received += self.session.take_notifies(self.delivery.pending)

    def _settle_probe(self, verdict: Verdict, *, reconnect_if_deaf: bool) -> None:
        """Act on a probe's verdict: report deafness or its end, and schedule the next probe.

        :raises ConnectionLost: when deaf and ``reconnect_if_deaf`` (a new session may land on
            a good server connection).
        """
        probe, counters, session = self._probe, self._counters, self.session
        assert session is not None
        why_unknown = probe.why_unknown() if verdict is Verdict.UNKNOWN else ""
        probe.finish(frequent=counters.pooler or verdict is not Verdict.HEARD)
        session.heard.clear()
        if verdict is Verdict.HEARD:
            log.debug("the probe's notification arrived (backend pid %d)", session.backend_pid)
            if counters.deaf:
                counters.deaf = False
                log.warning(
                    "notifications sent from other sessions arrive again (backend pid %d)",
                    session.backend_pid,
                )
                send_signal(signals.hearing, self._sender, backend_pid=session.backend_pid)
        elif verdict is Verdict.UNKNOWN:
            log.warning(
                "could not prove that the session receives notifications from other sessions: "
                "the probe %s; trying again later",
                why_unknown,
            )
        else:
            self._deafened(DeafSession(probe.deaf_error_text()), reconnect=reconnect_if_deaf)

    def _deafened(self, error: DeafSession, *, reconnect: bool) -> None:
        """Say loudly that the session is deaf; then replace it when ``reconnect``.

        :raises ConnectionLost: when ``reconnect``.
        """
        self._counters.deaf = True
        self._probe.finish(frequent=True)
        self._note_error(error)
        log.warning("deaf: %s%s", error, "; reconnecting" if reconnect else "")
        send_signal(signals.deaf, self._sender, error=error)
        if reconnect:
            raise ConnectionLost(error)

    def _absorb_while_connecting(self) -> None:
        self._raise_if_stopping()
        self._absorb_commands()

    def _raise_if_stopping(self) -> None:
        if self._control.stop_requested:
            raise DispatcherStopped("stopped while connecting")

    def _on_lost(self, reason: BaseException) -> None:
        """Close the dead session, settle its command, and tell the application."""
        reason = self._options.secrets.redacted(reason)
        self._note_error(reason)
        log.warning(
            "lost the connection to %s (backend pid %s): %s; reconnecting",
            self._options.target,
            self._control.backend_pid,
            self._counters.last_error,
        )
        self._tell_callers()  # what completed before the loss did commit
        command = None if self.session is None else self.session.finish()
        self._close()
        if command is not None:
            command.interrupted(reason, self.routes)
        # Not sent yet: to be served (or held) like any queued command.
        self._control.queue.extendleft(reversed([*self.waiting, *self.side.give_back(reason)]))
        self.waiting.clear()
        self._deliver()  # what arrived before the loss was listened to: deliver it
        self.delivery.pending.clear()
        # The routing table stays until the reconnection replaces it: executor tasks use it.
        send_signal(signals.disconnected, self._sender, error=reason)

    def _reconnect(self) -> bool:
        """Connect again with exponential backoff; ``False`` if stop() came first.

        Each attempt, the first included, follows a pause of half to all of the current delay
        (jitter spreads the clients of a restarted server); the delay starts at
        ``backoff_min`` and doubles after each failure, up to ``backoff_max``.
        """
        options = self._options
        delay = options.backoff_min
        attempt = 0
        while True:
            self._idle_until(_timeouts.deadline(delay / 2 + random.uniform(0, delay / 2)))
            if self._control.stop_requested:
                return False
            attempt += 1
            try:
                verdict = self._connect(None, reconnecting=True)
            except DispatcherStopped:
                self._close()
                return False
            except Exception as exc:
                self._close()
                self._note_error(exc)
                delay = min(delay * 2, options.backoff_max)
                log.warning(
                    "reconnection attempt %d to %s failed: %s; next in %.1f s at most",
                    attempt,
                    options.target,
                    self._counters.last_error,
                    delay,
                )
                continue
            self._counters.reconnects += 1
            log.warning(
                "reconnected to %s after %s, backend pid %s, %s",
                options.target,
                plural(attempt, "attempt"),
                self._control.backend_pid,
                plural(len(self.routes.wanted), "channel"),
            )
            self._control.queue.extendleft(reversed(self.held))  # held ones first, in order
            self.held.clear()
            send_signal(signals.reconnected, self._sender, backend_pid=self._control.backend_pid)
            self._settle_probe(verdict, reconnect_if_deaf=False)
            return True

    def _note_error(self, error: BaseException) -> None:
        scrubbed = self._options.secrets.redacted(error)
        self._counters.last_error = one_line(scrubbed)
        self._control.last_exception = scrubbed

    def _idle_until(self, deadline: float | None) -> None:
        """Sleep until ``deadline`` without a session, serving commands as they come."""
        waker = self._control.waker
        assert waker is not None
        while not self._control.stop_requested:
            if _timeouts.remaining(deadline) == 0.0:
                return
            self._absorb_commands()
            wait([waker.fileno()], [], _timeouts.seconds_until(deadline))
            waker.drain()

    def _absorb_commands(self) -> None:
        """Without a session: record channel changes at once, hold the rest for later."""
        control = self._control
        assert control.waker is not None
        control.waker.disarm()
        while control.queue:
            command = control.queue.popleft()
            if command.needs_session:
                # Left pending, so a caller that times out can still cancel it: never sent.
                self.held.append(command)
            elif command.take():
                try:
                    command.record(self.routes)
                except Exception as exc:  # a name the database cannot hold
                    command.future.set_exception(exc)
                else:
                    command.future.set_result(None)

    def _shutdown(self, error: BaseException | None) -> None:
        """Fail every waiting call, UNLISTEN, close, and mark the dispatcher stopped."""
        control = self._control
        with control.lock:
            control.state = State.STOPPING  # from here on, nobody can queue a command
        if error is not None:
            error = self._options.secrets.redacted(error)
        stopped = DispatcherStopped(
            "the dispatcher stopped" if error is None else f"the connection was lost: {error}"
        )
        stopped.__cause__ = error
        self._tell_callers()
        inflight = None if self.session is None else self.session.finish()
        for command in (inflight, *control.queue, *self.held, *self.waiting):
            if command is not None:
                command.stopped(stopped)
        control.queue.clear()
        self.held.clear()
        self.waiting.clear()
        self.side.stop(stopped)
        self._unlisten_all(error)
        self._close()
        self.delivery.drop_pending()  # received, but stop() came first
        self.routes.session_listens(frozenset())
        with control.lock:
            control.finish_locked()
        if error is not None:
            self._counters.last_error = one_line(error)
            log.warning("the dispatcher stopped: %s", self._counters.last_error)
        # From here on, calls made by receivers take the not-running path (record or raise).
        send_signal(signals.disconnected, self._sender, error=error)
        self._on_stopped()

    def _unlisten_all(self, error: BaseException | None) -> None:
        session, waker = self.session, self._control.waker
        if error is not None or session is None or session.closed or waker is None:
            return
        try:
            at = _timeouts.deadline(_UNLISTEN_ON_STOP_SECONDS)
            session.execute_now((sql.SQL("UNLISTEN *"), None), waker, at)
        except Exception as exc:  # closing ends the session's LISTENs anyway
            log.debug("UNLISTEN * on stop failed: %s", exc)

    def _close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        self._control.backend_pid = None

    def _wake_now(self) -> None:
        """Any thread (an executor made room): interrupt the current wait."""
        waker = self._control.waker
        if waker is not None:
            waker.wake_now()

    # ------------------------------------------------------------------ serving

    def _deliver(self) -> None:
        self.delivery.run(self._control)

    def _serve(self) -> None:
        """Run commands and deliver notifications until stop().

        :raises ConnectionLost: when the session is gone or fails its heartbeat.
        """
        control, session, side = self._control, self.session, self.side
        waker = control.waker
        assert session is not None and waker is not None
        conn_fd, wake_fd = session.fd, waker.fileno()
        executor = self.delivery.work is not None
        grace: float | None = None  # for a command in flight when stop() came
        stalled = False
        while True:
            if control.lost is not None:  # noticed by a handler's in-place call
                lost, control.lost = control.lost, None
                raise lost
            if executor:
                self._deliver()  # hand off first: what is left decides whether to read
                stalled = self._note_stall()
            if control.stop_requested:
                if session.inflight is None and side.inflight is None:
                    return
                if grace is None:
                    grace = _timeouts.deadline(_STOP_GRACE_SECONDS)
                elif _timeouts.remaining(grace) == 0.0:
                    return  # shutdown fails the command in flight with DispatcherStopped
            else:
                self._start_next_command(stalled)
                if side.queue:
                    self._start_side()
                if session.inflight is None and not stalled:
                    self._heartbeat_if_due()
                if session.inflight is None:
                    self._probe_if_due()
            if self._completed:
                self._tell_callers()
            if session.inflight is None:
                self._deliver()
                if control.stop_requested or control.lost is not None or control.queue:
                    continue  # stop, reconnect, or serve what a handler queued
                waker.disarm()  # idle from here: callers must write to wake us
                if control.queue:
                    continue  # queued before the disarm: its wake() wrote nothing
            timeout = self._next_timeout(grace, stalled)
            reads, writes = [wake_fd], []
            if stalled:
                pass  # neither read nor write: the backlog stays in the server's queue
            elif session.inflight is not None and session.waits_for == POLL_WRITE:
                writes.append(conn_fd)
            else:
                reads.append(conn_fd)
            side_fd = side.watch(reads, writes)
            ready = wait(reads, writes, timeout)
            if wake_fd in ready:
                waker.drain()
            if conn_fd in ready:
                self._poll()
            if side_fd is not None and side_fd in ready and side.session is not None:
                side.poll()
            if not ready:
                if not stalled:
                    self._check_inflight_deadline()
                side.check_deadline()

    def _note_stall(self) -> bool:
        """Whether backpressure holds now; when it ends, the paused deadline counts again."""
        stalled = self.delivery.stalled
        since = self._stalled_since
        if stalled and since is None:
            self._stalled_since = time.monotonic()
        elif not stalled and since is not None:
            self._stalled_since = None
            session = self.session
            # The statement in flight was not read meanwhile: that was no fault of the server.
            if session is not None and session.inflight_deadline is not None:
                session.inflight_deadline += time.monotonic() - since
        return stalled

    def _start_side(self) -> None:
        waker = self._control.waker
        assert waker is not None
        with contextlib.suppress(DispatcherStopped):  # stop() while opening it: we stop next
            self.side.start_next(waker, self._raise_if_stopping)

    def _next_timeout(self, grace: float | None, stalled: bool = False) -> float:
        """Seconds until something is due: the stop grace, a deadline or the heartbeat
        (neither of the last two counts while backpressured)."""
        due = grace
        session = self.session
        if self._options.heartbeat_interval is not None and session is not None and not stalled:
            beat = session.inflight_deadline if session.inflight else self._next_heartbeat
            if beat is not None and (due is None or beat < due):
                due = beat
        side_due = self.side.next_deadline()
        if side_due is not None and (due is None or side_due < due):
            due = side_due
        probing = None if session is None or session.inflight else self._probe.next_instant()
        if probing is not None and (due is None or probing < due):
            due = probing
        return _timeouts.seconds_until(due)

    def _check_inflight_deadline(self) -> None:
        """The wait ended with nothing ready: has the command in flight run out of time?"""
        session = self.session
        assert session is not None
        at = session.inflight_deadline
        if session.inflight is not None and at is not None and _timeouts.remaining(at) == 0:
            raise ConnectionLost(
                psycopg2.OperationalError(
                    f"no answer from the server to a {session.inflight.name} in time: "
                    "the connection is presumed dead"
                )
            )

    def _schedule_heartbeat(self) -> None:
        if self._options.heartbeat_interval is not None:
            self._next_heartbeat = time.monotonic() + self._options.heartbeat_interval

    def _heartbeat_if_due(self) -> None:
        """Begin the heartbeat every ``heartbeat_interval`` s, busy or not (it also reads the
        queue usage, which matters most under traffic)."""
        if (
            self._options.heartbeat_interval is not None
            and time.monotonic() >= self._next_heartbeat
        ):
            heartbeat = Heartbeat()
            heartbeat.take()
            self._begin(heartbeat)

    def _probe_if_due(self) -> None:
        """Start the probe when due; judge the probe in progress once it has a verdict.

        :raises ConnectionLost: when the session is found deaf (after saying so).
        """
        probe, session = self._probe, self.session
        assert session is not None
        if not probe.running:
            if probe.due is not None and time.monotonic() >= probe.due:
                probe.begin(session.params)
            return
        verdict = probe.verdict(session.heard)
        if verdict is Verdict.DEAF and session.fd in wait([session.fd], [], 0):
            self._poll()  # what has already come in is read before judging
            verdict = probe.verdict(session.heard)
        if verdict is Verdict.DEAF and self.delivery.backpressure:
            probe.postpone()  # not reading: the notification may be waiting on the server
            return
        if verdict is not None:
            self._settle_probe(verdict, reconnect_if_deaf=True)

    def _start_next_command(self, stalled: bool = False) -> None:
        """Take queued commands until one needs the server (or the queue is empty).

        While ``stalled`` (backpressure), and for every call made by a handler on the
        executor, nothing is started on the listening session: see the module's docstring.
        """
        control, session, side = self._control, self.session, self.side
        queue = control.queue
        assert session is not None
        if not stalled and session.inflight is None:
            if self.waiting:
                queue.extendleft(reversed(self.waiting))
                self.waiting.clear()
            if self._resync_due:
                self._resync()
        while queue and control.lost is None:
            command = queue[0]
            if stalled or command.from_handler or (command.any_session and side.busy):
                queue.popleft()
                self._redirect(command)
                continue
            if session.inflight is not None:
                return
            queue.popleft()
            if command.take():
                if type(command) is Notify and not command.alone:
                    command = self._gather_notifies(command)
                self._begin(command)

    def _redirect(self, command: Command) -> None:
        """Serve ``command`` without the listening session (backpressure, or a handler's call).

        A notify or queue usage goes to the side session (also while it has others, so that
        commits keep their order); an unlisten or unsubscribe, or any channel change made by a
        handler on the executor, is recorded in the routing table at once, its statement
        following; a listen or subscribe from any other thread waits for backpressure to end.
        """
        if command.any_session:
            self.side.submit(command)
        elif command.removes_routes or command.from_handler:
            if command.take():
                try:
                    self._record_for_later(command)
                except Exception as exc:
                    command.future.set_exception(exc)
                    return
                command.future.set_result(None)
        else:
            self.waiting.append(command)  # not taken: its caller can still give up

    def _record_for_later(self, command: Command) -> None:
        routes = self.routes
        before = routes.listening
        command.record(routes)
        self._unlisten_owed |= before - routes.listening  # the session still LISTENs to them
        self._resync_due = True

    def _resync(self) -> None:
        """LISTEN and UNLISTEN what changed while the listening session could not be used."""
        routes = self.routes
        self._resync_due = False
        listen = routes.wanted - routes.listening
        unlisten = frozenset(self._unlisten_owed - routes.wanted)
        command = Resync(listen, unlisten)
        command.take()
        self._begin(command)

    def resynced(self, listened: frozenset[str], unlistened: frozenset[str]) -> None:
        """A :class:`Resync` committed: route what is still wanted, owe what no longer is."""
        routes = self.routes
        routes.session_also_listens(listened)
        self._unlisten_owed -= listened | unlistened
        gone = listened - routes.wanted  # unrouted while the statement was on its way
        if gone:
            self._unlisten_owed |= gone
            self._resync_due = True

    def _gather_notifies(self, first: Notify) -> Command:
        """Take the notifies queued right behind ``first`` to share its transaction.

        Stops at anything else (order is kept), at a retry, and at a (channel, payload) pair
        already taken: the server folds identical notifications of one transaction.
        """
        queue = self._control.queue
        if not queue or type(queue[0]) is not Notify:
            return first
        batch = [first]
        taken = {(first.channel, first.payload)}
        while queue and len(batch) < _MAX_BATCH:
            candidate = queue[0]
            if type(candidate) is not Notify or candidate.alone or candidate.from_handler:
                break
            pair = (candidate.channel, candidate.payload)
            if pair in taken:
                break
            queue.popleft()
            if candidate.take():
                batch.append(candidate)
                taken.add(pair)
        return first if len(batch) == 1 else NotifyBatch(batch)

    def _requeue(self, notifies: list[Notify]) -> None:
        self._control.queue.extendleft(reversed(notifies))

    def _begin(self, command: Command) -> None:
        """Send ``command``'s SQL, or complete it at once when it needs none."""
        session = self.session
        assert session is not None
        try:
            statement = command.statement(self.routes)
        except Exception as exc:  # e.g. a name the database encoding cannot hold
            command.refused(exc, self._requeue)
            return
        if statement is None:
            self._complete(command)
            return
        try:
            session.send(command, statement, self._inflight_deadline(command))
        except psycopg2.Error as exc:
            if session.closed:
                session.inflight = command
                raise ConnectionLost(exc) from exc
            command.refused(exc, self._requeue)
            return
        except Exception as exc:  # e.g. UnicodeEncodeError for the connection's encoding
            command.refused(exc, self._requeue)
            return
        self._poll()

    def _inflight_deadline(self, command: Command) -> float | None:
        options = self._options
        if isinstance(command, Heartbeat):
            return _timeouts.deadline(options.heartbeat_timeout)
        if options.heartbeat_interval is None:
            return None
        return _timeouts.deadline(options.heartbeat_interval + options.heartbeat_timeout)

    def _poll(self) -> None:
        """Advance the session; finish the command in flight; take its notifications.

        :raises ConnectionLost: when the session is gone.
        """
        session = self.session
        assert session is not None
        try:
            state = session.poll()
        except psycopg2.Error as exc:
            command = session.finish()
            if session.closed or command is None:
                session.inflight = command
                raise ConnectionLost(exc) from exc
            self._counters.received += session.take_notifies(self.delivery.pending)
            command.refused(exc, self._requeue)
            return
        self._counters.received += session.take_notifies(self.delivery.pending)
        if state == psycopg2.extensions.POLL_OK and session.inflight is not None:
            self._complete(session.finish())

    def _complete(self, command: Command | None) -> None:
        """Apply a command the server has done, deliver what arrived, then resolve it.

        Notifications already received are delivered first, so that a caller of ``notify``
        on a channel this dispatcher listens to finds its handlers already run. The command
        is queued for resolution whatever happens while delivering, so no caller is ever left
        waiting: see :meth:`_tell_callers`.
        """
        assert command is not None
        try:
            result = command.apply(self)
        except ConnectionLost:
            raise  # a deaf session, found by the heartbeat
        except Exception as exc:  # e.g. a result row of an unexpected shape
            command.refused(exc, self._requeue)
            self._deliver()
            return
        if isinstance(command, Heartbeat):
            self._schedule_heartbeat()
        try:
            self._deliver()
        finally:
            self._completed.append((command, result))

    def _tell_callers(self) -> None:
        """Resolve the commands completed since the last call.

        Called once the next statement is on its way (or there is none), just before the
        thread waits: a woken caller needs the GIL, which this thread then gives up at once,
        and the server works on the next statement meanwhile.
        """
        completed = self._completed
        while completed:
            command, result = completed.pop(0)
            command.resolve(result)

    # Served, for Command.apply
    def fetch_row(self) -> tuple[Any, ...] | None:
        """The first row of the finished statement's result."""
        assert self.session is not None
        return self.session.fetch_row()

    def check_heartbeat(self, row: tuple[Any, ...]) -> None:
        """Compare what the session listens to with what it should (a pooler loses LISTENs).

        :raises ConnectionLost: when the session listens to less than it should.
        """
        usage, channels, pid = row
        self._counters.queue_usage = float(usage)
        if self._counters.queue_usage > self._options.queue_warning:
            log.warning(
                "the server's notification queue is %.0f%% full (a listener stuck in a long "
                "transaction keeps it from emptying; when full, every NOTIFY fails)",
                self._counters.queue_usage * 100,
            )
        if pid != self._control.backend_pid:
            self._deafened(
                DeafSession(
                    f"the server session changed under the dispatcher (pid "
                    f"{self._control.backend_pid}, now {pid}): a pooler in transaction or "
                    "statement mode is in the way, and LISTEN needs session pooling"
                ),
                reconnect=True,
            )
        listed = set(channels)
        missing = sorted(self.routes.listening - listed)
        if missing or self._probe.channel not in listed:
            self._deafened(
                DeafSession(
                    f"the session stopped listening to {missing or 'its probe channel'!r} (a "
                    "pooler in transaction mode? LISTEN needs session pooling)"
                ),
                reconnect=True,
            )
        if self._probe.after_heartbeat and not self._probe.running:
            assert self.session is not None
            self._probe.begin(self.session.params)

    # ------------------------------------------------------------------ in place

    def run_in_place(self, command: Command, deadline: float | None) -> None:
        """Run ``command`` now, on the dispatcher thread (a call made from a handler).

        :raises DispatcherStopped: if stopping.
        :raises NotConnected: for a notify while reconnecting, or when the session is lost.
        :raises TimeoutError: if ``deadline`` passes first.
        :raises psycopg2.Error: what the server raised.
        """
        control = self._control
        if control.state is not State.RUNNING or control.stop_requested:
            raise DispatcherStopped("the dispatcher is stopping")
        if self.session is None or control.lost is not None:  # reconnecting
            if command.needs_session:
                raise NotConnected(f"not connected: reconnecting ({self._counters.last_error})")
            command.record(self.routes)
            return
        command.take()
        try:
            # A statement still in flight (an earlier in-place call timed out) finishes first.
            self._wait_in_place(self.session.inflight, deadline)
            self._begin(command)
            self._wait_in_place(command, deadline)
            self._tell_callers()
        except ConnectionLost as lost:
            control.lost = lost  # the loop reconnects once the handler returns
            if command.needs_session:
                raise NotConnected(f"the connection was lost: {lost.reason}") from lost.reason
            command.interrupted(lost.reason, self.routes)
            return
        command.future.result(0)

    def _wait_in_place(self, command: Command | None, deadline: float | None) -> None:
        """Poll until ``command`` is no longer in flight (nothing to do for ``None``)."""
        session = self.session
        assert session is not None
        while command is not None and session.inflight is command:
            if _timeouts.remaining(deadline) == 0.0:
                # The statement stays in flight; the loop finishes it once the handler returns.
                raise TimeoutError(f"{command.name} did not complete in time")
            timeout = _timeouts.seconds_until(deadline)
            if session.waits_for == POLL_WRITE:
                wait([], [session.fd], timeout)
            else:
                wait([session.fd], [], timeout)
            self._poll()
