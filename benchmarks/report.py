"""Machine facts, medians and ratios, the printed table and the JSON file."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from .config import Settings
from .notify import BASELINE as NOTIFY_BASELINE
from .notify import notify_labels
from .receivers import BASELINE, RECEIVERS
from .resources import MEMORY_LABELS
from .senders import SideConnection

__all__ = ["METRICS", "Metric", "format_table", "machine_facts", "summarise", "write_json"]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One line per receiver in the table.

    Attributes:
        workload: the workload whose figures it reads.
        field: the figure's key.
        name: the table's workload column.
        unit: the unit column.
        baseline: the receiver the ratio compares with, in the same run (``None``: no ratio).
    """

    workload: str
    field: str
    name: str
    unit: str
    baseline: str | None


def _latency(workload: str, prefix: str) -> list[Metric]:
    return [
        Metric(workload, field, f"{prefix} {field}", "µs", BASELINE)
        for field in ("p50", "p90", "p99", "max")
    ]


METRICS: tuple[Metric, ...] = (
    Metric("throughput", "rate", "throughput", "notif/s", BASELINE),
    Metric("throughput", "cpu_us", "throughput CPU", "µs/notif", BASELINE),
    Metric("backlog", "rate", "backlog drain", "notif/s", BASELINE),
    Metric("backlog", "cpu_us", "backlog CPU", "µs/notif", BASELINE),
    *_latency("latency", "latency"),
    Metric("busy-throughput", "rate", "busy throughput", "notif/s", BASELINE),
    *_latency("busy-latency", "busy latency"),
    Metric("notify", "rate", "notify", "calls/s", NOTIFY_BASELINE),
    Metric("executor", "rate", "executor", "notif/s", "ideal"),
    Metric("memory", "growth_mb", "memory growth", "MB", None),
    Metric("idle", "cpu_percent", "idle CPU", "% core", None),
)
"""Every row kind of the table, in order."""


def labels(settings: Settings) -> dict[str, dict[str, str]]:
    """Row labels per workload, in table order."""
    receivers = {cls.key: cls.label for cls in RECEIVERS}
    found: dict[str, dict[str, str]] = {m.workload: receivers for m in METRICS}
    found["notify"] = notify_labels(settings.notify_threads)
    workers = settings.executor_workers
    found["executor"] = {
        "ideal": f"ideal: {workers} workers always busy",
        "dispatcher": f"Dispatcher, {workers} workers",
    }
    found["memory"] = dict(MEMORY_LABELS)
    found["idle"] = {"dispatcher": "Dispatcher (default heartbeat)"}
    return found


def _number(figures: Any, field: str) -> float | None:
    if not isinstance(figures, dict) or "error" in figures:
        return None
    value = figures.get(field)
    return float(value) if isinstance(value, (int, float)) else None


