"""The whole run: every selected workload, ``settings.runs`` times, one receiver at a time."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from .config import WORKLOADS, Settings
from .notify import notify
from .receivers import RECEIVERS, Receiver
from .report import errors_in, machine_facts, summarise
from .resources import idle, memory
from .senders import SenderPool
from .workloads import RECEIVE_RUNNERS, Context, Figures, executor

__all__ = ["ONCE_PER_INVOCATION", "run_benchmarks"]

RUNNERS: dict[str, Callable[[Context], dict[str, Figures]]] = {
    **RECEIVE_RUNNERS,
    "notify": notify,
    "executor": executor,
    "memory": memory,
    "idle": idle,
}

ONCE_PER_INVOCATION = frozenset({"idle"})
"""Workloads measured in the first run only: 30 s of idling, five times, would tell no more."""


def log(line: str) -> None:
    """Print one progress line on stderr."""
    print(line, file=sys.stderr, flush=True)


def available_receivers(log: Callable[[str], None]) -> tuple[list[type[Receiver]], dict[str, str]]:
    """The receivers that can run here, and why the others cannot."""
    usable, skipped = [], {}
    for cls in RECEIVERS:
        reason = cls.missing()
        if reason is None:
            usable.append(cls)
        else:
            skipped[cls.key] = reason
            log(f"skipping {cls.label}: {reason}")
    return usable, skipped


def run_benchmarks(
    dsn: str, settings: Settings, only: Sequence[str] = WORKLOADS, *, argv: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the selected workloads ``settings.runs`` times; return the JSON-ready document.

    :param dsn: the server.
    :param settings: sizes, rates and the number of runs.
    :param only: the workloads to run (in :data:`.config.WORKLOADS` order).
    :param argv: the command line, recorded in the document.
    """
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    facts = machine_facts(dsn)
    receivers, skipped = available_receivers(log)
    selected = [w for w in WORKLOADS if w in only]
    runs: list[dict[str, Any]] = []
    pool = SenderPool(dsn, settings.senders, settings.payload_bytes)
    try:
        for index in range(settings.runs):
            log(f"--- run {index + 1} of {settings.runs}")
            ctx = Context(dsn, settings, pool, index, receivers, log)
            results: dict[str, Any] = {}
            for workload in selected:
                if workload in ONCE_PER_INVOCATION and index > 0:
                    continue
                results[workload] = RUNNERS[workload](ctx)
            runs.append(results)
    finally:
        pool.close()
    return {
        "command": list(argv),
        "started": started_at,
        "elapsed_s": time.monotonic() - started,
        "machine": facts,
        "settings": dataclasses.asdict(settings),
        "workloads": selected,
        "receivers": [cls.key for cls in receivers],
        "skipped": skipped,
        "runs": runs,
        "summary": summarise(runs, settings),
        "errors": errors_in(runs),
    }
