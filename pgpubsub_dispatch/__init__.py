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
    DeafSession,
    DispatcherStopped,
    InvalidChannelName,
    NoServerAvailable,
    NotConnected,
    PayloadTooLarge,
    PubSubClosed,
    PubSubError,
    WouldDeadlock,
)
from .notification import DecodedNotification, Notification
from .signals import connected, deaf, disconnected, gap, handler_error, hearing, reconnected
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
    "DeafSession",
    "DecodedNotification",
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
    "WouldDeadlock",
    "connect",
    "connected",
    "create_table_notify_trigger",
    "create_tables_notify_func",
    "deaf",
    "disconnected",
    "drop_table_notify_trigger",
    "drop_tables_notify_func",
    "gap",
    "handler_error",
    "hearing",
    "notify",
    "reconnected",
]

__version__ = "0.1.0"
