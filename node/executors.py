"""Worker threads and processes for the runner's ``thread`` and ``process`` executors, and
progress relayed to the loop.

:class:`ThreadWorkers` runs sync calls on up to ``max_workers`` threads and hands their
outcomes back to the loop in batches: one loop wake-up for every outcome that finished
while the loop was busy, instead of one per call (``ThreadPoolExecutor`` +
``run_in_executor`` wakes the loop once per call, so calls that a burst started together
come back one loop turn each, and their log appends and replies no longer share a commit
and a flush).

Each process worker is a one-process ``ProcessPoolExecutor`` (:class:`WorkerSlot`) started
from the ``forkserver`` context (``spawn`` where forkserver is unavailable), never ``fork``,
since the node is a multi-threaded asyncio program. The child loads the module again from
its file path or dotted name (:func:`child_init`), so only names and argument values cross
the process boundary; errors come back as plain text (:func:`child_call`), progress over a
pipe that a thread of the node reads. :class:`Relay` hands progress reports of one call,
from whatever thread or process, to its callback on the event loop. Used by
:mod:`node.runner`; not a public API.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import multiprocessing
import os
import signal
import threading
import traceback
import typing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import structlog

from hub.errors import FunctionFailedError
from hub.progress import Progress
from node.modules import BackendModule, load_module, one_line

if typing.TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext

__all__ = [
    "ProgressCallback",
    "Relay",
    "ThreadWorkers",
    "WorkerSlot",
    "child_call",
    "child_init",
    "mp_context",
    "start_worker",
]

log = structlog.get_logger(__name__)

#: Receives ``(fraction, message)`` on the event loop while a call runs.
ProgressCallback = Callable[[float | None, str], None]


class Relay:
    """Forwards progress reports of one call to its callback on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: ProgressCallback | None) -> None:
        self._loop = loop
        self._callback = callback
        self._loop_thread = threading.get_ident()
        self.open = True
        self.done = asyncio.Event()

    def on_loop(self, fraction: float | None, message: str) -> None:
        if not self.open or self._callback is None:
            return
        try:
            self._callback(fraction, message)
        except Exception:
            log.warning("runner.progress_callback_failed", exc_info=True)

    def from_any_thread(self, fraction: float | None, message: str) -> None:
        if threading.get_ident() == self._loop_thread:
            self.on_loop(fraction, message)
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
            self._loop.call_soon_threadsafe(self.on_loop, fraction, message)


#: Seconds a finished thread call may wait for the calls started with it to finish too.
LINGER = 0.001


class _Group:
    """Thread calls submitted in one turn of the loop; their outcomes go back together."""

    __slots__ = ("closed", "done", "expired", "left", "size")

    def __init__(self) -> None:
        self.size = 0  # submitted (loop thread only)
        self.left = 0  # submitted, not yet finished
        self.done: list[_Outcome] = []  # finished, held for the rest of the group
        self.closed = False  # the loop turn that submitted them has ended
        self.expired = False  # LINGER passed: outcomes go back one by one


