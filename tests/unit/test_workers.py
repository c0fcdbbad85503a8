"""The one worker-pool module: framed jobs to worker processes, answers in order, and every
job a worker leaves unanswered (it died, or answered nonsense) handed back."""

from __future__ import annotations

from hub.workers import WorkerPool

# answers each job with its payload reversed
ECHO = """
import os, sys
read, out = sys.stdin.buffer.read, os.fdopen(int(sys.argv[1]), "wb")
while len(head := read(4)) == 4:
    blob = read(int.from_bytes(head, "little"))[::-1]
    out.write(len(blob).to_bytes(4, "little") + blob)
    out.flush()
"""
DIES = "import sys; sys.exit(1)"
SILENT = "import sys; sys.stdin.buffer.read()"  # takes jobs, answers none


def _pool(
    source: str, count: int = 1, **kw: int
) -> tuple[WorkerPool[int], dict[int, bytes], list[int]]:
    answers: dict[int, bytes] = {}
    orphans: list[int] = []

    def answered(job: int, payload: bytes) -> bool:
        if payload == b"nonsense"[::-1]:
            return False
        answers[job] = payload
        return True

    pool = WorkerPool.start(source, count, answered, orphans.append, **kw)
    assert pool is not None
    return pool, answers, orphans


def test_jobs_are_answered_by_the_workers() -> None:
    pool, answers, orphans = _pool(ECHO, 2)
    try:
        sent = [n for n in range(6) if pool.submit(n, f"job {n}".encode())]
        pool.drain()
    finally:
        pool.close()
    assert len(sent) >= 4  # two workers, two jobs in flight each, more once answered
    assert answers == {n: f"job {n}".encode()[::-1] for n in sent}
    assert orphans == []


def test_no_worker_takes_more_jobs_than_it_may_hold_unanswered() -> None:
    pool, _, _ = _pool(SILENT, 2, in_flight=2)
    try:
        sent = [n for n in range(6) if pool.submit(n, b"job")]
    finally:
        pool.close()
    assert sent == [0, 1, 2, 3]


def test_a_worker_that_dies_leaves_its_jobs_to_the_caller() -> None:
    pool, answers, orphans = _pool(DIES)
    try:
        pool.submit(1, b"one")
        pool.drain()
    finally:
        pool.close()
    assert answers == {}
    assert orphans == [1]
    assert not pool.usable


def test_a_nonsense_answer_drops_the_worker_and_hands_back_its_jobs() -> None:
    pool, answers, orphans = _pool(ECHO, in_flight=2)
    try:
        assert pool.submit(1, b"fine") and pool.submit(2, b"nonsense")
        pool.drain()
    finally:
        pool.close()
    assert answers == {1: b"enif"}
    assert orphans == [2]
    assert not pool.usable
