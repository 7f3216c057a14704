"""The documentation site in docs/ builds cleanly, covers every public name; its examples run.

- The HTML build runs as a user would run it (``python -m sphinx -W --keep-going -b html``),
  with warnings as errors, bounded in time.
- Every name of ``pgpubsub_dispatch.__all__`` has an entry in the API reference.
- Every Python block of docs/*.rst is marked ``.. test: run`` (executed here against the test
  server, in a fresh namespace holding ``dsn``, with tracebacks pointing at the .rst file's own
  line numbers) or ``.. test: skip (why)``, as in README.rst.
"""

from __future__ import annotations

import html.parser
import subprocess
import sys
from pathlib import Path

import pytest

import pgpubsub_dispatch

from .support.rst import Block, read_blocks, run, unmarked
from .support.waiting import BOUND

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_SECONDS = 180.0
"""The build takes a few seconds; this bounds it on a slow, busy machine."""


PAGES = sorted(DOCS.glob("*.rst"))
BLOCKS = [block for page in PAGES for block in read_blocks(page)]
PYTHON = [block for block in BLOCKS if block.language == "python"]
RUNNABLE = [block for block in PYTHON if block.marker == ".. test: run"]


@pytest.fixture(scope="module")
def html_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built once for this module with warnings as errors."""
    out = tmp_path_factory.mktemp("docs-html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert result.returncode == 0, f"the docs build failed:\n{result.stderr}{result.stdout[-3000:]}"
    return out


@pytest.mark.timeout(BUILD_SECONDS + 30)
def test_docs_build_with_warnings_as_errors(html_build: Path) -> None:
    for page in PAGES:
        assert (html_build / page.with_suffix(".html").name).is_file(), f"{page.name} not built"
    cli = (html_build / "cli.html").read_text(encoding="utf-8")
    assert "--count" in cli and "--dsn" in cli, "the CLI reference was not generated"


class _Ids(html.parser.HTMLParser):
    """The ``id`` attributes of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


@pytest.mark.timeout(BUILD_SECONDS + 30)
def test_api_reference_documents_every_public_name(html_build: Path) -> None:
    parser = _Ids()
    parser.feed((html_build / "api.html").read_text(encoding="utf-8"))
    documented = parser.ids
    # A name may be documented where it is defined (the trigger helpers, in triggers).
    missing = [
        name
        for name in pgpubsub_dispatch.__all__
        if f"pgpubsub_dispatch.{name}" not in documented
        and f"{getattr(getattr(pgpubsub_dispatch, name), '__module__', '')}.{name}"
        not in documented
    ]
    missing += [
        f"Dispatcher.{name}"
        for name in vars(pgpubsub_dispatch.Dispatcher)
        if not name.startswith("_") and f"pgpubsub_dispatch.Dispatcher.{name}" not in documented
    ]
    missing += [
        f"module {name}"
        for name in ("signals", "errors", "devserver", "triggers", "streams")
        if f"module-pgpubsub_dispatch.{name}" not in documented
    ]
    assert not missing, f"docs/api.rst does not document: {missing}"


def test_every_python_example_is_marked_to_run_or_to_skip_with_a_reason() -> None:
    missing = unmarked(PYTHON)
    assert not missing, f"mark these '.. test: run' or '.. test: skip (why)': {missing}"
    assert len(RUNNABLE) >= 10


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_docs_example_runs(block: Block, dsn: str) -> None:
    assert not run(block, dsn, BOUND), f"{block} left a dispatcher running"
