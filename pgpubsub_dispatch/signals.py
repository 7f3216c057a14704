"""Lifecycle signals, sent by every :class:`~pgpubsub_dispatch.Dispatcher`.

Module-level blinker signals; the sender is the dispatcher. Receivers run on the dispatcher's
thread, except ``handler_error``'s, which run on the thread that ran the handler (an
executor's, with ``executor=``); an exception in one is logged (logger ``pgpubsub_dispatch``)
and never stops the dispatcher. Connect for one dispatcher only with
``connected.connect(fn, sender=bus)``.

- ``connected(sender, backend_pid: int)``: the first connection of a ``start()`` is up and every
  channel is LISTENed; sent before ``start()`` returns.
- ``disconnected(sender, error: BaseException | None)``: the connection is gone; ``error`` is
  ``None`` after ``stop()`` and the cause otherwise.
- ``reconnected(sender, backend_pid: int)``: a new connection listens to every channel again;
  notifications sent during the gap may have been lost, so resynchronise.
- ``deaf(sender, error: DeafSession)``: the session stopped receiving notifications sent from
  other sessions (a pooler in transaction mode); sent each time a probe finds it deaf, while
  ``stats().deaf`` stays ``True``. The dispatcher reconnects to recover.
- ``hearing(sender, backend_pid: int)``: a probe proved again, after ``deaf``, that
  notifications from other sessions arrive; ``stats().deaf`` is ``False`` again.
- ``handler_error(sender, handler, notification, error)``: a handler raised ``error`` (any
  ``BaseException``) while handling ``notification``; the other handlers still received it.
- ``gap(sender, channel: str, missing: range)``: on a gap-free channel, the positions in
  ``missing`` were pruned before this dispatcher delivered them (its retention window let them
  go); sent before the notifications after them are delivered.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "connected",
    "deaf",
    "disconnected",
    "gap",
    "handler_error",
    "hearing",
    "reconnected",
]

_signals = Namespace()

connected = _signals.signal("connected", doc="connected(sender, backend_pid: int)")
disconnected = _signals.signal(
    "disconnected", doc="disconnected(sender, error: BaseException | None)"
)
reconnected = _signals.signal("reconnected", doc="reconnected(sender, backend_pid: int)")
deaf = _signals.signal("deaf", doc="deaf(sender, error: DeafSession)")
hearing = _signals.signal("hearing", doc="hearing(sender, backend_pid: int)")
handler_error = _signals.signal(
    "handler_error", doc="handler_error(sender, handler, notification, error: BaseException)"
)
gap = _signals.signal("gap", doc="gap(sender, channel: str, missing: range)")
