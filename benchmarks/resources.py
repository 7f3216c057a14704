"""Memory growth and idle CPU, each measured in a fresh child process of its own.

A fresh process (``spawn``) has no peak left over from the other workloads, no stray threads
and nothing else on its CPU clock.

*memory*: the child LISTENs (our ``Dispatcher`` with a no-op handler; the ``Dispatcher`` with
the channel LISTENed and no handler; the bare psycopg2 loop, for reference) and receives
``memory_warmup`` notifications, then takes its RSS as the baseline and resets its peak
(``/proc/self/clear_refs``; elsewhere the peak is ``ru_maxrss``, since the process started);
then it receives ``memory_count`` notifications. Growth = peak RSS - baseline. The end of each
phase is a marker notification on a second channel, committed after the senders finished, so
everything before it has been received when its handler runs.

*idle*: the child starts a ``Dispatcher`` (default heartbeat, one subscribed channel that
nobody notifies), lets it settle, then reads the process's CPU clock (and the dispatcher
thread's, where ``pthread_getcpuclockid`` exists) across ``idle_seconds``.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import psycopg2

from .senders import SideConnection
from .workloads import Context, Figures

__all__ = ["MEMORY_LABELS", "idle", "memory"]

MEMORY_LABELS = {
    "dispatcher": "Dispatcher, no-op handler",
    "dispatcher-unhandled": "Dispatcher, no handler",
    "dispatcher-executor": "Dispatcher, slow executor",
    "dispatcher-backpressure": "Dispatcher, backpressure",
    "psycopg2": "psycopg2 loop",
}
"""Memory configurations by key."""

_CHILD_START_SECONDS = 60.0
_SLOW_HANDLER_SECONDS = 0.001
_SLOW_EVERY = 50
"""The executor soak's handler sleeps 1 ms every 50th call (20 µs a call on average, on one
channel so one call at a time): it handles fewer notifications per second than the senders
commit, so backpressure holds for most of the run."""
_SETTLE_SECONDS = 0.5


def _child(target: Any, *args: Any) -> tuple[Any, Connection]:
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    process = context.Process(target=target, args=(*args, theirs), daemon=True)
    process.start()
    theirs.close()
    return process, mine


def _expect(pipe: Connection, kind: str, timeout: float) -> tuple[Any, ...]:
    if not pipe.poll(timeout):
        raise TimeoutError(f"the child process sent no {kind!r} within {timeout:.0f} s")
    message = pipe.recv()
    if message[0] != kind:
        raise RuntimeError(f"the child process failed: {message[1:]}")
    return tuple(message[1:])


def _end(process: Any, pipe: Connection) -> None:
    with contextlib.suppress(OSError):
        pipe.send(("stop",))
    process.join(15)
    if process.is_alive():
        process.terminate()
        process.join(5)
    pipe.close()


# ---------------------------------------------------------------------------------- memory


def _memory_once(ctx: Context, kind: str) -> Figures:
    s = ctx.settings
    channel, marker = ctx.channel("memory"), ctx.channel("marker")
    process, pipe = _child(_memory_child, ctx.dsn, kind, channel, marker)
    side = SideConnection(ctx.dsn)
    try:
        _expect(pipe, "ready", _CHILD_START_SECONDS)
        ctx.pool.batched(channel, s.memory_warmup).wait(s.wait_seconds)
        side.notify(marker, "warmup")
        (baseline_kb,) = _expect(pipe, "baseline", s.wait_seconds)
        started = time.monotonic()
        sent = ctx.pool.batched(channel, s.memory_count).wait(s.wait_seconds + s.memory_count / 1e4)
        side.notify(marker, "measure")
        peak_kb, final_kb, peak_since = _expect(pipe, "peak", s.wait_seconds + s.memory_count / 1e4)
        elapsed = time.monotonic() - started
    finally:
        side.close()
        _end(process, pipe)
    return {
        "growth_mb": (peak_kb - baseline_kb) / 1024,
        "baseline_mb": baseline_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "final_mb": final_kb / 1024,
        "peak_since": peak_since,
        "notifications": s.memory_count,
        "receive_rate": s.memory_count / elapsed,
        "sender_rate": sent.rate,
    }


def memory(ctx: Context) -> dict[str, Figures]:
    """Peak RSS growth over ``memory_count`` notifications, per configuration."""
    return {
        kind: ctx.measure(
            "memory",
            kind,
            label,
            lambda kind=kind: _memory_once(ctx, kind),  # type: ignore[misc]
            "{growth_mb:>+10.2f} MB peak growth (baseline {baseline_mb:.1f} MB)",
        )
        for kind, label in MEMORY_LABELS.items()
        if kind != "dispatcher-backpressure"
    } | {
        "dispatcher-backpressure": ctx.measure(
            "memory",
            "dispatcher-backpressure",
            MEMORY_LABELS["dispatcher-backpressure"],
            lambda: _backpressure_once(ctx),
            "{growth_mb:>+10.2f} MB peak growth (baseline {baseline_mb:.1f} MB), "
            "{backpressure_count} held back, all {delivered} delivered",
        )
    }


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_kb() -> int:
    found = _status_kb("VmRSS")
    if found is not None:
        return found
    psutil: Any = importlib.import_module("psutil")  # untyped; only where /proc is not
    return int(psutil.Process().memory_info().rss // 1024)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux); ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _peak_kb(reset: bool) -> int:
    found = _status_kb("VmHWM") if reset else None
    if found is not None:
        return found
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _memory_child(dsn: str, kind: str, channel: str, marker: str, pipe: Connection) -> None:
    """In the child: receive, reporting the RSS baseline and then the peak."""
    phases = {"warmup": threading.Event(), "measure": threading.Event()}

    def on_marker(notification: Any) -> None:
        phases[notification.payload].set()

    def noop(_notification: Any) -> None:
        pass

    calls = [0]

    def slow(_notification: Any) -> None:
        calls[0] += 1  # one channel: its handler calls never overlap
        if calls[0] % _SLOW_EVERY == 0:
            time.sleep(_SLOW_HANDLER_SECONDS)

    try:
        stop = threading.Event()
        if kind == "psycopg2":
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            conn.cursor().execute(f'LISTEN "{channel}"; LISTEN "{marker}"')
            loop = threading.Thread(
                target=_plain_loop, args=(conn, marker, noop, on_marker, stop), daemon=True
            )
            loop.start()

            def close() -> None:
                stop.set()
                loop.join(10)
                conn.close()

        else:
            from pgpubsub_dispatch import Dispatcher

            executor = ThreadPoolExecutor(4) if kind == "dispatcher-executor" else None
            bus = Dispatcher(dsn, executor=executor)
            if kind == "dispatcher":
                bus.subscribe(channel, noop)
            elif kind == "dispatcher-executor":
                bus.subscribe(channel, slow)
            else:
                bus.listen(channel)
            bus.subscribe(marker, on_marker)
            bus.start()

            def close() -> None:
                bus.stop()
                if executor is not None:
                    executor.shutdown()

        pipe.send(("ready",))
        if not phases["warmup"].wait(120):
            raise TimeoutError("no warm-up marker")
        baseline = _rss_kb()
        reset = _reset_peak()
        pipe.send(("baseline", baseline))
        if not phases["measure"].wait(600):
            raise TimeoutError("no end marker")
        pipe.send(("peak", _peak_kb(reset), _rss_kb(), "baseline" if reset else "process start"))
        close()
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    pipe.poll(30)


def _plain_loop(conn: Any, marker: str, handler: Any, on_marker: Any, stop: Any) -> None:
    import select

    while not stop.is_set():
        if select.select([conn], [], [], 0.2)[0]:
            conn.poll()
            for notification in conn.notifies:
                if notification.channel == marker:
                    on_marker(notification)
                else:
                    handler(notification)
            conn.notifies.clear()


# ------------------------------------------------------------------------ memory, backpressure

_BACKPRESSURE_MAX_PENDING = 1000
_BACKPRESSURE_HEARTBEAT = 1.0
_BACKPRESSURE_HOLD_SECONDS = 3.0


def _backpressure_once(ctx: Context) -> Figures:
    """Handlers blocked on an executor (``max_pending=1000``, 1 s heartbeat) while
    ``backpressure_count`` notifications are committed; meanwhile ``notify()`` is called from
    another thread and from a blocked handler, and three heartbeats are due. Growth = peak RSS
    over that time - the baseline after a warm-up; then the handlers are released and every
    notification must arrive."""
    s = ctx.settings
    count = s.backpressure_count
    channel, other = ctx.channel("bp"), ctx.channel("bp_other")
    process, pipe = _child(_backpressure_child, ctx.dsn, channel, other)
    bound = s.wait_seconds + count / 1e4
    try:
        _expect(pipe, "ready", _CHILD_START_SECONDS)
        warmup = s.memory_warmup
        ctx.pool.batched(channel, warmup).wait(s.wait_seconds)
        pipe.send(("warmup", warmup))
        (baseline_kb,) = _expect(pipe, "baseline", s.wait_seconds)
        sent = ctx.pool.batched(channel, count).wait(bound)
        pipe.send(("meanwhile",))
        peak_kb, rss_kb, held, notify_seconds = _expect(pipe, "peak", bound)
        started = time.monotonic()
        pipe.send(("release", warmup + count))
        delivered, dropped = _expect(pipe, "delivered", bound)
        elapsed = time.monotonic() - started
    finally:
        _end(process, pipe)
    return {
        "growth_mb": (peak_kb - baseline_kb) / 1024,
        "baseline_mb": baseline_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "final_mb": rss_kb / 1024,
        "notifications": count,
        "backpressure_count": count,
        "held_in_memory": held,
        "notify_seconds": notify_seconds,
        "delivered": delivered - warmup,
        "dropped": dropped,
        "receive_rate": count / elapsed,
        "sender_rate": sent.rate,
    }


def _backpressure_child(dsn: str, channel: str, other: str, pipe: Connection) -> None:
    """In the child: the blocked executor, the calls made meanwhile, the peak, the release."""
    from pgpubsub_dispatch import Dispatcher

    armed, entered, meanwhile = threading.Event(), threading.Event(), threading.Event()
    release, notified = threading.Event(), threading.Event()
    lock = threading.Lock()
    counted = [0]
    executor = ThreadPoolExecutor(4)
    bus = Dispatcher(
        dsn,
        executor=executor,
        max_pending=_BACKPRESSURE_MAX_PENDING,
        heartbeat_interval=_BACKPRESSURE_HEARTBEAT,
    )

    def gated(_notification: Any) -> None:
        with lock:
            counted[0] += 1
        if not armed.is_set():
            return
        if not entered.is_set():
            entered.set()
            meanwhile.wait(600)
            bus.notify(other, "from a handler on the executor", timeout=60)
            notified.set()
        release.wait(600)

    try:
        bus.subscribe(channel, gated)
        bus.start()
        pipe.send(("ready",))
        _, warmup = pipe.recv()
        deadline = time.monotonic() + 120
        while counted[0] < warmup:
            if time.monotonic() > deadline:
                raise TimeoutError("the warm-up notifications did not arrive")
            time.sleep(0.01)
        baseline = _rss_kb()
        reset = _reset_peak()
        armed.set()
        pipe.send(("baseline", baseline))
        pipe.recv()  # everything is committed: the handlers are blocked
        started = time.monotonic()
        bus.notify(other, "from another thread", timeout=60)
        meanwhile.set()
        if not notified.wait(60):
            raise TimeoutError("notify() from a handler on the executor did not return")
        notify_seconds = time.monotonic() - started
        time.sleep(_BACKPRESSURE_HOLD_SECONDS)  # heartbeats come due meanwhile
        stats = bus.stats()
        held = stats.received - stats.dispatched - stats.dropped + stats.pending
        pipe.send(("peak", _peak_kb(reset), _rss_kb(), held, notify_seconds))
        _, total = pipe.recv()
        release.set()
        deadline = time.monotonic() + 600
        while counted[0] < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{counted[0]} of {total} notifications arrived")
            time.sleep(0.05)
        pipe.send(("delivered", counted[0], bus.stats().dropped))
        bus.stop()
        executor.shutdown()
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        release.set()
        meanwhile.set()
    pipe.poll(30)


# ------------------------------------------------------------------------------------- idle


def idle(ctx: Context) -> dict[str, Figures]:
    """CPU used by a started, idle ``Dispatcher`` over ``idle_seconds``, % of one core."""

    def body() -> Figures:
        seconds = ctx.settings.idle_seconds
        process, pipe = _child(_idle_child, ctx.dsn, ctx.channel("idle"), seconds)
        try:
            (figures,) = _expect(pipe, "idle", _CHILD_START_SECONDS + seconds)
        finally:
            _end(process, pipe)
        return dict(figures)

    return {
        "dispatcher": ctx.measure(
            "idle",
            "dispatcher",
            "Dispatcher",
            body,
            "{cpu_percent:>10.3f} % of one core (dispatcher thread {thread_cpu_percent:.3f} %)",
        )
    }


def _idle_child(dsn: str, channel: str, seconds: float, pipe: Connection) -> None:
    """In the child: start a dispatcher, sleep, report the CPU it used."""
    try:
        from pgpubsub_dispatch import Dispatcher

        bus = Dispatcher(dsn)
        bus.subscribe(channel, lambda _n: None)
        bus.start()
        time.sleep(_SETTLE_SECONDS)
        clock = _dispatcher_thread_clock()
        wall0, cpu0 = time.monotonic(), time.process_time()
        thread0 = time.clock_gettime(clock) if clock is not None else None
        time.sleep(seconds)
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        thread_cpu = (
            time.clock_gettime(clock) - thread0
            if clock is not None and thread0 is not None
            else None
        )
        bus.stop()
        pipe.send(
            (
                "idle",
                {
                    "cpu_percent": 100.0 * cpu / wall,
                    "thread_cpu_percent": (
                        None if thread_cpu is None else 100.0 * thread_cpu / wall
                    ),
                    "cpu_seconds": cpu,
                    "wall_seconds": wall,
                },
            )
        )
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    pipe.poll(30)


def _dispatcher_thread_clock() -> int | None:
    """The CPU clock of the dispatcher thread, found by its name, or ``None``."""
    if not hasattr(time, "pthread_getcpuclockid"):
        return None
    for thread in threading.enumerate():
        if thread.name.startswith("pgpubsub-dispatch") and thread.ident is not None:
            try:
                return time.pthread_getcpuclockid(thread.ident)
            except OSError:
                return None
    return None
