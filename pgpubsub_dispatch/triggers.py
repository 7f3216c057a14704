"""Table-change triggers: every INSERT, UPDATE and DELETE on a table becomes a notification.

This is the ancestor ``pgpubsub``'s trigger helper, kept compatible and made safe::

    from pgpubsub_dispatch import triggers

    triggers.create_tables_notify_func(conn)           # once per database (or schema)
    triggers.create_table_notify_trigger(conn, "orders")
    # every committed write to "orders" now notifies channel "orders" with, e.g.,
    # {"id": 42, "status": "paid", "tg_op": "UPDATE"}

What the ancestor did, and what is kept:

* one PL/pgSQL trigger function, ``tables_notify_func()``, shared by every table;
* one row-level ``AFTER INSERT OR UPDATE OR DELETE`` trigger per table, named
  ``<table>_notify_trig``;
* the payload: the row as ``row_to_json`` renders it, with an added ``"tg_op"`` key
  (``"INSERT"``, ``"UPDATE"`` or ``"DELETE"``); a DELETE sends the old row, the others the new;
* table and schema names are read as SQL reads identifiers (the ancestor pasted them into its
  SQL): unquoted, ``OrderLines`` is the table ``orderlines``; double-quoted, ``'"OrderLines"'``
  is ``OrderLines`` exactly (see :func:`pgpubsub_dispatch._names.read_identifier`);
* the channel: the table's name as stored (``orderlines`` above), as ``TG_TABLE_NAME`` gave it;
* ``create_tables_notify_func`` and ``create_table_notify_trigger`` return the cursor they used;
* each helper commits (see "Transactions" below).

What is new:

* Names are parsed, never pasted: text that is not one identifier (``t; DROP TABLE x``) raises
  ``ValueError`` before anything is sent; the name read is quoted with
  :class:`psycopg2.sql.Identifier` and the channel is passed as a string literal, so no table,
  schema or channel name can inject SQL; mixed-case (quoted) and schema-qualified tables work.
* The channel is fixed when the trigger is created (it is the trigger's first argument,
  ``TG_ARGV[0]``) and may be chosen with ``channel=``; it is checked like every other channel of
  this package (at most 63 bytes in UTF-8, see :func:`pgpubsub_dispatch._names.check_channel`).
  Renaming the table later does not change it.
* A row too big for NOTIFY no longer makes the user's write fail. NOTIFY payloads must be shorter
  than 8000 bytes in the database encoding (counted with ``octet_length``, so multibyte text is
  measured in bytes). For a bigger row the trigger sends a small stand-in instead::

      {"tg_op": "UPDATE", "schema": "public", "table": "orders", "truncated": true,
       "key": {"id": 42}}

  ``key`` holds the row's primary-key columns (looked up in ``pg_index`` when it fires, so it
  follows later ``ALTER TABLE`` changes), ready for the listener to fetch the row itself. ``key``
  is ``null`` when the table has no primary key, or when the key alone would still be too big.
  Only the stand-in carries ``"truncated"``; a full payload is exactly the row plus ``tg_op``.

Transactions
------------
Two different transactions matter here.

*The helpers' own.* Like the ancestor (which called ``conn.commit()`` after each statement),
every helper in this module **ends the connection's current transaction**: it runs its SQL on
``conn`` and commits on success, so the function or trigger exists for every session when the
call returns; on failure it rolls back (an error has aborted the transaction anyway) so ``conn``
is usable again, then re-raises. Anything else pending on ``conn`` is committed or rolled back
with it, so do not call these helpers in the middle of work you want to keep separate: use a
dedicated connection, or call them between transactions. On an autocommit connection the same
holds: each helper sends all its statements in one round trip, which the server runs as one
implicit transaction, so a helper never leaves half its work done.

*The user's writes.* The trigger runs inside the transaction that changes the row. As with any
NOTIFY, its notification is delivered only if and when that transaction commits; a rollback
sends nothing. Notifications of one transaction arrive in the order of the row changes.

PostgreSQL documentation relied on
----------------------------------
* CREATE TRIGGER: https://www.postgresql.org/docs/current/sql-createtrigger.html
* Trigger functions in PL/pgSQL (``TG_OP``, ``TG_ARGV``, ``TG_RELID``, ``TG_TABLE_NAME``,
  ``TG_TABLE_SCHEMA``): https://www.postgresql.org/docs/current/plpgsql-trigger.html
* NOTIFY and ``pg_notify`` (the 8000-byte limit, delivery at commit):
  https://www.postgresql.org/docs/current/sql-notify.html
* ``row_to_json``, ``json_build_object``, ``json_object_agg``:
  https://www.postgresql.org/docs/current/functions-json.html
* ``octet_length``: https://www.postgresql.org/docs/current/functions-string.html
* ``pg_index``: https://www.postgresql.org/docs/current/catalog-pg-index.html
* Identifiers (63-byte limit, quoting):
  https://www.postgresql.org/docs/current/sql-syntax-lexical.html#SQL-SYNTAX-IDENTIFIERS

Every helper runs on the caller's thread, on the connection it is given.
"""

