"""``pgpubsub-dispatch install``: create (or update) the gap-free log in a schema.

Runs on the main thread, on a connection of its own that it closes.
"""

from __future__ import annotations

import psycopg2

from ..gapless import install as install_log
from ._common import EXIT_OK, CommandError, say

__all__ = ["install"]


def install(dsn: str, source: str, schema: str) -> int:
    """Run :func:`pgpubsub_dispatch.gapless.install` on a new connection; return ``EXIT_OK``.

    :param dsn: the DSN to connect with.
    :param source: where it came from (unused: psycopg2's own error names the server).
    :param schema: the schema to install into.
    :returns: ``EXIT_OK`` (0) once committed (a line on standard error says so).
    :raises CommandError: for a schema name PostgreSQL would not take.
    :raises psycopg2.Error: a connection failure or what the server raised.
    """
    conn = psycopg2.connect(dsn)
    try:
        install_log(conn, schema)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        conn.close()
    say(f"gap-free log installed in schema {schema!r}")
    return EXIT_OK
