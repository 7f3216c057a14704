"""Gap-free channels: nothing lost across reconnects, restarts and failover; large payloads.

On a gap-free channel a notification is also a row of a log table, written in the sender's
transaction together with its NOTIFY, and numbered: 1, 2, 3, ... per channel, in commit order.
A dispatcher remembers the last position it delivered; after every (re)connection it reads
what was committed since and delivers it before any live notification, and it skips live ones
it has delivered already. A handler therefore sees each notification **exactly once per
dispatcher, in commit order**, whatever happened to the connection. Payloads up to 16 MiB go
through the row (the NOTIFY carries the position, and the payload when it fits).

Set-up is explicit::

    from pgpubsub_dispatch import Dispatcher, gapless

    gapless.install(conn)                          # once; or: pgpubsub-dispatch install
    bus = Dispatcher(dsn, gapless=["orders"])      # or gapless.Config([...], since=...)

Then ``bus.notify("orders", ...)`` (and ``notify_many``, ``notify_json``,
``pgpubsub_dispatch.notify(cur, "orders", ..., gapless=True)``, and SQL's
``SELECT pgpubsub.pgpubsub_notify('orders', ...)``) send through the log, and handlers receive
:class:`GaplessNotification` objects, with a ``position``.

Modules: ``_config`` (:class:`Config`, limits, the notification type), ``_sql`` (every
statement, and why positions come from a counter row), ``_setup`` (:func:`install`,
:func:`prune`, :func:`forget_reader`), ``_commands`` (the dispatcher-thread commands),
``_sequencer`` (ordering and catching up, on the dispatcher thread).
"""

from __future__ import annotations

from ._config import (
    DEFAULT_SCHEMA,
    DEFAULT_WINDOW_SECONDS,
    MAX_GAPLESS_PAYLOAD_BYTES,
    Config,
    GaplessNotification,
)
from ._setup import forget_reader, install, prune
from ._sql import MARKER

__all__ = [
    "DEFAULT_SCHEMA",
    "DEFAULT_WINDOW_SECONDS",
    "MARKER",
    "MAX_GAPLESS_PAYLOAD_BYTES",
    "Config",
    "GaplessNotification",
    "forget_reader",
    "install",
    "prune",
]
