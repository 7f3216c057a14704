"""Typing: a user's fully annotated program passes ``mypy --strict`` against the package.

``tests/support/typed_program.py`` uses every public call a user makes (handlers, coroutine
handlers, ``decode=``, streams in threads and in asyncio, the ancestor's API); its
``assert_type`` lines fail if a public signature degrades to ``Any``. The package itself is
checked by CI (``mypy --strict pgpubsub_dispatch``); this checks what its users see.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "tests" / "support" / "typed_program.py"


def mypy_strict(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_typed_user_program_passes_mypy_strict() -> None:
    checked = mypy_strict(PROGRAM)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success" in checked.stdout


def test_a_wrong_use_of_a_notification_is_caught(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from pgpubsub_dispatch import Dispatcher\n"
        "def count(bus: Dispatcher) -> int:\n"
        "    with bus.stream('orders') as stream:\n"
        "        return stream.get().payload\n"  # a str, not an int
    )
    checked = mypy_strict(wrong)
    assert checked.returncode == 1
    assert 'Incompatible return value type (got "str", expected "int")' in checked.stdout