from __future__ import annotations

import contextlib

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from ._names import MAX_IDENTIFIER_BYTES, check_channel, check_identifier, read_identifier
from .gapless._config import DEFAULT_SCHEMA

__all__ = [
    "NOTIFY_FUNC_NAME",
    "TRIGGER_SUFFIX",
    "create_table_notify_trigger",
    "create_tables_notify_func",
    "drop_table_notify_trigger",
    "drop_tables_notify_func",
    "trigger_name",
]

NOTIFY_FUNC_NAME = "tables_notify_func"
"""Name of the shared trigger function (the ancestor's), created in the first schema of the
connection's ``search_path``."""

TRIGGER_SUFFIX = "_notify_trig"
"""Appended to the table name to name its trigger (the ancestor's convention)."""


# The payload limit (fewer than 8000 bytes) is the server's, in the database encoding, which is
# what octet_length() counts. search_path is pinned so that the body resolves only built-ins,
# whatever the search_path of the session that fires the trigger.
_NOTIFY_FUNC_BODY = """
DECLARE
    changed record;
    channel text;
    payload text;
    row_json json;
    primary_key json;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    IF TG_NARGS > 0 THEN
        channel := TG_ARGV[0];
    ELSE
        channel := TG_TABLE_NAME;  -- a trigger created by hand, as the ancestor did
    END IF;

    SELECT row_to_json(full_row)::text INTO payload
      FROM (SELECT changed.*, TG_OP AS tg_op) AS full_row;

    IF TG_NARGS > 1 THEN
        -- A gap-free channel: the row travels through the log, whatever its size.
        EXECUTE format('SELECT %I.pgpubsub_notify($1, $2)', TG_ARGV[1]) USING channel, payload;
        RETURN NULL;
    END IF;

    IF octet_length(payload) >= 8000 THEN
        row_json := row_to_json(changed);
        SELECT json_object_agg(
                   a.attname, row_json -> a.attname::text
                   ORDER BY array_position(i.indkey::int2[], a.attnum))
          INTO primary_key
          FROM pg_index AS i
          JOIN pg_attribute AS a
            ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = TG_RELID AND i.indisprimary;
        payload := json_build_object(
            'tg_op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
            'truncated', true, 'key', primary_key)::text;
        IF octet_length(payload) >= 8000 THEN
            payload := json_build_object(
                'tg_op', TG_OP, 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME,
                'truncated', true, 'key', NULL)::text;
        END IF;
    END IF;

    PERFORM pg_notify(channel, payload);
    RETURN NULL;  -- ignored for AFTER triggers
END;
"""


