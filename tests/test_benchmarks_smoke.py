"""The benchmark suite's ``--quick`` mode, run once as CI runs it: a smoke test, no timing asserts.

``python -m benchmarks --quick --json PATH --dsn DSN`` runs as a subprocess of this interpreter
from the repository root against the test server; the test checks that it exits cleanly, prints
the table, and that the JSON holds every workload and every receiver with sensible numbers.
Peers whose package is not installed here (the ``bench`` extra) must be reported as skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

QUICK_BOUND = 180.0
"""Seconds the quick mode may take here (it aims at well under one minute)."""

RECEIVE_WORKLOADS = {
    "throughput": ("rate", "cpu_us"),
    "backlog": ("rate", "cpu_us"),
    "latency": ("p50", "p90", "p99", "max"),
    "busy-throughput": ("rate",),
    "busy-latency": ("p50", "p90", "p99", "max"),
}
RECEIVERS = {  # receiver key: the module it needs
    "psycopg2": "psycopg2",
    "dispatcher": "pgpubsub_dispatch",
    "psycopg3": "psycopg",
    "asyncpg": "asyncpg",
    "blinker": "blinker",
}
NOTIFY = (
    "psycopg2-1",
    "dispatcher-1",
    "dispatcher-8",
    "dispatcher-32",
    "psycopg2-shared-8",
    "psycopg2-shared-32",
)
MEMORY = ("dispatcher", "dispatcher-unhandled", "psycopg2")


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """Run the quick mode once; return its standard output and its JSON document."""
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out), "--dsn", dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=QUICK_BOUND,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout, json.loads(out.read_text("utf-8"))


@pytest.mark.timeout(QUICK_BOUND + 30)
def test_quick_mode_covers_every_workload_and_receiver(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    stdout, document = quick_run
    assert "ratio" in stdout and "throughput" in stdout and "PostgreSQL" in stdout
    assert document["errors"] == []
    assert len(document["runs"]) == 1
    run, summary = document["runs"][0], document["summary"]

    installed = {k for k, module in RECEIVERS.items() if importlib.util.find_spec(module)}
    assert set(document["receivers"]) == installed
    assert set(document["skipped"]) == set(RECEIVERS) - installed
    for workload, fields in RECEIVE_WORKLOADS.items():
        assert set(run[workload]) == installed, workload
        for receiver in installed:
            for field in fields:
                assert positive(run[workload][receiver][field]), (workload, receiver, field)
                entry = summary[workload][receiver][field]
                assert positive(entry["median"]), (workload, receiver, field)
                assert positive(entry["ratio"]), (workload, receiver, field)

    for key in NOTIFY:
        assert positive(run["notify"][key]["rate"]), key
        assert positive(summary["notify"][key]["rate"]["ratio"]), key

    executor = run["executor"]["dispatcher"]
    assert executor["ordered"] is True
    assert positive(executor["rate"]) and positive(executor["ideal_rate"])
    assert positive(summary["executor"]["dispatcher"]["rate"]["ratio"])

    for key in MEMORY:
        figures = run["memory"][key]
        assert positive(figures["peak_mb"]) and positive(figures["baseline_mb"]), key
        assert math.isfinite(figures["growth_mb"]), key
        assert figures["notifications"] > 0, key

    idle = run["idle"]["dispatcher"]
    assert positive(idle["wall_seconds"])
    assert idle["cpu_percent"] >= 0  # an idle dispatcher may well use no measurable CPU

    machine = document["machine"]
    for fact in ("cpu", "cores", "python", "postgresql", "psycopg2", "psycopg2_libpq"):
        assert machine[fact], fact
