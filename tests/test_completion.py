"""How a caller waits for its command: the Completion the dispatcher resolves (no server needed).

A transaction's callers are all woken; a caller that gave up (timed out) must not keep the
others waiting, and learns the outcome if it asks again.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from pgpubsub_dispatch import _completion
from pgpubsub_dispatch._completion import Completion, finish_all, start_all
from tests.support.waiting import BOUND


def test_result_returns_the_value_set_and_again_afterwards() -> None:
    done = Completion()
    assert done.set_running_or_notify_cancel()
    done.set_result(42)
    assert done.done() and not done.cancelled()
    assert done.result(0) == 42
    assert done.result(0) == 42


def test_result_raises_the_error_set() -> None:
    done = Completion()
    done.set_exception(ValueError("refused"))
    with pytest.raises(ValueError, match="refused"):
        done.result(BOUND)


def test_result_times_out_while_nothing_is_set() -> None:
    with pytest.raises(FutureTimeout):
        Completion().result(0.01)


def test_result_of_a_cancelled_completion_raises_at_once_even_without_timeout() -> None:
    cancelled = Completion()
    assert cancelled.cancel()
    with pytest.raises(CancelledError):
        cancelled.result(None)  # would wait forever if it waited for a release


def test_cancel_wins_only_before_it_is_taken() -> None:
    untaken, taken = Completion(), Completion()
    assert untaken.cancel() and untaken.cancelled()
    assert not untaken.set_running_or_notify_cancel()
    with pytest.raises(CancelledError):
        untaken.result(0)
    assert taken.set_running_or_notify_cancel()
    assert not taken.cancel()


def _waiters(completions: list[Completion]) -> tuple[list[threading.Thread], list[object]]:
    results: list[object] = []

    def wait(done: Completion) -> None:
        results.append(done.result(BOUND))

    threads = [threading.Thread(target=wait, args=(done,)) for done in completions]
    for thread in threads:
        thread.start()
    return threads, results


def test_finish_all_wakes_every_waiter_of_a_transaction() -> None:
    completions = [Completion() for _ in range(16)]
    threads, results = _waiters(completions)
    finish_all(completions, "committed")
    for thread in threads:
        thread.join(BOUND)
    assert results == ["committed"] * 16


def test_a_waiter_that_gave_up_does_not_hold_up_the_others() -> None:
    first, gave_up, last = Completion(), Completion(), Completion()
    with pytest.raises(FutureTimeout):
        gave_up.result(0.01)  # its caller timed out and left
    threads, results = _waiters([first, last])
    finish_all([first, gave_up, last], None)
    for thread in threads:
        thread.join(BOUND)
    assert results == [None, None]
    assert gave_up.result(0) is None  # finished all the same: asking again tells so


def test_start_all_takes_those_not_cancelled_and_never_the_cancelled() -> None:
    kept, cancelled, other = Completion(), Completion(), Completion()
    assert cancelled.cancel()
    assert start_all([kept, cancelled, other]) == [True, False, True]
    assert not kept.cancel() and not other.cancel()  # running: too late to take back
    assert cancelled.cancelled()


def _woken(done: Completion, value: object) -> object:
    """Finish ``done`` while a thread waits on it; return what the waiter got."""
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(done.result(BOUND)))
    waiter.start()
    done.set_result(value)
    waiter.join(BOUND)
    return got[0]


def test_a_woken_waiters_lock_serves_the_next_completion_which_still_waits() -> None:
    done = Completion()
    assert _woken(done, "first") == "first"
    following = [Completion() for _ in range(3)]  # one may get the lock its waiter gave back
    for completion in following:
        with pytest.raises(FutureTimeout):
            completion.result(0.01)  # not finished: waits, whoever's lock it holds
    with pytest.raises(RuntimeError):
        done.set_result("again")  # finished once: a second finish fails, as before
    for completion in following:
        assert _woken(completion, completion) is completion


def test_a_completion_finished_after_its_waiter_gave_up_wakes_nobody_else() -> None:
    late = Completion()
    assert late.set_running_or_notify_cancel()
    with pytest.raises(FutureTimeout):
        late.result(0.01)
    late.set_result("late")  # its lock is released with nobody waiting: never reused
    fresh = Completion()
    with pytest.raises(FutureTimeout):
        fresh.result(0.01)
    assert late.result(0) == "late"
    assert _woken(fresh, "fresh") == "fresh"


def test_many_threads_each_get_their_own_outcome_with_timeouts_mixed_in() -> None:
    """Completions made, finished and abandoned from many threads at once: every waiter that
    did not give up gets its own value, and a new completion never finds itself finished."""
    rounds, threads_count = 300, 8
    handed: list[tuple[Completion, int]] = []
    cond = threading.Condition()
    wrong: list[str] = []
    finished_flag = threading.Event()

    def caller(index: int) -> None:
        chooser = random.Random(index)
        for n in range(rounds):
            done = Completion()
            try:
                done.result(0)
                wrong.append(f"a new completion was finished already ({index}, {n})")
            except FutureTimeout:
                pass  # new: not finished, whichever lock it got
            value = index * rounds + n
            with cond:
                handed.append((done, value))
                cond.notify()
            try:
                got = done.result(0.0005 if chooser.random() < 0.2 else BOUND)
            except FutureTimeout:
                continue  # gave up: finished later, by the finisher, all the same
            if got != value:
                wrong.append(f"{value} got {got}")

    def finisher() -> None:
        chooser = random.Random(0)
        while not finished_flag.is_set() or handed:
            with cond:
                if not handed:
                    cond.wait(0.01)
                    continue
                chooser.shuffle(handed)
                taken = handed[:]
                handed.clear()
            for done, value in taken:
                if done.set_running_or_notify_cancel():
                    done.set_result(value)

    owner = threading.Thread(target=finisher)
    owner.start()
    callers = [threading.Thread(target=caller, args=(i,)) for i in range(threads_count)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(BOUND * 3)
    finished_flag.set()
    owner.join(BOUND)
    assert not any(thread.is_alive() for thread in [*callers, owner])
    assert wrong == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_child_forked_while_another_thread_took_calls_can_take_and_cancel() -> None:
    """fork() while another thread holds the lock of the moves out of pending (the dispatcher
    thread taking a batch): the child has no such thread, and must not wait for it."""
    held, release = threading.Event(), threading.Event()

    def taking_a_batch() -> None:
        with _completion._lock:
            held.set()
            release.wait(BOUND)

    holder = threading.Thread(target=taking_a_batch)
    holder.start()
    assert held.wait(BOUND)
    child = os.fork()
    if child == 0:  # pragma: no cover - reports through its exit status
        code = 1
        try:
            done = threading.Event()

            def body() -> None:
                assert start_all([Completion()]) == [True]
                assert Completion().cancel()
                done.set()

            threading.Thread(target=body, daemon=True).start()
            code = 0 if done.wait(BOUND) else 2
        finally:
            os._exit(code)
    release.set()
    holder.join(BOUND)
    deadline = time.monotonic() + BOUND * 2
    while (ended := os.waitpid(child, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(child, 9)
            os.waitpid(child, 0)
            pytest.fail("the child did not end")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(ended[1]) == 0, "the child waited for the parent's lock"
