"""Lifecycle signals, sent by every :class:`~pgpubsub_dispatch.Dispatcher`.

Module-level blinker signals; the sender is the dispatcher. Receivers run on the dispatcher's
thread; an exception in one is logged (logger ``pgpubsub_dispatch``) and never stops the
dispatcher. Connect for one dispatcher only with ``connected.connect(fn, sender=bus)``.

- ``connected(sender, backend_pid: int)``: the first connection of a ``start()`` is up and every
  channel is LISTENed; sent before ``start()`` returns.
- ``disconnected(sender, error: BaseException | None)``: the connection is gone; ``error`` is
  ``None`` after ``stop()`` and the cause otherwise.
- ``reconnected(sender, backend_pid: int)``: a new connection listens to every channel again;
  notifications sent during the gap may have been lost, so resynchronise.
- ``handler_error(sender, handler, notification, error)``: a handler raised ``error`` while
  handling ``notification``; the other handlers still received it.
- ``gap(sender, channel: str, missing: range)``: on a gap-free channel, the positions in
  ``missing`` were pruned before this dispatcher delivered them (its retention window let them
  go); sent before the notifications after them are delivered.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["connected", "disconnected", "gap", "handler_error", "reconnected"]

_signals = Namespace()

connected = _signals.signal("connected", doc="connected(sender, backend_pid: int)")
disconnected = _signals.signal(
    "disconnected", doc="disconnected(sender, error: BaseException | None)"
)
reconnected = _signals.signal("reconnected", doc="reconnected(sender, backend_pid: int)")
handler_error = _signals.signal(
    "handler_error", doc="handler_error(sender, handler, notification, error: Exception)"
)
gap = _signals.signal("gap", doc="gap(sender, channel: str, missing: range)")
