"""Worker processes on pipes: start one, feed it, stop it; a pool of them fed without blocking.

A worker is a fresh Python running a small source string, with its input on stdin and its
answers on a private pipe whose write end's fd number is its first argument (so nothing
it prints can be mistaken for an answer). Only the standard library is imported here: the
audit's helper process loads modules of this package without its ``__init__``.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["WorkerPool"]

J = TypeVar("J")


def _spawn(source: str) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``source`` in a new Python; return the process and the read end of its answers."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", source, str(write_end)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_end,),
            bufsize=0,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return proc, read_end


def _stop(proc: subprocess.Popen[bytes], answers: int, *, kill: bool) -> None:
    """End a worker: kill it (or let it end with its input), close its pipes, reap it."""
    if kill and proc.poll() is None:
        proc.kill()
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    os.close(answers)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class WorkerPool(Generic[J]):
    """Worker processes answering framed jobs, fed without blocking for long.

    Each worker reads ``u32 length || payload`` messages on stdin and writes one answer
    ``u32 length || payload`` (little-endian) per message on its answer pipe, in order.
    ``answered(job, payload)`` takes each answer (returning False if it is nonsense: the
    worker is then dropped); ``orphaned(job)`` takes each job a dead or dropped worker
    left unanswered. A job waits only if every worker holds ``in_flight`` of them.
    """

    def __init__(
        self,
        procs: list[tuple[subprocess.Popen[bytes], int]],
        answered: Callable[[J, bytes], bool],
        orphaned: Callable[[J], None],
        in_flight: int,
    ) -> None:
        self.procs = [proc for proc, _ in procs]
        self.answers = [fd for _, fd in procs]
        self.answered = answered
        self.orphaned = orphaned
        self.in_flight = in_flight
        self.pending: list[deque[J]] = [deque() for _ in procs]
        self.inbox = [bytearray() for _ in procs]
        self.alive = [True] * len(procs)
        self.selector = selectors.DefaultSelector()
        for i, fd in enumerate(self.answers):
            self.selector.register(fd, selectors.EVENT_READ, i)

    @classmethod
    def start(
        cls,
        source: str,
        count: int,
        answered: Callable[[J, bytes], bool],
        orphaned: Callable[[J], None],
        *,
        in_flight: int = 2,
    ) -> WorkerPool[J] | None:
        """Start ``count`` workers running ``source``; None if this Python cannot."""
        if not sys.executable or os.name != "posix":
            return None
        procs: list[tuple[subprocess.Popen[bytes], int]] = []
        try:
            for _ in range(count):
                procs.append(_spawn(source))
        except OSError:
            for proc, fd in procs:
                _stop(proc, fd, kill=True)
            return None
        return cls(procs, answered, orphaned, in_flight)

    @property
    def usable(self) -> bool:
        """Whether any worker is still alive."""
        return any(self.alive)

    def submit(self, job: J, payload: bytes) -> bool:
        """Hand a job to a live worker with room for it; False if none has room."""
        self.collect(timeout=0)
        message = len(payload).to_bytes(4, "little") + payload
        while True:
            room = [
                i for i, up in enumerate(self.alive) if up and len(self.pending[i]) < self.in_flight
            ]
            if not room:
                return False
            i = min(room, key=lambda i: len(self.pending[i]))
            stdin = self.procs[i].stdin
            assert stdin is not None
            try:
                _write_all(stdin.fileno(), message)
            except OSError:
                self.lost(i)
                continue
            self.pending[i].append(job)
            return True

    def collect(self, timeout: float | None) -> None:
        """Take in the answers available (waiting up to ``timeout`` for one; None: until
        some worker answers or dies)."""
        if not any(q and self.alive[i] for i, q in enumerate(self.pending)):
            return
        for key, _ in self.selector.select(timeout):
            i = key.data
            try:
                data = os.read(key.fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                self.lost(i)
                continue
            inbox = self.inbox[i]
            inbox += data
            while len(inbox) >= 4 and self.pending[i]:
                end = 4 + int.from_bytes(inbox[:4], "little")
                if len(inbox) < end:
                    break
                payload = bytes(inbox[4:end])
                del inbox[:end]
                job = self.pending[i].popleft()
                if not self.answered(job, payload):  # not an answer to be trusted
                    self.pending[i].appendleft(job)
                    self.lost(i)
                    break

    def drain(self) -> None:
        """Wait for every job handed out."""
        while any(q and self.alive[i] for i, q in enumerate(self.pending)):
            self.collect(timeout=None)

    def lost(self, i: int) -> None:
        """Worker ``i`` died or answered nonsense: its jobs go to ``orphaned``."""
        if not self.alive[i]:
            return
        self.alive[i] = False
        self.selector.unregister(self.answers[i])
        pending = self.pending[i]
        while pending:
            self.orphaned(pending.popleft())
        _stop(self.procs[i], self.answers[i], kill=True)

    def close(self) -> None:
        """Let the workers finish (end of input), or kill them if they do not."""
        self.selector.close()
        for i, proc in enumerate(self.procs):
            if self.alive[i]:
                _stop(proc, self.answers[i], kill=bool(self.pending[i]))
            self.alive[i] = False
