"""The distributions: an sdist and a wheel that carry the licence and the metadata, and an sdist
complete enough that its own tests run from it.

Both are built with ``python -m build --no-isolation`` (the ``test`` extra installs ``build``,
``setuptools`` and ``wheel``) from a copy of this source tree, so the tree is left untouched.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_BOUND = 120.0
"""Seconds building the sdist, then the wheel from it, may take."""

TESTS_BOUND = 120.0
"""Seconds the sdist's own test subset may take."""

# The first test also builds both distributions; the last also runs the sdist's tests.
pytestmark = pytest.mark.timeout(BUILD_BOUND + TESTS_BOUND + 30)

REPOSITORY = "https://github.com/pgpubsub-dispatch/pgpubsub-dispatch"

# Copying the source tree: what a build or a test run leaves, and the virtual environment.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]", ".*_cache",
    ".hypothesis", "artifacts",
)  # fmt: skip


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The sdist and the wheel built from it: ``(sdist, wheel)``."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), "."],
        cwd=source,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_BOUND,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [sdist] = (work / "dist").glob("*.tar.gz")
    [wheel] = (work / "dist").glob("*.whl")
    yield sdist, wheel


def sdist_names(sdist: Path) -> set[str]:
    """The sdist's member names, without their leading ``NAME-VERSION/``."""
    with tarfile.open(sdist) as archive:
        return {name.partition("/")[2] for name in archive.getnames()}


def test_the_sdist_holds_the_licence_and_what_its_tests_need(
    distributions: tuple[Path, Path],
) -> None:
    sdist, _ = distributions
    names = sdist_names(sdist)
    needed = {
        "LICENSE",
        "README.rst",
        "pyproject.toml",
        "setup.cfg",
        ".ci/run",
        "tests/conftest.py",
        "examples/quickstart.py",
        "benchmarks/__main__.py",
        "pgpubsub_dispatch/py.typed",
    }
    assert needed <= names, f"missing from the sdist: {sorted(needed - names)}"
    # Every file of tests/, examples/ and benchmarks/ (support modules included).
    for folder in ("tests", "examples", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                relative = path.relative_to(ROOT).as_posix()
                assert relative in names, f"{relative} is missing from the sdist"
    assert not [n for n in names if n.endswith((".pyc", ".pyo")) or "__pycache__" in n]


def test_the_wheel_holds_the_licence_and_the_metadata(distributions: tuple[Path, Path]) -> None:
    _, wheel = distributions
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [licence] = [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]
        assert archive.read(licence) == (ROOT / "LICENSE").read_bytes()
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert metadata["License"] == "MIT" or metadata["License-Expression"] == "MIT"
    assert metadata["Author"] == "the pgpubsub_dispatch authors"
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert urls == {
        "Homepage": REPOSITORY,
        "Documentation": f"{REPOSITORY}#readme",
        "Source": REPOSITORY,
        "Issues": f"{REPOSITORY}/issues",
    }
    assert "prometheus" in (metadata.get_all("Provides-Extra") or [])
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]


def test_the_sdists_own_tests_run_from_it_against_the_server(
    distributions: tuple[Path, Path], dsn: str, tmp_path: Path
) -> None:
    sdist, _ = distributions
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.9.17, 3.10.12, 3.11.4 and later
            archive.extractall(tmp_path, filter="data")
        else:
            archive.extractall(tmp_path)
    [unpacked] = tmp_path.iterdir()
    env = {**os.environ, "PGPUBSUB_DSN": dsn}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider"),
            *("tests/test_readme.py", "tests/test_examples.py", "tests/test_devserver.py"),
            *("-k", "every_public_name or setup_commands or quickstart_uses or documented_order"),
        ],
        cwd=unpacked,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TESTS_BOUND,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "server: " in done.stdout and "(from PGPUBSUB_DSN)" in done.stdout, done.stdout
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed[1]) >= 6 and "failed" not in done.stdout, done.stdout
    # The package it tested was the sdist's own, not this tree's.
    where = subprocess.run(
        [sys.executable, "-c", "import pgpubsub_dispatch; print(pgpubsub_dispatch.__file__)"],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(unpacked)
