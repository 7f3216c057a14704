"""The SQL of gap-free channels: the schema objects, and the statements the library runs.

Every statement is composed with :mod:`psycopg2.sql`, the schema quoted as an identifier, so no
schema name can inject SQL. Nothing here touches a connection: :mod:`._setup` runs the DDL,
:mod:`._commands` the statements (on the dispatcher thread).

Why a per-channel counter row, and not a sequence or PgQ-style snapshots
------------------------------------------------------------------------
A sequence value is taken when a row is inserted, not when its transaction commits: the
transaction holding position 5 may commit after the one holding 6 was read, and a reader that
asks for "everything after 6" then loses 5 for good (see ``pg-rules``, "Commit order and
positions").

``pgpubsub_notify()`` instead takes the position with ``INSERT ... ON CONFLICT DO UPDATE SET
last_position = last_position + 1 ... RETURNING`` on the channel's row of
``pgpubsub_channels``. That row stays locked until the sender's transaction ends, so a second
sender on the same channel waits, and takes the next number only once the first has committed
(or rolled back, which gives its number back). Hence, on one channel:

* positions are taken in commit order, and the committed ones are consecutive (1, 2, 3, ...);
* a snapshot that sees position N committed sees every position below N too, so "everything
  after the last position I delivered" is exact, and a hole in the positions a reader finds
  can only mean deleted (pruned) rows: that is when the ``gap`` signal is sent;
* the NOTIFY of position N+1 enters the server's notification queue after that of N (its
  transaction could only start its commit after N's had ended), so live notifications arrive
  in position order too.

The cost: senders on one channel serialise for the rest of their transaction (different
channels do not). Keep transactions that notify a gap-free channel short: the benchmarks
measure concurrent senders on one channel against several channels.

The alternative, PgQ's (``pg_current_snapshot()``, ``pg_visible_in_snapshot()``, reading in
batches between two snapshots), never serialises senders, but gives commit order only between
batches (rows inside one batch are in id order, which is not commit order), makes resume tokens
snapshots rather than numbers a consumer can store and compare, and needs a ticker to cut
batches, which adds latency to every notification. A plain handler promised "exactly once, in
commit order" and a position it can persist needs the counter, so that is what is used.
"""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

__all__ = [
    "CATCH_UP_MAX_BYTES",
    "CATCH_UP_MAX_ROWS",
    "MARKER",
    "catch_up_statement",
    "install_statements",
    "log_tag",
    "notify_batch_statement",
    "notify_statement",
    "prune_statement",
    "report_statement",
]

MARKER = "pgpubsub-gapless:"
"""How the NOTIFY payload of a gap-free notification begins: ``MARKER + position + tag`` alone
when the payload did not fit (it is then read from the log), ``MARKER + position + tag + ":" +
payload`` when it did (fewer than 8000 bytes in all). ``tag`` names the log (:func:`log_tag`),
since two logs (schemas) may number the same channel: a NOTIFY reaches every listener of the
channel whatever log it came from. A log installed before tags existed writes no tag (run
``install`` again to add it)."""


def log_tag(schema: str) -> str:
    """The tag naming the log of ``schema`` in its NOTIFY payloads: ``@<length>:<schema>``.

    The length (in characters) makes it unambiguous whatever characters the schema holds: a
    payload that goes on with ``log_tag(schema) + ":"`` or ends with it comes from that log.
    """
    return f"@{len(schema)}:{schema}"


CATCH_UP_MAX_ROWS = 1000
"""Most rows one catch-up read returns (the dispatcher reads again for the rest)."""

CATCH_UP_MAX_BYTES = 8 * 1024 * 1024
"""Payload bytes after which a catch-up read stops (its first row is always returned)."""

