"""PostgreSQL LISTEN/NOTIFY as a publish/subscribe bus for Python services.

One :class:`Dispatcher` thread owns one psycopg2 connection and routes every notification to a
per-channel blinker signal::

    from pgpubsub_dispatch import Dispatcher

    bus = Dispatcher("postgresql://user@host/db")

    @bus.on("orders")
    def on_order(notification):
        print(notification.channel, notification.payload, notification.pid)

    with bus:
        bus.notify("orders", "42")

The 2015 ``pgpubsub`` API (:func:`connect`, :class:`PubSub`) and its table-change trigger helpers
are kept, built on the dispatcher.
"""

from __future__ import annotations

from ._names import MAX_CHANNEL_BYTES, MAX_PAYLOAD_BYTES
from .compat import PubSub, connect
from .dispatcher import Dispatcher, DispatcherStats
from .errors import (
    ConnectionLost,
    DispatcherStopped,
    InvalidChannelName,
    NoServerAvailable,
    NotConnected,
    PayloadTooLarge,
    PubSubClosed,
    PubSubError,
)
from .notification import Notification
from .signals import connected, disconnected, gap, handler_error, reconnected
from .streams import NotificationStream
from .transactional import notify
from .triggers import (
    create_table_notify_trigger,
    create_tables_notify_func,
    drop_table_notify_trigger,
    drop_tables_notify_func,
)

__all__ = [
    "MAX_CHANNEL_BYTES",
    "MAX_PAYLOAD_BYTES",
    "ConnectionLost",
    "Dispatcher",
    "DispatcherStats",
    "DispatcherStopped",
    "InvalidChannelName",
    "NoServerAvailable",
    "NotConnected",
    "Notification",
    "NotificationStream",
    "PayloadTooLarge",
    "PubSub",
    "PubSubClosed",
    "PubSubError",
    "connect",
    "connected",
    "create_table_notify_trigger",
    "create_tables_notify_func",
    "disconnected",
    "drop_table_notify_trigger",
    "drop_tables_notify_func",
    "gap",
    "handler_error",
    "notify",
    "reconnected",
]

__version__ = "0.1.0"