class ThreadWorkers:
    """Up to ``max_workers`` threads running sync calls; outcomes reach the loop in batches.

    :meth:`submit` returns an asyncio future resolved on the loop when the call returns or
    raises; the pool cancels it only at :meth:`shutdown` (a call still queued). The calls
    submitted in one turn of the loop (a burst) go back to it together once all have
    finished, or :data:`LINGER` after they were submitted, whichever comes first; after
    that, each as it finishes. A lone call goes back at once. So a burst's outcomes share
    one log commit and one flush to the server, as they do when calls run on the loop.

    Concurrency slots: a call submitted with ``slot=True`` holds one of its module's slots
    (see :mod:`node.runner`); one submitted without waits here for a slot. A thread that
    ends a call hands its slot to the next waiting call at once, on the thread, so a burst
    larger than the module's limit runs through while the loop is busy, without a turn of
    the loop between two calls; a slot nobody here waits for goes back to ``give_back`` on
    the loop, and :meth:`grant` hands a slot freed elsewhere to a waiting call.
    A thread is started when a call waits and none is idle; an idle one is woken at most
    one at a time (a woken thread wakes the next if calls still wait). Threads are
    daemons and end at shutdown.
    """

    def __init__(
        self, max_workers: int, name: str, give_back: Callable[[], None] | None = None
    ) -> None:
        self.max_workers = max(1, max_workers)
        self.name = name
        self._give_back = give_back
        self._cond = threading.Condition(threading.Lock())
        self._jobs: collections.deque[_Job] = collections.deque()  # holding a slot
        self._queued: collections.deque[_Job] = collections.deque()  # waiting for one
        self._threads: list[threading.Thread] = []
        self._running = 0  # calls a thread has taken and not yet finished (under _cond)
        self._idle = 0  # threads waiting for a call
        self._waking = 0  # idle threads notified and not yet running
        self._closed = False
        self._group: _Group | None = None  # the group of this loop turn (loop thread only)
        self._done_lock = threading.Lock()
        self._done: list[_Outcome] = []  # outcomes to hand to the loop
        self._freed = 0  # slots to give back on the loop (under _done_lock)
        self._posted = False  # the loop has been asked to take them (under _done_lock)

    @property
    def holding(self) -> int:
        """Calls holding a slot: running, or about to run on a thread."""
        return self._running + len(self._jobs)

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._queued)

    def submit(self, fn: Callable[[], Any], *, slot: bool = True) -> asyncio.Future[Any]:
        """Run ``fn()`` on a worker thread (once it has a slot); its outcome resolves the
        returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        group = self._group
        if group is None:
            group = self._group = _Group()
            loop.call_soon(self._close_group, group)
        group.size += 1
        with self._done_lock:
            group.left += 1
        with self._cond:
            if self._closed:
                raise RuntimeError(f"thread workers of {self.name} are shut down")
            if not slot:
                self._queued.append((future, fn, group))
                return future
            self._jobs.append((future, fn, group))
            self._start_one()
        return future

    def grant(self) -> bool:
        """Hand a slot freed elsewhere to the first waiting call; False if none waits."""
        with self._cond:
            if not self._queued:
                return False
            self._jobs.append(self._queued.popleft())
            self._start_one()
            return True

    def withdraw(self, future: asyncio.Future[Any]) -> bool:
        """Take back the call of ``future`` if it still waits for a slot (True); its
        future is left pending. False once it holds a slot."""
        with self._cond:
            for job in self._queued:
                if job[0] is future:
                    self._queued.remove(job)
                    break
            else:
                return False
        group = job[2]
        with self._done_lock:  # the rest of its group goes back without it
            group.left -= 1
            if group.left or not group.closed or not group.done:
                return True
            self._done += group.done
            group.done = []
            post = not self._posted
            self._posted = True
        if post:
            future.get_loop().call_soon(self._deliver)
        return True

    def _start_one(self) -> None:
        """A call holds a slot: wake an idle thread or start one (under _cond)."""
        if self._idle > self._waking:
            if not self._waking:
                self._waking += 1
                self._cond.notify()
        elif len(self._threads) < self.max_workers:
            thread = threading.Thread(
                target=self._work,
                name=f"fedhub-{self.name}-{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def shutdown(self) -> None:
        """Cancel the calls still queued; running ones finish, then their threads end."""
        with self._cond:
            self._closed = True
            jobs = [*self._jobs, *self._queued]
            self._jobs, self._queued = collections.deque(), collections.deque()
            self._cond.notify_all()
        for future, _, group in jobs:
            with self._done_lock:  # the rest of its group goes back without it
                group.left -= 1
                group.expired = True
                self._done += group.done
                group.done = []
            loop = future.get_loop()
            loop.call_soon_threadsafe(future.cancel)
            loop.call_soon_threadsafe(self._deliver)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    if self._closed:
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                    if self._waking:
                        self._waking -= 1
                future, fn, group = self._jobs.popleft()
                self._running += 1
                if self._jobs and self._idle > self._waking:  # more wait: wake a helper
                    self._waking += 1
                    self._cond.notify()
            try:
                outcome: _Outcome = (future, True, fn())
            except BaseException as exc:  # handed to the caller on the loop
                outcome = (future, False, exc)
            with self._cond:
                self._running -= 1
                handed = bool(self._queued)
                if handed:  # the slot goes to the next call waiting for one
                    self._jobs.append(self._queued.popleft())
            post = False
            with self._done_lock:
                group.left -= 1
                if not handed:
                    self._freed += 1
                if group.expired:
                    self._done.append(outcome)
                elif group.left or not group.closed:
                    group.done.append(outcome)
                else:
                    group.done.append(outcome)
                    self._done += group.done
                    group.done = []
                if (self._done or self._freed) and not self._posted:
                    post = self._posted = True  # one wake-up until the loop takes them
            if post:
                with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                    future.get_loop().call_soon_threadsafe(self._deliver)

    def _close_group(self, group: _Group) -> None:
        if self._group is group:
            self._group = None
        with self._done_lock:
            group.closed = True
            if group.left:
                if group.size > 1:  # a lone call goes back as it finishes: no timer
                    asyncio.get_running_loop().call_later(LINGER, self._expire, group)
                return
            if not group.done:
                return
            self._done += group.done
            group.done = []
        self._deliver()

    def _expire(self, group: _Group) -> None:
        with self._done_lock:
            group.expired = True
            if not group.done:
                return
            self._done += group.done
            group.done = []
        self._deliver()

    def _deliver(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
            freed, self._freed = self._freed, 0
            self._posted = False
        for _ in range(freed):
            if not self.grant() and self._give_back is not None:
                self._give_back()
        for future, ok, value in done:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_Job = tuple["asyncio.Future[Any]", Callable[[], Any], _Group]
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


class WorkerSlot:
    """One worker process (a one-process pool) plus the pipe its progress comes back on."""

    def __init__(self, executor: ProcessPoolExecutor, pid: int, conn: Connection) -> None:
        self.executor = executor
        self.pid = pid
        self.calls: dict[int, Relay] = {}
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._read, args=(conn,), name=f"fedhub-worker-{pid}", daemon=True
        )
        self._thread.start()

    def _read(self, conn: Connection) -> None:
        try:
            while not self._stop.is_set():
                if conn.poll(0.1):
                    item = conn.recv()
                    self._loop.call_soon_threadsafe(self._dispatch, item)
        except Exception:  # worker gone, pipe broken or loop closed: stop reading
            return
        finally:
            conn.close()

    def _dispatch(self, item: tuple[Any, ...]) -> None:
        relay = self.calls.get(item[0])
        if relay is None:
            return
        if item[1] == "progress":
            relay.on_loop(item[2], item[3])
        elif item[1] == "done":
            relay.done.set()

    def discard(self, *, kill: bool) -> None:
        """Stop reading; kill the process if asked; let the pool go."""
        self._stop.set()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Shut the worker down cleanly, waiting for it (blocking; use a thread)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._stop.set()
        self._thread.join(timeout=1.0)


async def start_worker(module: BackendModule, progress_interval: float) -> WorkerSlot:
    """Start one worker process for ``module`` and return it once it answers."""
    context = mp_context()
    receiver, sender = context.Pipe(duplex=False)
    executor = ProcessPoolExecutor(
        max_workers=1,
        mp_context=context,
        initializer=child_init,
        initargs=(module.spec, module.name, sender, progress_interval),
    )
    try:
        pid = await asyncio.wrap_future(executor.submit(os.getpid))
    except Exception as exc:
        executor.shutdown(wait=False, cancel_futures=True)
        receiver.close()
        raise FunctionFailedError(
            f"cannot start a worker process for module {module.name}: {one_line(exc)}"
        ) from exc
    finally:
        sender.close()
    log.info("runner.worker_started", module=module.name, pid=pid)
    return WorkerSlot(executor, pid, receiver)


@functools.cache
def mp_context() -> BaseContext:
    """forkserver where available (never fork: the node is multi-threaded), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["node.executors"])
        return context
    return multiprocessing.get_context("spawn")


# -- in the worker process

_child: dict[str, Any] = {}


def child_init(spec: str, name: str, conn: Connection, interval: float) -> None:
    """Worker initializer: load the module (so pickled arguments resolve) once."""
    _child["module"] = load_module(spec, name=name, log_skipped=False)
    _child["conn"] = conn
    _child["interval"] = interval


def child_call(call_id: int, function: str, arguments: dict[str, object]) -> tuple[Any, ...]:
    """Run one call in the worker; errors come back as plain text, not pickled exceptions."""
    module: BackendModule = _child["module"]
    conn: Connection = _child["conn"]
    spec = module.functions[function]
    progress: Progress | None = None
    if spec.takes_progress is not None:

        def send(fraction: float | None, message: str) -> None:
            conn.send((call_id, "progress", fraction, message))

        progress = Progress(send, min_interval=_child["interval"])
    try:
        return ("ok", spec.invoke(arguments, progress))
    except Exception as exc:
        return ("error", type(exc).__name__, one_line(exc).partition(": ")[2], _trace(exc))
    finally:
        if progress is not None:
            progress.flush()
            conn.send((call_id, "done"))


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
