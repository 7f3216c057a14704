"""How a Dispatcher is told where to connect: a DSN, keywords, libpq's environment."""

from __future__ import annotations

import psycopg2
import psycopg2.extensions
import pytest

import pgpubsub_dispatch as pg
from pgpubsub_dispatch import Dispatcher

from .support.waiting import BOUND


def test_dsn_and_keyword_arguments_like_psycopg2_connect(dsn: str) -> None:
    params = psycopg2.extensions.parse_dsn(dsn)
    dbname = params.pop("dbname", None)
    with Dispatcher(**params, dbname=dbname) as bus:
        assert bus.running
    with pytest.raises(TypeError):
        Dispatcher(dsn, async_=True)


def test_libpq_environment_when_no_dsn(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    params = psycopg2.extensions.parse_dsn(dsn)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    for key, env in names.items():
        if key in params:
            monkeypatch.setenv(env, params[key])
    with Dispatcher() as bus:
        assert bus.backend_pid is not None


def test_dsn_as_a_keyword_like_psycopg2_connect(dsn: str) -> None:
    with Dispatcher(dsn=dsn) as bus:
        assert bus.running
    with pytest.raises(TypeError):
        Dispatcher(dsn, dsn=dsn)
    pubsub = pg.connect(dsn=dsn)
    pubsub.close()


def test_any_cursor_factory_of_the_user_is_fine(dsn: str) -> None:
    import psycopg2.extras

    with Dispatcher(dsn, cursor_factory=psycopg2.extras.RealDictCursor) as bus:
        assert 0.0 <= bus.queue_usage(timeout=BOUND) <= 1.0