# The body of pgpubsub_notify(). search_path is pinned (SECURITY DEFINER), every object
# qualified with the schema. The channel row lock is what orders positions: see the module
# docstring.
_NOTIFY_BODY = """
#variable_conflict use_column
DECLARE
    taken bigint;
    message text;
BEGIN
    IF $1 IS NULL OR $1 = '' THEN
        RAISE EXCEPTION 'channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length($1) > 63 THEN
        RAISE EXCEPTION 'channel name too long (% bytes; at most 63)', octet_length($1)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO {channels} AS c (channel, last_position) VALUES ($1, 1)
    ON CONFLICT (channel) DO UPDATE SET last_position = c.last_position + 1
    RETURNING c.last_position INTO taken;
    INSERT INTO {log} (channel, position, payload, sender_pid, created_at)
    VALUES ($1, taken, coalesce($2, ''), pg_backend_pid(), now());
    message := {marker} || taken || {tag} || ':' || coalesce($2, '');
    IF octet_length(message) >= 8000 THEN
        message := {marker} || taken || {tag};  -- too big: the reader takes it from the log
    END IF;
    PERFORM pg_notify($1, message);
    RETURN taken;
END;
"""

_PRUNE_BODY = """
DECLARE
    deleted bigint;
BEGIN
    IF $1 IS NULL AND $2 IS NULL THEN
        RAISE EXCEPTION 'pgpubsub_prune() needs older_than or keep_last' USING ERRCODE = '22023';
    END IF;
    -- Wait for readers registering or reporting right now, and see what they committed.
    LOCK TABLE {readers} IN SHARE MODE;
    DELETE FROM {readers} AS r WHERE r.hold IS NOT NULL AND r.seen_at < now() - r.hold;
    DELETE FROM {log} AS l
     USING {channels} AS c
     WHERE c.channel = l.channel
       AND (($1 IS NOT NULL AND l.created_at < now() - $1)
            OR ($2 IS NOT NULL AND l.position <= c.last_position - $2))
       AND NOT EXISTS (
           SELECT 1 FROM {readers} AS r
            WHERE r.channel = l.channel
              AND l.position > r.position
              AND (r.hold IS NULL OR l.created_at >= now() - r.hold));
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END;
"""


def _names(schema: str) -> dict[str, sql.Composable]:
    return {
        "schema": sql.Identifier(schema),
        "channels": sql.Identifier(schema, "pgpubsub_channels"),
        "log": sql.Identifier(schema, "pgpubsub_log"),
        "readers": sql.Identifier(schema, "pgpubsub_readers"),
        "notify": sql.Identifier(schema, "pgpubsub_notify"),
        "prune": sql.Identifier(schema, "pgpubsub_prune"),
        "marker": sql.Literal(MARKER),
        "tag": sql.Literal(log_tag(schema)),
    }


def install_statements(schema: str, conn: Any) -> list[sql.Composable]:
    """The idempotent DDL of :func:`pgpubsub_dispatch.gapless.install`, in order.

    :param conn: a connection, to render the function bodies (quoting depends on it).
    """
    names = _names(schema)
    notify_body = sql.SQL(_NOTIFY_BODY).format(**names).as_string(conn)
    prune_body = sql.SQL(_PRUNE_BODY).format(**names).as_string(conn)
    return [
        # Concurrent installs would race on CREATE ... IF NOT EXISTS; one at a time.
        sql.SQL("SELECT pg_advisory_xact_lock(hashtext('pgpubsub_dispatch.gapless.install'))"),
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(**names),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {channels} ("
            " channel text PRIMARY KEY,"
            " last_position bigint NOT NULL)"
        ).format(**names),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {log} ("
            " channel text NOT NULL,"
            " position bigint NOT NULL,"
            " payload text NOT NULL,"
            " sender_pid integer NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (channel, position))"
        ).format(**names),
        sql.SQL("CREATE INDEX IF NOT EXISTS pgpubsub_log_created_at ON {log} (created_at)").format(
            **names
        ),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {readers} ("
            " reader text NOT NULL,"
            " channel text NOT NULL,"
            " position bigint NOT NULL,"
            " seen_at timestamptz NOT NULL,"
            " hold interval,"
            " PRIMARY KEY (reader, channel))"
        ).format(**names),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {notify}(channel text, payload text DEFAULT '')"
            " RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER"
            " SET search_path = pg_catalog, pg_temp AS {body}"
        ).format(body=sql.Literal(notify_body), **names),
        sql.SQL("REVOKE ALL ON FUNCTION {notify}(text, text) FROM PUBLIC").format(**names),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {prune}(older_than interval, keep_last bigint DEFAULT NULL)"
            " RETURNS bigint LANGUAGE plpgsql VOLATILE"
            " SET search_path = pg_catalog, pg_temp AS {body}"
        ).format(body=sql.Literal(prune_body), **names),
        sql.SQL("REVOKE ALL ON FUNCTION {prune}(interval, bigint) FROM PUBLIC").format(**names),
    ]


