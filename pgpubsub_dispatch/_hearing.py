"""Proving that a session hears notifications sent from other sessions, and saying when not.

Dispatcher thread only (a :class:`Hearing` belongs to the :class:`~pgpubsub_dispatch._loop.Loop`).

Every new session is probed (``_probe``): a notification sent from another session must
arrive. A deaf session fails ``start()``; once running, it is reported (a warning, ``deaf``,
``stats().deaf``) and replaced, and probes go on every heartbeat until one arrives again.
Behind a pooler, a probe follows every heartbeat; on a direct connection, one every ten
minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from . import _timeouts, signals
from ._delivery import send_signal
from ._options import Options
from ._probe import Probe, Verdict
from ._session import Session, SessionLost
from ._stats import Counters
from ._waiting import Waker, wait
from .errors import DeafSession

__all__ = ["Hearing", "Verdict"]

log = logging.getLogger("pgpubsub_dispatch")


class Hearing:
    """The probe of a dispatcher's sessions, and what is said of their verdicts.

    :param sender: the dispatcher (sender of ``deaf`` and ``hearing``).
    :param note_error: records an error as the dispatcher's last one.
    :param wake: wakes the dispatcher thread (the probe's thread sent its notification).
    """

    def __init__(
        self,
        sender: object,
        options: Options,
        counters: Counters,
        note_error: Callable[[BaseException], None],
        wake: Callable[[], None],
    ) -> None:
        self._sender = sender
        self._counters = counters
        self._note_error = note_error
        self.probe = Probe(options, wake)

    @property
    def channel(self) -> str:
        """The private channel the probe notifies on."""
        return self.probe.channel

    def next_instant(self, session: Session | None) -> float | None:
        """When the probe next wants the thread awake (``None``: not while a statement runs)."""
        return None if session is None or session.inflight else self.probe.next_instant()

    def prove(
        self,
        session: Session,
        waker: Waker,
        deadline: float | None,
        *,
        starting: bool,
        on_wake: Callable[[], None],
        take_notifies: Callable[[], None],
    ) -> Verdict:
        """Probe a new session, waiting for the verdict (see ``_probe``).

        :raises DeafSession: at start, when the probe's notification does not arrive.
        :raises psycopg2.Error: if the session is lost meanwhile.
        :raises TimeoutError: if ``deadline`` passes first.
        :raises DispatcherStopped: if ``stop()`` is called meanwhile.
        """
        probe = self.probe
        session.expecting_probe = True
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
                on_wake()  # commands stay queued until the session serves
            if session.fd in ready:
                session.poll()
                take_notifies()
        if verdict is Verdict.DEAF and starting:
            probe.finish(frequent=True)
            raise DeafSession(probe.deaf_error_text())
        return verdict

    def settle(self, verdict: Verdict, session: Session, *, reconnect_if_deaf: bool) -> None:
        """Act on a probe's verdict: report deafness or its end, and schedule the next probe.

        :raises SessionLost: when deaf and ``reconnect_if_deaf`` (a new session may land on
            a good server connection).
        """
        probe, counters = self.probe, self._counters
        why_unknown = probe.why_unknown() if verdict is Verdict.UNKNOWN else ""
        probe.finish(frequent=counters.pooler or verdict is not Verdict.HEARD)
        session.heard.clear()
        if verdict is Verdict.HEARD:
            session.expecting_probe = False  # it came: no other is on its way
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
            self.deafened(DeafSession(probe.deaf_error_text()), reconnect=reconnect_if_deaf)

    def deafened(self, error: DeafSession, *, reconnect: bool) -> None:
        """Say loudly that the session is deaf; then replace it when ``reconnect``.

        :raises SessionLost: when ``reconnect``.
        """
        self._counters.deaf = True
        self.probe.finish(frequent=True)
        self._note_error(error)
        log.warning("deaf: %s%s", error, "; reconnecting" if reconnect else "")
        send_signal(signals.deaf, self._sender, error=error)
        if reconnect:
            raise SessionLost(error)

    def if_due(self, session: Session, poll: Callable[[], None], backpressure: bool) -> None:
        """Start the probe when due; judge the probe in progress once it has a verdict.

        :raises SessionLost: when the session is found deaf (after saying so).
        """
        probe = self.probe
        if not probe.running:
            if probe.due is not None and time.monotonic() >= probe.due:
                session.expecting_probe = True
                probe.begin(session.params)
            return
        verdict = probe.verdict(session.heard)
        if verdict is Verdict.DEAF and session.fd in wait([session.fd], [], 0):
            poll()  # what has already come in is read before judging
            verdict = probe.verdict(session.heard)
        if verdict is Verdict.DEAF and backpressure:
            probe.postpone()  # not reading: the notification may be waiting on the server
            return
        if verdict is not None:
            self.settle(verdict, session, reconnect_if_deaf=True)
