"""The 2015 ``pgpubsub`` 0.0.5 itself, to run the compatibility tests' programs against.

It is not in the ``test`` extra: its only requirement is the ``psycopg2`` *source* distribution,
which pip would build (a compiler, libpq's headers) and unpack over ``psycopg2-binary``'s files.
It needs nothing but the ``psycopg2`` module, which ``psycopg2-binary`` provides, so
``.ci/run`` installs it with ``pip install --no-deps pgpubsub==0.0.5``; when it is missing (the
README's test command alone), :func:`ancestor_module` installs it the same way, with pip, into
a directory of the test session, and fails the test (never skips) if that cannot be done.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

REQUIREMENT = "pgpubsub==0.0.5"

PIP_SECONDS = 120.0


def ancestor_module(scratch: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """Return the 2015 ``pgpubsub`` package and its ``pgpubsub.triggers`` module.

    :param scratch: a directory to install it into when it is not installed.
    :raises AssertionError: when it is not installed and pip cannot install it.
    """
    try:
        package = importlib.import_module("pgpubsub")
    except ImportError:
        target = scratch / "ancestor"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                REQUIREMENT,
            ],
            capture_output=True,
            text=True,
            timeout=PIP_SECONDS,
            check=False,
        )
        assert done.returncode == 0, f"cannot install {REQUIREMENT}: {done.stderr}"
        sys.path.insert(0, str(target))
        package = importlib.import_module("pgpubsub")
    assert not hasattr(package, "Dispatcher"), f"{package.__file__} is not the 2015 package"
    return package, importlib.import_module("pgpubsub.triggers")