def notify_statement(schema: str) -> sql.Composable:
    """``SELECT schema.pgpubsub_notify(%s, %s)``: one notification; returns its position."""
    return sql.SQL("SELECT {notify}(%s, %s)").format(**_names(schema))


def notify_batch_statement(schema: str) -> sql.Composable:
    """Many notifications in one transaction, in array order (``unnest`` keeps it)."""
    return sql.SQL("SELECT {notify}(c, p) FROM unnest(%s::text[], %s::text[]) AS t(c, p)").format(
        **_names(schema)
    )


def prune_statement(schema: str) -> sql.Composable:
    """``SELECT schema.pgpubsub_prune(older_than, keep_last)``: returns the rows deleted."""
    return sql.SQL(
        "SELECT {prune}(make_interval(secs => %s::double precision), %s::bigint)"
    ).format(**_names(schema))


_CATCH_UP = """
WITH counter AS (
    SELECT coalesce(max(last_position), 0) AS value
      FROM {channels} WHERE channel = %(channel)s
), start AS (
    -- Never above the counter: if the positions on the server went back (a reset log, a
    -- failover that lost rows, a `since` too high), the reader goes on from the counter, and
    -- its registration must protect the rows taken from there at once.
    SELECT least(coalesce(%(after)s::bigint, value), value) AS after FROM counter
), registered AS (
    INSERT INTO {readers} AS r (reader, channel, position, seen_at, hold)
    SELECT %(reader)s, %(channel)s, start.after, now(),
           make_interval(secs => %(hold)s::double precision)
      FROM start
    ON CONFLICT (reader, channel) DO UPDATE
       SET position = excluded.position, seen_at = excluded.seen_at, hold = excluded.hold
    RETURNING 1
), batch AS (
    SELECT l.position, l.payload, l.sender_pid,
           sum(octet_length(l.payload)) OVER (ORDER BY l.position)
               - octet_length(l.payload) AS bytes_before
      FROM {log} AS l, start
     WHERE l.channel = %(channel)s AND l.position > start.after
     ORDER BY l.position
     LIMIT %(max_rows)s
)
SELECT (SELECT value FROM counter),
       (SELECT after FROM start),
       (SELECT count(*) FROM registered),
       coalesce(array_agg(b.position ORDER BY b.position), '{{}}'),
       coalesce(array_agg(b.payload ORDER BY b.position), '{{}}'),
       coalesce(array_agg(b.sender_pid ORDER BY b.position), '{{}}')
  FROM batch AS b
 WHERE b.bytes_before < %(max_bytes)s
"""


def catch_up_statement(schema: str) -> sql.Composable:
    """Read a channel's rows after a position, and register the reader, in one round trip.

    Parameters (a dict): ``channel``, ``after`` (``None``, or beyond the counter: from the
    channel's current position), ``reader``, ``hold`` (seconds or ``None``), ``max_rows``,
    ``max_bytes``. One row: the channel's counter, the position read from (as registered), 1
    (registered), and three arrays: positions, payloads, sender pids, in position order.
    """
    return sql.SQL(_CATCH_UP).format(**_names(schema))


_REPORT = """
INSERT INTO {readers} AS r (reader, channel, position, seen_at, hold)
SELECT %(reader)s, u.channel, u.position, now(), make_interval(secs => %(hold)s::double precision)
  FROM unnest(%(channels)s::text[], %(positions)s::bigint[]) AS u(channel, position)
ON CONFLICT (reader, channel) DO UPDATE
   SET position = excluded.position, seen_at = excluded.seen_at, hold = excluded.hold
"""


def report_statement(schema: str) -> sql.Composable:
    """Record a reader's delivered positions (and that it is alive), for pruning."""
    return sql.SQL(_REPORT).format(**_names(schema))
