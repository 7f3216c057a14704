"""Code blocks of reStructuredText pages (README.rst, docs/*.rst), for the tests that run them.

A block is marked by the RST comment just before it (``.. test: run``, ``.. test: skip (why)``,
``.. ci: ...``); running one keeps the page's own line numbers in tracebacks.
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "read_blocks", "run", "unmarked"]

_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. code-block:: *(?P<language>\S+) *$")


@dataclass(frozen=True)
class Block:
    """A ``code-block`` of a page."""

    path: Path
    language: str
    line: int  # 1-based line number of the directive
    body_line: int  # 1-based line number of the first line of code
    code: str  # dedented; as many lines as in the page
    marker: str | None  # the ``.. test: ...`` or ``.. ci: ...`` comment just before it

    def __str__(self) -> str:
        where = self.path.name if self.path.parent.name != "docs" else f"docs/{self.path.name}"
        return f"{where}:{self.line}"

    def padded(self) -> str:
        """The code, after as many blank lines as precede it in the page."""
        return "\n" * (self.body_line - 1) + self.code


def read_blocks(path: Path) -> list[Block]:
    """Every ``.. code-block::`` of the page at ``path``, with the comment that precedes it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for index, line in enumerate(lines):
        directive = _DIRECTIVE.match(line)
        if directive is None:
            continue
        indent = len(directive["indent"])
        previous = next((text.strip() for text in reversed(lines[:index]) if text.strip()), "")
        marker = previous if previous.startswith(".. ") else None
        body_start = index + 1
        while body_start < len(lines) and not lines[body_start].strip():
            body_start += 1
        body_end = body_start
        while body_end < len(lines) and (
            not lines[body_end].strip() or _indent(lines[body_end]) > indent
        ):
            body_end += 1
        body = textwrap.dedent("\n".join(lines[body_start:body_end])).rstrip() + "\n"
        blocks.append(Block(path, directive["language"], index + 1, body_start + 1, body, marker))
    return blocks


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def unmarked(blocks: list[Block]) -> list[str]:
    """The Python blocks marked neither ``.. test: run`` nor ``.. test: skip (why)``."""
    return [
        str(block)
        for block in blocks
        if block.language == "python"
        and block.marker != ".. test: run"
        and not re.fullmatch(r"\.\. test: skip \(.+\)", block.marker or "")
    ]


def run(block: Block, dsn: str, bound: float) -> list[threading.Thread]:
    """Execute ``block`` in a fresh namespace holding ``dsn`` (tracebacks point at the page's
    own lines); return the dispatcher threads it started that are still alive ``bound``
    seconds later (none, for an example that cleans up after itself)."""
    before = set(threading.enumerate())
    namespace = {"__name__": "__example__", "dsn": dsn}
    exec(compile(block.padded(), str(block.path), "exec"), namespace)
    left = [t for t in set(threading.enumerate()) - before if t.name.startswith("pgpubsub")]
    deadline = time.monotonic() + bound
    for thread in left:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in left if t.is_alive()]
