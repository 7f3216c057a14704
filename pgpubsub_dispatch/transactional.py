"""Notify inside your own transaction: sent if, and only if, it commits.

``bus.notify`` commits at once on the dispatcher's own connection. To tie a notification to
your data ("notify after insert"), run ``pg_notify`` on the connection that writes the data,
in the same transaction: PostgreSQL delivers it at commit, and never if it rolls back
(see NOTIFY in the PostgreSQL documentation).

Runs entirely on the caller's thread, on the caller's connection.
"""

from __future__ import annotations

import inspect
from typing import Any

from ._names import check_channel, check_identifier, check_payload
from .gapless._config import DEFAULT_SCHEMA, check_gapless_payload

__all__ = ["notify"]

_SQL = "SELECT pg_notify(%s, %s)"


def notify(
    conn_or_cursor: Any,
    channel: str,
    payload: str = "",
    *,
    gapless: bool = False,
    gapless_schema: str = DEFAULT_SCHEMA,
) -> int | None:
    """Run the validated ``SELECT pg_notify(channel, payload)`` on your own connection.

    The notification joins the caller's current transaction: it is delivered when that
    transaction commits, and never if it rolls back. On an autocommit connection it is sent
    at once. Nothing is committed here.

    With ``gapless=True`` it runs ``SELECT gapless_schema.pgpubsub_notify(channel, payload)``
    instead: the notification's row joins your transaction too (see
    :mod:`pgpubsub_dispatch.gapless`), the payload may be up to 16 MiB, and the position it
    took is returned. Keep that transaction short: other senders on the channel wait for it.

    :param conn_or_cursor: a psycopg2 connection or cursor, or a psycopg 3 connection or
        cursor (anything with ``execute(sql, params)`` or ``cursor()``), using ``%s``
        placeholders.
    :param channel: exact, case-sensitive channel name (at most 63 bytes in UTF-8).
    :param payload: text shorter than 8000 bytes in UTF-8 (gap-free: up to 16 MiB), no NUL.
    :param gapless: send through the gap-free log (installed with ``gapless.install``).
    :param gapless_schema: the schema of that log (default ``"pgpubsub"``).
    :returns: the position on the channel with ``gapless=True`` (``int``), else ``None``.
    :raises InvalidChannelName: if the channel name is not acceptable.
    :raises TypeError: if ``payload`` is not a ``str``, or the connection is an asynchronous
        one (psycopg 3's ``AsyncConnection``, asyncpg), whose ``execute`` must be awaited.
    :raises PayloadTooLarge: if ``payload`` is 8000 bytes or more in UTF-8 (gap-free: over
        16 MiB).
    :raises ValueError: if ``payload`` contains NUL, or ``gapless_schema`` is not a name.
    :raises psycopg2.Error: (or psycopg's) what the server raised.
    """
    if gapless:
        check_identifier(gapless_schema, "schema name")
        params = (check_channel(channel), check_gapless_payload(payload))
        query = 'SELECT "{}".pgpubsub_notify(%s, %s)'.format(gapless_schema.replace('"', '""'))
    else:
        params = (check_channel(channel), check_payload(payload))
        query = _SQL
    execute = getattr(conn_or_cursor, "execute", None)
    if inspect.iscoroutinefunction(execute) or inspect.iscoroutinefunction(
        getattr(conn_or_cursor, "cursor", None)
    ):
        raise TypeError(
            "notify() needs a synchronous connection or cursor; with an async one, run "
            "await conn.execute('SELECT pg_notify($1, $2)' or '... %s, %s', (channel, payload))"
        )
    if execute is not None:
        result = execute(query, params)  # a cursor, or a psycopg 3 connection
        if not gapless:
            return None
        row = (conn_or_cursor if result is None else result).fetchone()
        return int(row[0])
    with conn_or_cursor.cursor() as cursor:  # a psycopg2 connection
        cursor.execute(query, params)
        return int(cursor.fetchone()[0]) if gapless else None