def summarise(runs: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Medians and same-run ratios: ``summary[workload][receiver][field]``.

    Each entry holds ``metric``, ``unit``, ``median`` (of the runs' values), ``ratio`` (median
    of the per-run ratios to the baseline's value in the same run; ``None`` without a
    baseline), ``difference`` (median of the per-run differences, same unit), ``values``,
    ``ratios`` and ``differences`` (per run) and ``errors`` (failed runs).
    """
    names = labels(settings)
    summary: dict[str, Any] = {}
    for metric in METRICS:
        for receiver in names[metric.workload]:
            values, ratios, differences, errors = [], [], [], 0
            present = False
            for run in runs:
                results = run.get(metric.workload)
                if results is None or receiver not in results:
                    continue
                present = True
                value = _number(results[receiver], metric.field)
                if value is None:
                    errors += 1
                    continue
                values.append(value)
                if metric.baseline is not None:
                    base = _number(results.get(metric.baseline), metric.field)
                    if base:
                        ratios.append(value / base)
                        differences.append(value - base)
            if not present:
                continue
            entry = summary.setdefault(metric.workload, {}).setdefault(receiver, {})
            entry[metric.field] = {
                "metric": metric.name,
                "label": names[metric.workload][receiver],
                "unit": metric.unit,
                "median": statistics.median(values) if values else None,
                "ratio": statistics.median(ratios) if ratios else None,
                "values": values,
                "ratios": ratios,
                "difference": statistics.median(differences) if differences else None,
                "differences": differences,
                "errors": errors,
            }
    return summary


def _format_value(value: float | None) -> str:
    if value is None:
        return "FAILED"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(summary: dict[str, Any]) -> str:
    """The results table: workload, receiver, median, unit, ratio to the same-run baseline.

    Latency rows also show the median difference to the baseline (µs), as targets for latency
    may be stated in µs.
    """
    header = ("workload", "receiver", "median", "unit", "ratio", "difference")
    rows: list[tuple[str, ...]] = []
    for metric in METRICS:
        for entry in summary.get(metric.workload, {}).values():
            row = entry.get(metric.field)
            if row is None:
                continue
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
            failed = f"  ({row['errors']} failed)" if row["errors"] else ""
            difference = row["difference"]
            shown = "" if difference is None or row["unit"] != "µs" else f"{difference:+,.0f} µs"
            rows.append(
                (
                    row["metric"],
                    row["label"],
                    _format_value(row["median"]),
                    row["unit"],
                    ratio + failed,
                    shown,
                )
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [
            cell.rjust(widths[i]) if i in (2, 5) else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sender_notes(runs: list[dict[str, Any]], settings: Settings) -> list[str]:
    """One line per receive workload on the senders' own rate, to show who set the pace."""
    notes = []
    for workload in ("throughput", "busy-throughput", "backlog"):
        parts = []
        for receiver, label in labels(settings)[workload].items():
            rates = [
                r[workload][receiver]["sender_rate"]
                for r in runs
                if _number(r.get(workload, {}).get(receiver), "sender_rate") is not None
            ]
            if rates:
                parts.append(f"{label} {statistics.median(rates):,.0f}/s")
        if parts:
            notes.append(
                f"senders' own rate during {workload} ({settings.senders} processes): "
                + ", ".join(parts)
            )
    lags = []
    for receiver, label in labels(settings)["throughput"].items():
        behind = [
            r["throughput"][receiver]["receiver_behind_senders_s"]
            for r in runs
            if _number(r.get("throughput", {}).get(receiver), "receiver_behind_senders_s")
            is not None
        ]
        if behind:
            lags.append(f"{label} {statistics.median(behind) * 1000:+.0f} ms")
    if lags:
        notes.append(
            "throughput: last notification handled after the senders finished by "
            + ", ".join(lags)
            + " (near 0: the receiver kept up, so its rate is the machine's limit rather than its"
            " own, see 'throughput CPU'; well above 0: the receiver set the pace)"
        )
    return notes


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _libpq(number: int) -> str:
    major = number // 10000
    return f"{major}.{number % 10000}" if major >= 10 else f"{major}.{number // 100 % 100}"


def machine_facts(dsn: str) -> dict[str, Any]:
    """CPU, cores, Python, server and client library versions, and the code measured."""
    import blinker  # noqa: F401 - present with pgpubsub_dispatch

    import pgpubsub_dispatch

    side = SideConnection(dsn)
    try:
        server = side.scalar("SHOW server_version")
        server_full = side.scalar("SELECT version()")
        sync_commit = side.scalar("SHOW synchronous_commit")
        other_sessions = side.scalar(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        side.close()
    facts: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "postgresql": server,
        "postgresql_full": server_full,
        "server_synchronous_commit": sync_commit,
        "psycopg2": str(getattr(psycopg2, "__version__", "?")).split()[0],
        "psycopg2_libpq": _libpq(psycopg2.extensions.libpq_version()),
        "blinker": _version("blinker"),
        "psycopg": _version("psycopg"),
        "asyncpg": _version("asyncpg"),
        "psutil": _version("psutil"),
        "pgpubsub_dispatch": pgpubsub_dispatch.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "pgpubsub_dispatch")),
        "load_average_at_start": _load_average(),
        "other_server_sessions_at_start": other_sessions,
    }
    try:
        import psycopg

        facts["psycopg_libpq"] = _libpq(psycopg.pq.version())
        facts["psycopg_impl"] = psycopg.pq.__impl__
    except ImportError:
        pass
    return facts


def format_facts(facts: dict[str, Any]) -> str:
    """The machine facts as a few lines."""
    dirty = " (pgpubsub_dispatch/ modified)" if facts.get("git_dirty") else ""
    return "\n".join(
        [
            f"machine: {facts['cpu']}, {facts['cores']} cores; {facts['os']}",
            f"python: {facts['python']}; PostgreSQL {facts['postgresql']} "
            f"(synchronous_commit={facts['server_synchronous_commit']}; senders use off)",
            f"psycopg2 {facts['psycopg2']} (libpq {facts['psycopg2_libpq']}); "
            f"psycopg {facts.get('psycopg')} (libpq {facts.get('psycopg_libpq')}, "
            f"{facts.get('psycopg_impl')}); asyncpg {facts.get('asyncpg')}; "
            f"blinker {facts.get('blinker')}",
            f"pgpubsub_dispatch {facts['pgpubsub_dispatch']} at {facts['git_commit']}{dirty}",
            f"at start: load average {facts.get('load_average_at_start')}, "
            f"{facts.get('other_server_sessions_at_start')} other client sessions on the server",
        ]
    )


def write_json(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (indented, UTF-8)."""
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")


def errors_in(runs: Iterable[dict[str, Any]]) -> list[str]:
    """``"run N workload receiver: error"`` for every failed measurement."""
    found = []
    for index, run in enumerate(runs, 1):
        for workload, results in run.items():
            for receiver, figures in results.items():
                if isinstance(figures, dict) and "error" in figures:
                    found.append(f"run {index} {workload} {receiver}: {figures['error']}")
    return found
