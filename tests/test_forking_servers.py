"""Forking servers, for real: gunicorn workers, and the Django autoreloader's double start.

gunicorn runs ``tests/support/forking_app.py`` (one dispatcher for the process) with ``-w 2``
on a free port of 127.0.0.1; each process writes what its handler receives to a file of its
own, which the tests read with bounded polls. Every gunicorn is stopped with SIGTERM (killed if
it lingers) and its server sessions are checked gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from .support.dispatching import sessions_named, unique
from .support.notifying import send
from .support.waiting import BOUND, wait_until

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"


def quiet_options() -> list[str]:
    """gunicorn 25 and newer open a control socket in ~/.gunicorn unless told not to."""
    usage = subprocess.run([str(GUNICORN), "--help"], capture_output=True, text=True, timeout=30)
    return ["--no-control-socket"] if "--no-control-socket" in usage.stdout else []


class Gunicorn:
    """A gunicorn master serving ``forking_app``, its output in a file."""

    def __init__(self, dsn: str, out: Path, *args: str, start: str) -> None:
        self.out = out
        self.channel = unique("fork")
        self.name = unique("gunicorn")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = out / "gunicorn.log"
        env = {
            **os.environ,
            "PGPUBSUB_DSN": dsn,
            "FORKING_APP_NAME": self.name,
            "FORKING_APP_CHANNEL": self.channel,
            "FORKING_APP_OUT": str(out),
            "FORKING_APP_START": start,
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(GUNICORN),
                    *quiet_options(),
                    *("-w", "2", "-b", f"127.0.0.1:{self.port}"),
                    *args,
                    "tests.support.forking_app:app",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._accepts, "gunicorn to accept connections", timeout=30, interval=0.05)

    def _accepts(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def get(self, path: str) -> dict[str, Any]:
        """GET ``path``; the JSON answer (which must be a 200)."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=BOUND) as answer:
            assert answer.status == 200
            body: dict[str, Any] = json.load(answer)
        return body

    def lines(self, pid: int) -> list[str]:
        """What process ``pid``'s handler received so far."""
        path = self.out / f"{pid}.txt"
        return path.read_text().splitlines() if path.exists() else []

    def worker_pids(self) -> list[int]:
        """Pids of the processes that wrote a file, the master's excluded."""
        return [int(p.stem) for p in self.out.glob("*.txt") if int(p.stem) != self.process.pid]

    def stop(self) -> None:
        """SIGTERM the master and wait for it (kill it after BOUND)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(BOUND)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(BOUND)


@pytest.fixture
def gunicorns(tmp_path: Path, sender: Any) -> Iterator[list[Gunicorn]]:
    """gunicorns started by a test; stopped at its end, their sessions checked gone."""
    started: list[Gunicorn] = []
    yield started
    for server in started:
        server.stop()
        wait_until(lambda s=server: not sessions_named(sender, s.name), "the sessions to end")


def test_preload_with_a_dispatcher_started_at_import_serves_every_worker(
    dsn: str, tmp_path: Path, gunicorns: list[Gunicorn], sender: Any
) -> None:
    server = Gunicorn(dsn, tmp_path, "--preload", start="import")
    gunicorns.append(server)
    master = server.process.pid

    # Worker X takes the first request and holds it until "release": the next one goes to Y.
    first: Future[dict[str, Any]] = Future()
    threading.Thread(target=lambda: first.set_result(server.get("/wait?payload=first"))).start()
    wait_until(lambda: any("first" in server.lines(p) for p in server.worker_pids()), "X")
    second = server.get("/notify?payload=second")
    send(sender, server.channel, "release")
    first_answer = first.result(BOUND)

    assert "error" not in first_answer and "error" not in second, (first_answer, second)
    assert first_answer["pid"] != second["pid"]  # both workers served a request
    assert {first_answer["pid"], second["pid"]} == set(server.worker_pids())
    assert first_answer["received"] == ["first", "second", "release"]
    assert second["received"][-1] == "second"  # its own handler ran before notify returned
    y = second["pid"]
    wait_until(lambda: "release" in server.lines(y), "worker Y to receive 'release'")
    assert server.lines(y) == ["second", "release"]  # its session began with its first request
    assert first_answer["backend_pid"] != second["backend_pid"]
    # the master's session, inherited by both workers, was never disturbed: it got everything
    wait_until(lambda: "release" in server.lines(master), "the master to receive 'release'")
    assert server.lines(master) == ["first", "second", "release"]
    assert len(sessions_named(sender, server.name)) == 3  # the master's and one per worker


def test_post_fork_hook_gives_each_worker_every_notification(
    dsn: str, tmp_path: Path, gunicorns: list[Gunicorn], sender: Any
) -> None:
    server = Gunicorn(
        dsn, tmp_path, "--preload", "-c", "tests/support/gunicorn_conf.py", start="post_fork"
    )
    gunicorns.append(server)
    wait_until(lambda: len(server.worker_pids()) == 2, "both workers to listen", timeout=30)
    payloads = [f"n{i}" for i in range(20)]

    for payload in payloads:
        send(sender, server.channel, payload)
    send(sender, server.channel, "end")

    for pid in server.worker_pids():
        wait_until(lambda pid=pid: "end" in server.lines(pid), f"worker {pid} to receive 'end'")
        assert server.lines(pid) == ["ready", *payloads, "end"]  # each once, in order
    assert server.lines(server.process.pid) == []  # the master never listened
    assert len(sessions_named(sender, server.name)) == 2
    server.stop()
    assert server.process.returncode == 0, server.log.read_text()
    assert not sessions_named(sender, server.name)  # worker_exit stopped each dispatcher


DJANGO_LIKE = textwrap.dedent(
    """
    import os, subprocess, sys, threading

    from pgpubsub_dispatch import Dispatcher

    bus = Dispatcher(os.environ["PGPUBSUB_DSN"], application_name=sys.argv[1])
    got = threading.Event()
    bus.subscribe(sys.argv[2], lambda notification: got.set())

    def ready():
        # AppConfig.ready(): runserver's autoreloader runs it in its watching parent too;
        # only the child it starts (RUN_MAIN=true) serves, so only that one starts the bus.
        if os.environ.get("RUN_MAIN") == "true" or "runserver" not in sys.argv:
            bus.start(timeout=10)
            return True
        return False

    started = ready()
    print(f"{'child' if os.environ.get('RUN_MAIN') else 'parent'} started={started}", flush=True)
    if os.environ.get("RUN_MAIN") != "true":
        # the autoreloader: run this program again, as Django does, and wait for it
        env = {**os.environ, "RUN_MAIN": "true"}
        sys.exit(subprocess.run([sys.executable, *sys.argv], env=env, timeout=30).returncode)
    bus.notify(sys.argv[2], "hello")
    print(f"child received={got.wait(10)}", flush=True)
    bus.stop(timeout=10)
    """
)


def test_django_autoreloader_pattern_starts_one_dispatcher(dsn: str, tmp_path: Path) -> None:
    program = tmp_path / "manage_like.py"
    program.write_text(DJANGO_LIKE)
    env = {k: v for k, v in os.environ.items() if k != "RUN_MAIN"}
    env["PGPUBSUB_DSN"] = dsn
    done = subprocess.run(
        [sys.executable, str(program), unique("django"), unique(), "runserver"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "parent started=False",
        "child started=True",
        "child received=True",
    ]
