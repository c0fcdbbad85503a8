"""ThreadWorkers: sync calls on worker threads, outcomes handed back to the loop in batches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from node import executors
from node.executors import ThreadWorkers


async def test_each_call_returns_its_own_value_from_a_worker_thread() -> None:
    pool = ThreadWorkers(4, "t")
    loop_thread = threading.get_ident()
    try:
        results = await asyncio.gather(
            *(pool.submit(lambda i=i: (i, threading.get_ident())) for i in range(50))
        )
    finally:
        pool.shutdown()
    assert [r[0] for r in results] == list(range(50))
    assert all(r[1] != loop_thread for r in results)


async def test_an_exception_raised_by_a_call_reaches_its_caller() -> None:
    pool = ThreadWorkers(2, "t")

    def boom() -> None:
        raise ValueError("broken")

    try:
        with pytest.raises(ValueError, match="broken"):
            await pool.submit(boom)
        assert await pool.submit(lambda: "still serving") == "still serving"
    finally:
        pool.shutdown()


async def test_calls_submitted_in_one_loop_turn_come_back_in_one_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executors, "LINGER", 60.0)  # however slowly the threads start
    pool = ThreadWorkers(4, "t")
    turns: list[int] = []
    turn = 0

    async def count_turns() -> None:
        nonlocal turn
        while True:
            turn += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count_turns())
    try:
        futures = [pool.submit(lambda: None) for _ in range(8)]
        for future in futures:
            future.add_done_callback(lambda _: turns.append(turn))
        await asyncio.gather(*futures)
    finally:
        counter.cancel()
        pool.shutdown()
    assert len(set(turns)) == 1


async def test_a_slow_call_does_not_hold_back_a_quick_one_submitted_with_it() -> None:
    pool = ThreadWorkers(2, "t")
    release = threading.Event()
    try:
        slow = pool.submit(lambda: release.wait(30))
        quick = pool.submit(lambda: "quick")
        assert await asyncio.wait_for(quick, 10) == "quick"
        assert not slow.done()
        release.set()
        assert await asyncio.wait_for(slow, 10) is True
    finally:
        release.set()
        pool.shutdown()


async def test_shutdown_cancels_calls_still_queued_and_refuses_new_ones() -> None:
    pool = ThreadWorkers(1, "t")
    started, release = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return release.wait(30)

    running = pool.submit(block)
    queued = pool.submit(lambda: "never")
    assert await asyncio.to_thread(started.wait, 30)
    pool.shutdown()
    release.set()
    assert await asyncio.wait_for(running, 10) is True
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


async def test_a_thread_hands_its_slot_to_the_next_waiting_call_while_the_loop_is_busy() -> None:
    given_back: list[int] = []
    pool = ThreadWorkers(1, "t", lambda: given_back.append(1))
    ran = threading.Semaphore(0)
    hold = threading.Event()

    def first_call() -> None:
        hold.wait(30)  # keeps the slot until the others wait for it
        ran.release()

    try:
        first = pool.submit(first_call)  # holds the only slot
        waiting = [pool.submit(ran.release, slot=False) for _ in range(3)]
        assert pool.queued == 3
        hold.set()
        # the loop does not turn here: only the threads can pass the slot on
        for _ in range(4):
            assert ran.acquire(timeout=30), "a waiting call never got the slot"
        await asyncio.gather(first, *waiting)
    finally:
        pool.shutdown()
    assert pool.queued == 0
    assert given_back == [1]  # the slot went back once, after the last call


async def test_a_call_still_waiting_for_a_slot_can_be_withdrawn() -> None:
    pool = ThreadWorkers(1, "t")
    release = threading.Event()
    try:
        busy = pool.submit(lambda: release.wait(30))
        waiting = pool.submit(lambda: "never", slot=False)
        assert pool.withdraw(waiting)
        assert not pool.withdraw(busy)  # it holds its slot: it runs or ran
        release.set()
        assert await busy is True
        assert pool.queued == 0
        assert not waiting.done()
    finally:
        pool.shutdown()