def create_tables_notify_func(
    conn: psycopg2.extensions.connection,
) -> psycopg2.extensions.cursor:
    """Create, or replace, the shared trigger function ``tables_notify_func()``, then commit.

    Run it once before :func:`create_table_notify_trigger`, and again after upgrading this
    package (``CREATE OR REPLACE`` updates the body in place; existing triggers keep working).
    The function is created in the first existing schema of ``conn``'s ``search_path``
    (usually ``public``); triggers find it through the same ``search_path``.

    What the function sends when it fires, on the channel given as the trigger's first argument
    (``TG_ARGV[0]``; the table's name if the trigger has no argument):

    * normally, ``row_to_json`` of the row with an added ``"tg_op"`` key: ``"INSERT"`` or
      ``"UPDATE"`` (the new row) or ``"DELETE"`` (the old row). A column that is itself named
      ``tg_op`` then appears twice, as with the ancestor;
    * if that text is 8000 bytes or more (``octet_length``, in the database encoding), instead
      ``{"tg_op": ..., "schema": ..., "table": ..., "truncated": true, "key": {<primary-key
      column>: <value>, ...}}``, with ``"key": null`` if the table has no primary key or the key
      is itself too big. The user's write never fails because of the payload size.

    :param conn: an open psycopg2 connection whose role may create functions in that schema.
        It may be in autocommit or not.
    :returns: the cursor it ran the statement on, still open (as the ancestor returned it).
    :raises psycopg2.Error: as raised by the server, e.g.
        :class:`psycopg2.errors.InsufficientPrivilege` without the right to create the function,
        or if another role owns an existing ``tables_notify_func()``. ``conn`` has been rolled
        back and is usable.

    Transactions: ends ``conn``'s current transaction, committing on success and rolling back
    on failure (as the ancestor did; see the module documentation).

    Relies on CREATE FUNCTION / PL/pgSQL trigger functions
    (https://www.postgresql.org/docs/current/plpgsql-trigger.html), NOTIFY's payload limit
    (https://www.postgresql.org/docs/current/sql-notify.html) and ``row_to_json``
    (https://www.postgresql.org/docs/current/functions-json.html).
    """
    statement = sql.SQL(
        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql"
        " SET search_path = pg_catalog, pg_temp AS {body}"
    ).format(name=sql.Identifier(NOTIFY_FUNC_NAME), body=sql.Literal(_NOTIFY_FUNC_BODY))
    return _execute_and_commit(conn, statement)


def drop_tables_notify_func(conn: psycopg2.extensions.connection, *, cascade: bool = False) -> None:
    """Drop the shared trigger function ``tables_notify_func()`` if it exists, then commit.

    Idempotent: dropping a function that does not exist is a no-op.

    :param conn: an open psycopg2 connection; the function is looked up through its
        ``search_path``, as :func:`create_tables_notify_func` created it.
    :param cascade: also drop every trigger that uses the function (``DROP ... CASCADE``).
        By default a function still in use is left alone and an error is raised.
    :returns: ``None``.
    :raises psycopg2.errors.DependentObjectsStillExist: if ``cascade`` is false and a trigger
        still uses the function. ``conn`` has been rolled back and is usable.
    :raises psycopg2.Error: any other error from the server, e.g. insufficient privilege.

    Transactions: ends ``conn``'s current transaction, committing on success and rolling back
    on failure (see the module documentation).

    Relies on DROP FUNCTION (https://www.postgresql.org/docs/current/sql-dropfunction.html).
    """
    statement = sql.SQL("DROP FUNCTION IF EXISTS {name}(){cascade}").format(
        name=sql.Identifier(NOTIFY_FUNC_NAME),
        cascade=sql.SQL(" CASCADE" if cascade else ""),
    )
    _execute_and_commit(conn, statement).close()


