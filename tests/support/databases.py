"""Databases in other encodings, on the test server, for the tests that need them.

This module is a pytest plugin (loaded by ``tests/conftest.py``) for its fixtures:
``latin1_dsn`` and ``euc_jp_dsn``, each the DSN of a database of that encoding created for the
test session (``LC_COLLATE 'C'``, from ``template0``) with a unique name and dropped at its end,
so parallel runs on one server never meet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import psycopg2.sql
import pytest

__all__ = ["database_in", "euc_jp_dsn_fixture", "latin1_dsn_fixture"]


def _admin(dsn: str, statement: psycopg2.sql.Composable) -> None:
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def database_in(dsn: str, encoding: str) -> Iterator[str]:
    """Create a database in ``encoding`` next to ``dsn``'s; yield its DSN; drop it after."""
    name = f"pgpubsub_{encoding.lower()}_{uuid.uuid4().hex[:8]}"
    identifier = psycopg2.sql.Identifier(name)
    _admin(
        dsn,
        psycopg2.sql.SQL(
            "CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ).format(identifier, psycopg2.sql.Literal(encoding)),
    )
    try:
        yield psycopg2.extensions.make_dsn(dsn, dbname=name)
    finally:
        _admin(dsn, psycopg2.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))


@pytest.fixture(scope="session", name="latin1_dsn")
def latin1_dsn_fixture(dsn: str) -> Iterator[str]:
    """The DSN of a LATIN1 database on the test server."""
    yield from database_in(dsn, "LATIN1")


@pytest.fixture(scope="session", name="euc_jp_dsn")
def euc_jp_dsn_fixture(dsn: str) -> Iterator[str]:
    """The DSN of an EUC_JP database on the test server."""
    yield from database_in(dsn, "EUC_JP")
