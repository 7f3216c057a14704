"""How a caller waits for its command: the Completion the dispatcher resolves (no server needed).

A transaction's callers are all woken; a caller that gave up (timed out) must not keep the
others waiting, and learns the outcome if it asks again.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from pgpubsub_dispatch._completion import Completion, finish_all
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