def create_table_notify_trigger(
    conn: psycopg2.extensions.connection,
    tablename: str,
    *,
    schema: str | None = None,
    channel: str | None = None,
    gapless: bool = False,
    gapless_schema: str = DEFAULT_SCHEMA,
) -> psycopg2.extensions.cursor:
    """Make every INSERT, UPDATE and DELETE on a table send a notification, then commit.

    Creates the row-level trigger ``<tablename>_notify_trig`` (see :func:`trigger_name`),
    ``AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW``, which calls
    ``tables_notify_func(<channel>)``. If the table already has a trigger of that name it is
    replaced, so calling this twice is harmless and is how the channel is changed. Each changed
    row then sends one notification, delivered when the writing transaction commits; for its
    payload see :func:`create_tables_notify_func`, which must have been run first. ``TRUNCATE``
    fires no row-level trigger and so sends nothing.

    :param conn: an open psycopg2 connection; the role must own the table (or hold TRIGGER on
        it) and may execute ``tables_notify_func()``, found through ``conn``'s ``search_path``.
    :param tablename: the table's name written as in SQL: unquoted, folded to lower case
        (``OrderLines`` is ``orderlines``); or double-quoted, exact (``'"OrderLines"'``, with
        ``""`` for a quote). At most 63 bytes in UTF-8 once read.
    :param schema: the table's schema, written the same way; ``None`` (the default) resolves
        the table through ``conn``'s ``search_path``.
    :param channel: the channel to notify, exact and case-sensitive (never folded); ``None``
        (the default) means the table's name as read (``orderlines`` above), the channel the
        ancestor used. It is stored in the trigger, so later renaming the table does not change
        it.
    :param gapless: send through ``gapless_schema.pgpubsub_notify()`` (a gap-free channel, see
        :mod:`pgpubsub_dispatch.gapless`, installed beforehand): the whole row is sent however
        big (no ``"truncated"`` stand-in), in the writing transaction. Run
        :func:`create_tables_notify_func` again after upgrading from a version without it.
    :param gapless_schema: the schema of the gap-free log (default ``"pgpubsub"``).
    :returns: the cursor it ran the statements on, still open (as the ancestor returned it).
    :raises TypeError: if ``tablename`` or ``schema`` is not a ``str`` (nothing is sent).
    :raises ValueError: if ``tablename`` or ``schema`` is not one SQL identifier
        (``orders; DROP TABLE x``, an unbalanced quote), or names one that is empty, contains
        NUL or is longer than 63 bytes in UTF-8, which the server would reject or truncate
        (nothing is sent).
    :raises pgpubsub_dispatch.errors.InvalidChannelName: if the channel is not a valid channel
        name: empty, containing NUL, or longer than 63 bytes in UTF-8 (nothing is sent).
    :raises psycopg2.errors.UndefinedTable: if the table does not exist.
    :raises psycopg2.errors.UndefinedFunction: if :func:`create_tables_notify_func` has not been
        run (or not in a schema of ``conn``'s ``search_path``).
    :raises psycopg2.Error: any other error from the server, e.g. insufficient privilege. After
        a server error ``conn`` has been rolled back and is usable.

    Transactions: ends ``conn``'s current transaction, committing on success and rolling back
    on failure (as the ancestor did; see the module documentation). The replacement of an
    existing trigger and the creation of the new one are atomic.

    Relies on CREATE TRIGGER (https://www.postgresql.org/docs/current/sql-createtrigger.html),
    DROP TRIGGER (https://www.postgresql.org/docs/current/sql-droptrigger.html) and NOTIFY
    (https://www.postgresql.org/docs/current/sql-notify.html).
    """
    name, table = _table_identifier(tablename, schema)
    chosen = check_channel(name if channel is None else channel)
    arguments: list[sql.Composable] = [sql.Literal(chosen)]
    if gapless:
        arguments.append(sql.Literal(check_identifier(gapless_schema, "schema name")))
    trigger = sql.Identifier(trigger_name(name))
    # EXECUTE PROCEDURE is the spelling servers before 11 understand; newer ones accept both.
    execute = "EXECUTE FUNCTION" if conn.server_version >= 110000 else "EXECUTE PROCEDURE"
    statement = sql.SQL(
        "DROP TRIGGER IF EXISTS {trigger} ON {table}; "
        "CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW {execute} {function}({arguments})"
    ).format(
        trigger=trigger,
        table=table,
        execute=sql.SQL(execute),
        function=sql.Identifier(NOTIFY_FUNC_NAME),
        arguments=sql.SQL(", ").join(arguments),
    )
    return _execute_and_commit(conn, statement)


