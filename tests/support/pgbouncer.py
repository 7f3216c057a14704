"""A private PgBouncer, in front of a server a test owns, in the pool mode the test asks for.

:class:`PgBouncer` runs Debian's ``pgbouncer`` (``apt-get install pgbouncer``) as a child
process: ``127.0.0.1`` on a free port, ``auth_type = trust``, its ini file in a temporary
directory, and (when we are root, which PgBouncer refuses) as the tests' unprivileged user.
:meth:`PgBouncer.reconfigure` rewrites the ini (pool mode, the database it points to) and
``RELOAD``\\ s it through the admin console, as an operator would.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psycopg2

from .servers import free_port, scratch_dir, unprivileged_popen_kwargs
from .waiting import BOUND, wait_until

__all__ = ["ALIAS", "PgBouncer", "pgbouncer_binary"]

ALIAS = "app"
"""The database name clients give PgBouncer."""

_USER = "postgres"
"""The user clients (and the admin console) connect as; PrivateServer's superuser."""


def pgbouncer_binary() -> str:
    """The path of ``pgbouncer``; fails the test when it is not installed."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    assert found, "pgbouncer is not installed: apt-get install pgbouncer (see README.rst)"
    return found


class PgBouncer:
    """A PgBouncer process of one test; use as a context manager.

    :param target: libpq parameters of the server database it pools (``host``, ``port``,
        ``dbname``, ``user``), e.g. ``psycopg2.extensions.parse_dsn(server.dsn)``.
    :param pool_mode: ``session``, ``transaction`` or ``statement``.
    :param settings: more ``[pgbouncer]`` settings (``default_pool_size``, ...).
    """

    def __init__(
        self,
        target: Mapping[str, str],
        pool_mode: str = "session",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self._target = dict(target)
        self._pool_mode = pool_mode
        self._settings = dict(settings or {})
        self._dir = Path(tempfile.mkdtemp(prefix="pgpubsub-pgbouncer-", dir=scratch_dir()))
        self._dir.chmod(0o755)
        self._ini = self._dir / "pgbouncer.ini"
        self._log = self._dir / "pgbouncer.log"
        (self._dir / "users.txt").write_text(f'"{_USER}" ""\n')
        (self._dir / "users.txt").chmod(0o644)
        self._write_ini()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """What clients connect with: ``host=127.0.0.1 port=N dbname=app user=postgres``."""
        return f"host=127.0.0.1 port={self.port} dbname={ALIAS} user={_USER}"

    def _write_ini(self) -> None:
        target = " ".join(f"{key}={value}" for key, value in self._target.items())
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self._dir / "users.txt"),
            "admin_users": _USER,
            "pool_mode": self._pool_mode,
            **self._settings,
        }
        lines = [f"[databases]\n{ALIAS} = {target}\n", "[pgbouncer]\n"]
        lines += [f"{key} = {value}\n" for key, value in settings.items()]
        self._ini.write_text("".join(lines))
        self._ini.chmod(0o644)

    def start(self) -> None:
        """Start it and wait until it accepts clients.

        :raises RuntimeError: if it exits or does not answer within the tests' bound, or runs
            already (a second process would be left behind by close()).
        """
        if self._proc is not None:
            raise RuntimeError("this PgBouncer runs already")
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [pgbouncer_binary(), str(self._ini)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **unprivileged_popen_kwargs(),
            )
        wait_until(self._answers, "pgbouncer to accept clients", interval=0.02)

    def _answers(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {self.log_text()}")
        try:
            self.admin("SHOW VERSION")
        except psycopg2.OperationalError:
            return False
        return True

    def admin(self, command: str) -> None:
        """Run ``command`` on the admin console (``RELOAD``, ``SHOW POOLS``, ...)."""
        conn = psycopg2.connect(
            f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={_USER}", connect_timeout=5
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(command)
        finally:
            conn.close()

    def reconfigure(
        self, *, pool_mode: str | None = None, target: Mapping[str, str] | None = None
    ) -> None:
        """Rewrite the ini with another pool mode or target database, and ``RELOAD``."""
        if pool_mode is not None:
            self._pool_mode = pool_mode
        if target is not None:
            self._target = dict(target)
        self._write_ini()
        self.admin("RELOAD")

    def log_text(self) -> str:
        """What PgBouncer logged."""
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop it (its clients are disconnected) and delete its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(BOUND)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(BOUND)
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)

    def __enter__(self) -> PgBouncer:
        if self._proc is None:  # started already (as by test_poolers.pooler()): once is enough
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
