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

Backpressure (with an executor) and calls made by executor handlers are served without the
listening session when needed: see ``_detour``. Without an executor none of it applies: the
hot path is unchanged.

Every new session is probed: see ``_hearing``.
"""

from __future__ import annotations

import collections
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
from ._commands import Command, Heartbeat, Notify, gather_notifies
from ._control import Control, State
from ._delivery import Delivery, send_signal
from ._detour import Detour
from ._hearing import Hearing, Verdict
from ._names import DatabaseEncoding
from ._options import Options
from ._routing import Routes
from ._session import POLL_WRITE, Session, SessionLost, one_line
from ._stats import Counters
from ._text import plural
from ._waiting import wait
from .errors import DeafSession, DispatcherStopped, NotConnected

__all__ = ["Loop"]

log = logging.getLogger("pgpubsub_dispatch")

_UNLISTEN_ON_STOP_SECONDS = 1.0
"""How long stopping lets ``UNLISTEN *`` take before closing the connection anyway."""

_STOP_GRACE_SECONDS = 5.0
"""How long stopping lets a command already sent finish before failing it."""


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
        self.detour = Detour(options, routes)
        self.side = self.detour.side
        self._completed: list[tuple[Command, Any]] = []
        """Commands done and delivered, with their results, whose callers are yet to be told
        (see :meth:`_tell_callers`)."""
        self._next_heartbeat = 0.0
        self.hearing = Hearing(sender, options, counters, self._note_error, self._wake_now)

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
            assert self.session is not None
            self.hearing.settle(verdict, self.session, reconnect_if_deaf=False)
            started.set_result(None)
            self._serve_until_stopped()
        except SessionLost as lost:
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
            except SessionLost as lost:
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
        session.probe_channel = self.hearing.channel
        self.routes.database_encoding = DatabaseEncoding.of(session.server_encoding)
        at = deadline or _timeouts.deadline(self._options.attempt_seconds)
        try:
            channels = session.listen_all(
                self.routes.wanted,  # final: commands stay queued from here on
                self.hearing.channel,
                self.routes.check_representable,
                waker,
                at,
                reconnecting=reconnecting,
            )
        finally:
            self._raise_if_stopping()
        self.routes.session_listens(channels)
        self.detour.session_started()
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
        return self.hearing.prove(
            session,
            waker,
            deadline,
            starting=self._control.state is State.STARTING,
            on_wake=self._raise_if_stopping,
            take_notifies=self._take_notifies,
        )

    def _take_notifies(self) -> None:
        assert self.session is not None
        self._counters.received += self.session.take_notifies(self.delivery.pending)

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
        waiting = self.detour.waiting
        self._control.queue.extendleft(reversed([*waiting, *self.side.give_back(reason)]))
        waiting.clear()
        # What arrived before the loss was listened to: deliver it (what the executor has no
        # room for yet stays pending, for after the reconnection).
        self._deliver()
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
            assert self.session is not None
            self.hearing.settle(verdict, self.session, reconnect_if_deaf=False)
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
        for command in (inflight, *control.queue, *self.held, *self.detour.waiting):
            if command is not None:
                command.stopped(stopped)
        control.queue.clear()
        self.held.clear()
        self.detour.waiting.clear()
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

        :raises SessionLost: when the session is gone or fails its heartbeat.
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
                stalled = self.detour.note_stall(self.delivery.stalled, session)
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
                    if self._completed:
                        self._tell_callers()  # opening the side session may wait
                    self.detour.start_side(waker, self._raise_if_stopping)
                if session.inflight is None and not stalled:
                    self._heartbeat_if_due()
                if session.inflight is None:
                    self.hearing.if_due(session, self._poll, self.delivery.backpressure)
            if session.inflight is None:
                self._deliver()
                if control.stop_requested or control.lost is not None or control.queue:
                    continue  # stop, reconnect, or serve what a handler queued
                if not stalled and self.detour.ready_to_catch_up:
                    continue  # the session is free again: what waited for it goes first
            if session.inflight is None or stalled:
                # About to wait with no answer on its way to wake us (idle, or not reading
                # the session under backpressure): callers must write to wake us.
                waker.disarm()
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
            if self._completed:
                # Last thing before waiting: a woken caller needs the GIL, which this thread
                # gives up in wait(); told earlier, it would wait for the GIL a second time.
                self._tell_callers()
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
        probing = self.hearing.next_instant(session)
        if probing is not None and (due is None or probing < due):
            due = probing
        return _timeouts.seconds_until(due)

    def _check_inflight_deadline(self) -> None:
        """The wait ended with nothing ready: has the command in flight run out of time?"""
        session = self.session
        assert session is not None
        at = session.inflight_deadline
        if session.inflight is not None and at is not None and _timeouts.remaining(at) == 0:
            raise SessionLost(
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

    def _start_next_command(self, stalled: bool = False) -> None:
        """Take queued commands until one needs the server (or the queue is empty).

        While ``stalled`` (backpressure), and for every call made by a handler on the
        executor, nothing is started on the listening session: see the module's docstring.
        """
        control, session, detour = self._control, self.session, self.detour
        queue = control.queue
        assert session is not None
        if not stalled and session.inflight is None:
            resync = detour.catch_up(queue)
            if resync is not None:
                self._begin(resync)
        while queue and control.lost is None:
            command = queue[0]
            if detour.must_detour(command, stalled):
                queue.popleft()
                detour.redirect(command)
                continue
            if session.inflight is not None:
                return
            queue.popleft()
            if command.take():
                if type(command) is Notify and not command.alone:
                    command = gather_notifies(command, queue, keep_handler_calls_apart=True)
                self._begin(command)

    def resynced(self, listened: frozenset[str], unlistened: frozenset[str]) -> None:
        """A :class:`Resync` committed (see ``_detour``)."""
        self.detour.resynced(listened, unlistened)

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
                raise SessionLost(exc) from exc
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

        :raises SessionLost: when the session is gone.
        """
        session = self.session
        assert session is not None
        try:
            state = session.poll()
        except psycopg2.Error as exc:
            command = session.finish()
            if session.closed or command is None:
                session.inflight = command
                raise SessionLost(exc) from exc
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
        except SessionLost:
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
            if command.has_caller:
                self._completed.append((command, result))
            else:
                command.resolve(result)  # nobody waits; what it settles (detour) is settled now
        if self._completed and self._control.queue:
            # Other calls wait (contention): tell these callers now, before the next statement
            # is built and sent, so that they run, and queue their next calls, meanwhile. Told
            # after it, they held this thread up behind them for the GIL when the answer came:
            # 8 threads 1.39 -> 1.65, 32 threads 2.16 -> 2.47 times the bare rate (medians of
            # 5 interleaved runs). Nothing queued: see _serve (told just before waiting).
            self._tell_callers()

    def _tell_callers(self) -> None:
        """Resolve the commands completed since the last call.

        A woken caller needs the GIL, so the moment matters: with other calls queued, at
        completion (:meth:`_complete`: the callers run while the next statement is built);
        otherwise just before the thread waits (it then gives the GIL up at once), and before
        anything else that may wait (opening the side session), a lost session or stopping.
        Commands nobody waits for are settled at completion instead (``has_caller``): the
        loop's own state may depend on them.
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

        :raises SessionLost: when the session listens to less than it should.
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
            self.hearing.deafened(
                DeafSession(
                    f"the server session changed under the dispatcher (pid "
                    f"{self._control.backend_pid}, now {pid}): a pooler in transaction or "
                    "statement mode is in the way, and LISTEN needs session pooling"
                ),
                reconnect=True,
            )
        listed = set(channels)
        missing = sorted(self.routes.listening - listed)
        if missing or self.hearing.channel not in listed:
            self.hearing.deafened(
                DeafSession(
                    f"the session stopped listening to {missing or 'its probe channel'!r} (a "
                    "pooler in transaction mode? LISTEN needs session pooling)"
                ),
                reconnect=True,
            )
        probe = self.hearing.probe
        if probe.after_heartbeat and not probe.running:
            assert self.session is not None
            self.session.expecting_probe = True
            probe.begin(self.session.params)

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
        except SessionLost as lost:
            control.lost = lost  # the loop reconnects once the handler returns
            self.routes.interrupt()  # and delivers nothing more meanwhile
            if command.needs_session:
                raise NotConnected(f"the connection was lost: {lost.reason}") from lost.reason
            if self.session.inflight is command:
                self.session.finish()  # settled here: the reconnection must not settle it again
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