def drop_table_notify_trigger(
    conn: psycopg2.extensions.connection,
    tablename: str,
    *,
    schema: str | None = None,
) -> None:
    """Remove the trigger created by :func:`create_table_notify_trigger`, then commit.

    Idempotent: if the trigger, the table or the schema does not exist, nothing happens (the
    server only emits a NOTICE). Writes committed after this call send no notification. Also
    removes a trigger created by the ancestor ``pgpubsub`` on a table with a lower-case name
    (the ancestor folded names to lower case).

    :param conn: an open psycopg2 connection whose role owns the table.
    :param tablename: the table's name, written as for :func:`create_table_notify_trigger`.
    :param schema: the table's schema, written the same way; ``None`` resolves the table
        through ``conn``'s ``search_path``.
    :returns: ``None``.
    :raises TypeError: if ``tablename`` or ``schema`` is not a ``str`` (nothing is sent).
    :raises ValueError: if ``tablename`` or ``schema`` is not one SQL identifier, or names one
        that is empty, contains NUL or is longer than 63 bytes in UTF-8 (nothing is sent).
    :raises psycopg2.Error: as raised by the server, e.g. insufficient privilege; ``conn`` has
        then been rolled back and is usable.

    Transactions: ends ``conn``'s current transaction, committing on success and rolling back
    on failure (see the module documentation).

    Relies on DROP TRIGGER (https://www.postgresql.org/docs/current/sql-droptrigger.html).
    """
    name, table = _table_identifier(tablename, schema)
    statement = sql.SQL("DROP TRIGGER IF EXISTS {trigger} ON {table}").format(
        trigger=sql.Identifier(trigger_name(name)), table=table
    )
    _execute_and_commit(conn, statement).close()


def trigger_name(tablename: str) -> str:
    """Return the name of the trigger this module creates on ``tablename``.

    It is ``tablename + "_notify_trig"``, the ancestor's name, except that a table name longer
    than 51 bytes in UTF-8 is first cut (on a character boundary) so that the whole name fits
    PostgreSQL's 63-byte identifier limit instead of being truncated by the server.

    :param tablename: the table's exact name, as stored (already folded: ``orderlines``).
    :returns: the trigger's exact (unquoted) name, at most 63 bytes in UTF-8.
    :raises TypeError: if ``tablename`` is not a ``str``.
    :raises ValueError: if ``tablename`` is not a valid identifier (see
        :func:`create_table_notify_trigger`).
    """
    check_identifier(tablename, "table name")
    room = MAX_IDENTIFIER_BYTES - len(TRIGGER_SUFFIX.encode("utf-8"))
    head = tablename.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return head + TRIGGER_SUFFIX


def _table_identifier(tablename: str, schema: str | None) -> tuple[str, sql.Identifier]:
    """Read both names as SQL identifiers; return the table's and its quoted qualified name."""
    name = read_identifier(tablename, "table name")
    if schema is None:
        return name, sql.Identifier(name)
    return name, sql.Identifier(read_identifier(schema, "schema name"), name)


def _execute_and_commit(
    conn: psycopg2.extensions.connection, statement: sql.Composable
) -> psycopg2.extensions.cursor:
    """Run ``statement`` on ``conn`` and end the transaction: commit, or roll back and re-raise.

    With autocommit, a multi-statement string sent in one ``execute`` is one implicit
    transaction on the server, so it is atomic as well. Returns the cursor, open.
    """
    cur = conn.cursor()
    try:
        cur.execute(statement)
    except BaseException:
        cur.close()
        if not conn.closed and not conn.autocommit:
            # The original error is the one worth reporting, not a failed rollback of a
            # connection that the error has broken.
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
        raise
    if not conn.autocommit:
        conn.commit()
    return cur
