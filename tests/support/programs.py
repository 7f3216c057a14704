"""The examples as a user runs them: ``python examples/NAME.py`` as a subprocess.

:class:`Program` reads an example's output line by line on a thread into a queue, so every wait
is a bounded ``get``. This module is a pytest plugin (loaded by ``tests/conftest.py``) for its
``programs`` fixture.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2.extensions
import pytest

from pgpubsub_dispatch import devserver

from .waiting import BOUND

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
"""The repository's ``examples`` directory."""

STARTUP_BOUND = 30.0
"""Seconds an example may take to start a throwaway server, run and exit."""


def example_env(dsn: str | None, **extra: str) -> dict[str, str]:
    """This process's environment for an example, with the server chosen only by ``dsn``.

    ``dsn`` ``None`` leaves no server configured at all (``PGPUBSUB_DSN``, ``DATABASE_URL``
    and libpq's selectors removed), which makes the zero-setup path start its own server.
    """
    env = dict(os.environ)
    for name in ("PGPUBSUB_DSN", "DATABASE_URL"):
        env.pop(name, None)
    if dsn is None:
        for name in devserver.LIBPQ_SELECTORS:
            env.pop(name, None)
    else:
        env["PGPUBSUB_DSN"] = dsn
    env.update(extra)
    return env


def unique(prefix: str) -> str:
    """A name no other test (or test run) uses: ``prefix`` and 8 hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Program:
    """An example running as a subprocess; its output lines (stdout and stderr) are queued."""

    def __init__(self, script: str, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            env=env,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = BOUND) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (``re.search``); fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{self.text}")
            if line is None:
                self._lines.put(None)  # keep the end visible to later reads
                pytest.fail(f"exited ({self.proc.wait()}) before {pattern!r}:\n{self.text}")
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def stop(self, signum: signal.Signals) -> int:
        """Send ``signum`` and return the exit code; fail if it does not exit in time."""
        self.proc.send_signal(signum)
        return self.finish()

    def finish(self, timeout: float = BOUND) -> int:
        """Wait for the exit, collect the remaining output, and return the exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout} s later:\n{self.text}")
        self._reader.join(timeout)
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.output.append(line)
        self._lines.put(None)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(BOUND)

    @property
    def text(self) -> str:
        return "\n".join(self.output)


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    """Examples started by a test; any still running at its end is killed."""
    started: list[Program] = []
    yield started
    for program in started:
        program.kill()


def start(programs: list[Program], script: str, *args: str, env: dict[str, str]) -> Program:
    """Start ``script`` as a :class:`Program` killed at the end of the test (``programs``)."""
    program = Program(script, *args, env=env)
    programs.append(program)
    return program


def wrong_database(dsn: str) -> str:
    """``dsn`` with a database name that does not exist on its server."""
    return psycopg2.extensions.make_dsn(dsn, dbname=unique("pgpubsub_no_such_db"))


QUICKSTART_OUTPUT = [
    r"listening on \['Orders', 'orders'\] as backend pid (?P<pid>\d+)",
    r"orders: 'order 1' from pid (?P=pid) \(this dispatcher\)",
    r"Orders: 'a different channel' from pid (?P=pid) \(this dispatcher\)",
    r"orders: 'order 2' from pid (?!(?P=pid)\b)\d+ \(another session\)",
    r"count_order saw 2 notifications on 'orders'",
    r"stopped \(running=False\)",
]
"""The quickstart's output, line by line, as regular expressions (README.rst shows it too)."""
