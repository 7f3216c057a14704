"""A hot standby of a :class:`~tests.support.servers.PrivateServer`, to fail over to for real.

:func:`standby_of` takes a base backup of a running primary (``pg_basebackup -R``, streaming
its WAL) into a new private server, which starts as a hot standby that follows the primary;
:func:`promote` makes it a primary (``pg_promote()``). The primary's default settings
(``wal_level=replica``, ``max_wal_senders=10``, initdb's ``replication`` trust lines) allow it.
"""

from __future__ import annotations

import subprocess

import psycopg2

from .servers import SUPERUSER, PrivateServer, _clean_env, _run_as, _write_settings

__all__ = ["promote", "standby_of"]


def standby_of(primary: PrivateServer, timeout: float = 60.0) -> PrivateServer:
    """Return a started hot standby of ``primary`` (its own port and socket directory).

    :raises RuntimeError: if the base backup fails.
    """
    standby = PrivateServer(bin_dir=primary.bin_dir)
    try:
        data = standby.data_dir
        for path in sorted(data.rglob("*"), reverse=True):  # the template's copy: replaced
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        run_as = _run_as()
        proc = subprocess.run(
            [
                str(primary.bin_dir / "pg_basebackup"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                SUPERUSER,
                "-X",
                "stream",
                "-R",
                "--no-sync",
                "-c",
                "fast",
            ],
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **run_as.popen_kwargs(),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed ({proc.returncode}): {proc.stderr}")
        _write_settings(
            data,
            {
                "port": str(standby.port),
                "unix_socket_directories": f"'{standby.socket_dir}'",
                "hot_standby": "on",
            },
        )
        standby.start()
    except BaseException:
        standby.close()
        raise
    return standby


def promote(standby: PrivateServer) -> None:
    """Make ``standby`` a primary, and return once it accepts writes."""
    conn = psycopg2.connect(standby.dsn, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_promote(wait => true, wait_seconds => 30)")
            row = cur.fetchone()
            if row is None or row[0] is not True:
                raise RuntimeError(f"pg_promote() did not promote: {row!r}")
    finally:
        conn.close()
