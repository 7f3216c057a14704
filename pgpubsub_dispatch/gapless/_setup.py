"""Explicit set-up and upkeep of the gap-free log: :func:`install`, :func:`prune`,
:func:`forget_reader`. Each runs on the caller's connection, in the caller's thread.

Like the trigger helpers, :func:`install` ends the connection's current transaction: it
commits on success and rolls back on failure. :func:`prune` and :func:`forget_reader` commit
too, so that the rows they delete are gone when they return.
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from .._names import check_identifier
from .._timeouts import check_timeout
from ._config import DEFAULT_SCHEMA
from ._sql import install_statements, prune_statement

__all__ = ["forget_reader", "install", "prune"]


def install(conn: psycopg2.extensions.connection, schema: str = DEFAULT_SCHEMA) -> None:
    """Create the gap-free log in ``schema``, or bring it up to date; idempotent; commits.

    Creates, if missing: the schema; the tables ``pgpubsub_channels`` (a counter row per
    channel), ``pgpubsub_log`` (one row per notification: channel, position, payload, sender
    pid, created_at) and ``pgpubsub_readers`` (each dispatcher's delivered positions, which
    pruning respects); and (re)creates the functions ``pgpubsub_notify(channel, payload)``
    (``SECURITY DEFINER``, so senders need only ``EXECUTE``) and ``pgpubsub_prune(older_than,
    keep_last)``. ``EXECUTE`` on both is revoked from ``PUBLIC``: grant it to your roles (see
    the README's "Gap-free channels"). Run it again after upgrading this package.

    :param conn: a psycopg2 connection whose role may create the schema (or owns it) and
        objects in it; it may be in autocommit or not.
    :param schema: the schema's exact name (default ``"pgpubsub"``).
    :raises ValueError: for a schema name PostgreSQL would not take (before anything is sent).
    :raises psycopg2.Error: what the server raised (e.g. ``InsufficientPrivilege``); the
        transaction is then rolled back and ``conn`` usable.
    """
    check_identifier(schema, "schema name")
    _run(conn, install_statements(schema, conn))


def prune(
    conn: psycopg2.extensions.connection,
    *,
    older_than: float | None = None,
    keep_last: int | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """Delete old rows of the gap-free log, never one a reader still needs; commits.

    A row goes when it is older than ``older_than`` seconds, or not among the ``keep_last``
    newest of its channel, **unless** a registered reader of its channel has not delivered it
    yet and it is younger than that reader's window. A dispatcher registers when it first
    reads a channel and refreshes its registration while it runs; a registration not seen for
    longer than its window is removed first. So a running dispatcher loses a row only when the
    row has outlived its window; it is then told with the ``gap`` signal. The same is
    ``SELECT schema.pgpubsub_prune(interval, keep_last)`` (for ``pg_cron`` and the like).

    :param older_than: seconds (``None``: no age criterion).
    :param keep_last: rows to keep per channel at least (``None``: no count criterion).
    :param schema: where the log is.
    :returns: the number of rows deleted (``int``).
    :raises ValueError: if neither criterion is given, or one is negative or NaN, or the
        schema name is not acceptable.
    :raises TypeError: if ``older_than`` is not a number.
    :raises psycopg2.Error: what the server raised (rolled back).
    """
    check_identifier(schema, "schema name")
    if older_than is None and keep_last is None:
        raise ValueError("prune() needs older_than or keep_last")
    if older_than is not None:
        older_than = check_timeout(older_than, "older_than")
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
    ):
        raise ValueError(f"keep_last must be an int >= 0, not {keep_last!r}")
    row = _run(conn, [prune_statement(schema)], (older_than, keep_last))
    return 0 if row is None else int(row[0])


def forget_reader(
    conn: psycopg2.extensions.connection, reader: str, *, schema: str = DEFAULT_SCHEMA
) -> int:
    """Remove reader ``reader``'s registrations, so its rows stop being kept; commits.

    :param reader: a reader's name (``gapless.Config(reader=...)``).
    :returns: how many channel registrations were removed (``int``).
    :raises ValueError: for a schema name that is not acceptable.
    :raises psycopg2.Error: what the server raised (rolled back).
    """
    check_identifier(schema, "schema name")
    statement = sql.SQL(
        "WITH gone AS (DELETE FROM {} WHERE reader = %s RETURNING 1) SELECT count(*) FROM gone"
    ).format(sql.Identifier(schema, "pgpubsub_readers"))
    row = _run(conn, [statement], (reader,))
    return 0 if row is None else int(row[0])


def _run(
    conn: psycopg2.extensions.connection, statements: list[sql.Composable], params: Any = None
) -> tuple[Any, ...] | None:
    """Run ``statements`` in one transaction (the last with ``params``); commit; its row."""
    row: tuple[Any, ...] | None = None
    try:
        with conn.cursor() as cur:
            if conn.autocommit:
                cur.execute("BEGIN")
            for index, statement in enumerate(statements):
                last = index == len(statements) - 1
                cur.execute(statement, params if last else None)
            if cur.description is not None:
                row = cur.fetchone()
            if conn.autocommit:
                cur.execute("COMMIT")
        if not conn.autocommit:
            conn.commit()
    except BaseException:
        if conn.autocommit:
            if not conn.closed:
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
        elif not conn.closed:
            conn.rollback()
        raise
    return row
