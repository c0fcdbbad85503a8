"""Running calls of backend functions: limits, queueing, timeouts, cancellation, progress.

:class:`Runner` executes the functions that :func:`node.modules.load_module` found: async
functions on the event loop, sync ones in a per-module thread pool (default), in worker
processes (``executor = "process"``, see :mod:`node.executors`) or inline on the loop, with
a per-module concurrency limit, a bounded waiting queue, per-call timeouts, cancellation
and progress, as each module's :class:`~node.config.ModuleConfig` says. Threads cannot be killed: on
timeout or cancellation the function's :class:`~hub.progress.Progress` is marked cancelled
so cooperative functions stop, and the thread's slot stays taken until it returns. Worker
processes can: a timed-out or cancelled call's process is killed and replaced. A crashed
worker (``os._exit``, segfault) fails its call with :class:`~hub.errors.FunctionFailedError`
and is replaced; the runner keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import typing
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from hub.errors import (
    CallCancelledError,
    CallTimeoutError,
    ConfigError,
    FunctionFailedError,
    NodeError,
    UnknownFunctionError,
)
from hub.progress import Progress
from node.config import ModuleConfig
from node.executors import (
    ProgressCallback,
    Relay,
    ThreadWorkers,
    WorkerSlot,
    child_call,
    start_worker,
)
from node.modules import BackendModule, FunctionSpec, one_line

__all__ = ["CancelSignal", "ProgressCallback", "Runner"]

log = structlog.get_logger(__name__)

#: How long a finished process call waits for its last progress reports to arrive.
_PROGRESS_DRAIN_SECONDS = 5.0
#: How long a cancelled async function gets to finish its cleanup.
_ASYNC_CANCEL_GRACE_SECONDS = 1.0


# --------------------------------------------------------------------------- runner


class _Lease:
    """One taken concurrency slot; released exactly once."""

    def __init__(self, state: _ModuleState) -> None:
        self._state = state
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            state = self._state
            state.in_flight -= 1
            if state.threads is None or not state.threads.grant():  # else: to a sync call
                state.semaphore.release()


class _ModuleState:
    def __init__(self, module: BackendModule, config: ModuleConfig) -> None:
        self.module = module
        self.config = config
        self.semaphore = asyncio.Semaphore(config.concurrency)
        self.in_flight = 0
        self.queued = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0
        self.rejected = 0
        self.threads: ThreadWorkers | None = None
        self.slots: asyncio.Queue[WorkerSlot | None] | None = None
        self.live_slots: set[WorkerSlot] = set()
        if config.executor == "thread":
            self.threads = ThreadWorkers(config.max_workers, module.name, self.semaphore.release)
        elif config.executor == "process":
            self.slots = asyncio.Queue()
            for _ in range(config.max_workers):
                self.slots.put_nowait(None)

    def stats(self) -> dict[str, int]:
        threads = self.threads
        return {
            "in_flight": self.in_flight + (threads.holding if threads is not None else 0),
            "queued": self.queued + (threads.queued if threads is not None else 0),
            "completed": self.completed,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "rejected": self.rejected,
        }


_Outcome = Literal["done", "timeout", "cancelled"]


class Runner:
    """Runs backend functions with limits, timeouts, cancellation and progress.

    Use as an async context manager; :meth:`aclose` is safe to call twice::

        async with Runner() as runner:
            config = ModuleConfig(name="climate", path="climate.py", executor="process")
            runner.add_module(load_module(config.path), config)
            total = await runner.run("climate", "scale", {"values": [1.0]}, timeout=10)
    """

    def __init__(self) -> None:
        self._states: dict[str, _ModuleState] = {}
        self._ids = itertools.count(1)
        self._closed = False

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def add_module(self, module: BackendModule, config: ModuleConfig | None = None) -> None:
        """Serve ``module`` under its name as ``config`` says (default: its defaults).

        ``config`` is the module's entry of the node config; its ``name`` must be the
        module's. Worker processes load the module from ``module.spec``.
        """
        if module.name in self._states:
            raise ConfigError(f"module {module.name!r} is already served by this runner")
        if config is None:
            config = ModuleConfig(name=module.name, path=module.spec)
        elif config.name != module.name:
            raise ConfigError(
                f"module {module.name!r} cannot run with the config of module {config.name!r}"
            )
        self._states[module.name] = _ModuleState(module, config)

    @property
    def modules(self) -> dict[str, BackendModule]:
        """The served modules by name."""
        return {name: state.module for name, state in self._states.items()}

    def function(self, module: str, function: str) -> FunctionSpec:
        """The spec of ``module.function``; :class:`~hub.errors.UnknownFunctionError` if none."""
        state = self._states.get(module)
        if state is None:
            raise UnknownFunctionError(f"module {module!r} is not served by this node")
        spec = state.module.functions.get(function)
        if spec is None:
            raise UnknownFunctionError(f"module {module!r} has no function {function!r}")
        return spec

    def stats(self) -> dict[str, dict[str, int]]:
        """Per module: in_flight, queued, completed, failed, timed_out, cancelled, rejected."""
        return {name: state.stats() for name, state in self._states.items()}

    async def aclose(self) -> None:
        """Stop all workers; threads still running finish on their own."""
        if self._closed:
            return
        self._closed = True
        for state in self._states.values():
            if state.threads is not None:
                state.threads.shutdown()
            slots, state.live_slots = state.live_slots, set()
            for slot in slots:
                if slot.calls:
                    slot.discard(kill=True)
                else:
                    await asyncio.to_thread(slot.close)

    async def run(
        self,
        module: str,
        function: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelSignal | None = None,
    ) -> object:
        """Validate ``kwargs``, run ``module.function`` and return its validated result.

        ``timeout`` counts from this call, queueing included. Raises ValidationError,
        UnknownFunctionError, NodeError (busy), CallTimeoutError, CallCancelledError or
        FunctionFailedError.
        """
        if self._closed:
            raise NodeError("the runner is closed")
        spec = self.function(module, function)
        state = self._states[module]
        arguments = spec.validate_arguments(kwargs)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        limits = _Limits(deadline, timeout, cancel)
        if cancel is not None and cancel.is_set():
            state.cancelled += 1
            raise CallCancelledError(f"{spec.qualified_name} was cancelled before it started")
        # sync calls on threads take or wait for their slot in the thread pool
        lease = None if threaded(spec, state) else await self._acquire(state, spec, limits)
        relay = Relay(loop, on_progress)
        try:
            if lease is None:
                value = await self._run_thread(state, spec, arguments, relay, limits)
            elif spec.is_async:
                value = await self._run_async(state, spec, arguments, relay, limits)
            elif state.config.executor == "inline":
                value = self._run_inline(state, spec, arguments, relay, limits)
            else:
                value = await self._run_process(state, spec, arguments, relay, limits)
            result = spec.validate_result(value)
        except CallTimeoutError:
            state.timed_out += 1
            raise
        except CallCancelledError:
            state.cancelled += 1
            raise
        except FunctionFailedError:
            state.failed += 1
            raise
        finally:
            relay.open = False
            if lease is not None:
                lease.release()
        state.completed += 1
        return result

    # -- slots

    async def _acquire(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        limits: _Limits,
    ) -> _Lease:
        semaphore = state.semaphore
        if semaphore.locked():
            queued = state.queued + (state.threads.queued if state.threads is not None else 0)
            if queued >= state.config.max_queue:
                state.rejected += 1
                raise NodeError(
                    f"module {state.module.name} is busy: {queued} calls queued",
                    hint="try again later, or raise max_queue or max_workers for this module",
                )
            state.queued += 1
            waiter = asyncio.ensure_future(semaphore.acquire())
            try:
                outcome = await _wait(waiter, limits)
            except asyncio.CancelledError:
                await _abandon_acquire(waiter, state)
                raise
            finally:
                state.queued -= 1
            if outcome != "done":
                await _abandon_acquire(waiter, state)
                if outcome == "timeout":
                    state.timed_out += 1
                    raise CallTimeoutError(
                        f"{spec.qualified_name} timed out after {limits.timeout:g} s while queued"
                    )
                state.cancelled += 1
                raise CallCancelledError(f"{spec.qualified_name} was cancelled while queued")
        else:
            await semaphore.acquire()
        state.in_flight += 1
        return _Lease(state)

    # -- execution

    async def _run_async(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: Relay,
        limits: _Limits,
    ) -> object:
        progress = Progress(relay.from_any_thread, min_interval=state.config.progress_interval)
        task: asyncio.Future[Any] = asyncio.ensure_future(
            typing.cast("Awaitable[Any]", spec.invoke(arguments, progress))
        )
        try:
            outcome = await _wait(task, limits)
        except asyncio.CancelledError:
            progress.cancel()
            task.cancel()
            raise
        if outcome != "done":
            progress.cancel()
            task.cancel()
            await asyncio.wait({task}, timeout=_ASYNC_CANCEL_GRACE_SECONDS)
            _consume(task)
            raise _interrupted(spec, outcome, limits.timeout)
        try:
            value = task.result()
        except asyncio.CancelledError as exc:
            raise CallCancelledError(f"{spec.qualified_name} cancelled itself") from exc
        except Exception as exc:
            raise _failed(spec, exc) from exc
        progress.flush()
        return value

    def _run_inline(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: Relay,
        limits: _Limits,
    ) -> object:
        """Call a sync function right here, on the loop (``executor = "inline"``).

        The loop is blocked while it runs, so no timer can cancel it: its ``progress``
        says ``cancelled`` once the deadline passed or the cancel signal is set."""
        clock = asyncio.get_running_loop().time

        def stop() -> bool:
            late = limits.deadline is not None and clock() > limits.deadline
            return late or (limits.cancel is not None and limits.cancel.is_set())

        progress = Progress(
            relay.from_any_thread, min_interval=state.config.progress_interval, stop_when=stop
        )
        try:
            value = _call_sync(spec, arguments, progress)
        except Exception as exc:
            raise _failed(spec, exc) from exc
        if limits.cancel is not None and limits.cancel.is_set():
            raise _interrupted(spec, "cancelled", limits.timeout)
        if limits.deadline is not None and asyncio.get_running_loop().time() > limits.deadline:
            raise _interrupted(spec, "timeout", limits.timeout)
        return value

    async def _run_thread(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: Relay,
        limits: _Limits,
    ) -> object:
        """A sync call on the module's threads. With no slot free it waits for one in the
        thread pool (up to ``max_queue`` calls wait, then the module is busy): a thread that
        ends a call hands its slot to the next there, with no turn of the loop between."""
        threads = state.threads
        assert threads is not None
        semaphore = state.semaphore
        slot = not semaphore.locked()
        if slot:
            await semaphore.acquire()  # free: returns at once
        else:
            queued = state.queued + threads.queued
            if queued >= state.config.max_queue:
                state.rejected += 1
                raise NodeError(
                    f"module {state.module.name} is busy: {queued} calls queued",
                    hint="try again later, or raise max_queue or max_workers for this module",
                )
        progress = Progress(relay.from_any_thread, min_interval=state.config.progress_interval)
        context = contextvars.copy_context()
        future = threads.submit(
            functools.partial(context.run, _call_sync, spec, arguments, progress), slot=slot
        )
        # the deadline and the cancel signal resolve the future themselves (the pool drops
        # an outcome whose future is done): one wake-up of this task, no helper future
        timer = stop = None
        if limits.deadline is not None:
            timer = asyncio.get_running_loop().call_at(
                limits.deadline, _interrupt, future, _TIMED_OUT
            )
        if limits.cancel is not None:
            stop = functools.partial(_interrupt, future, _CANCELLED)
            limits.cancel.add_callback(stop)
            if limits.cancel.is_set():
                stop()
        try:
            value = await future
        except asyncio.CancelledError:
            progress.cancel()
            threads.withdraw(future)
            raise
        except Exception as exc:
            raise _failed(spec, exc) from exc
        finally:
            if timer is not None:
                timer.cancel()
            if stop is not None and limits.cancel is not None:
                limits.cancel.remove_callback(stop)
        if value is _TIMED_OUT or value is _CANCELLED:
            outcome: _Outcome = "timeout" if value is _TIMED_OUT else "cancelled"
            if threads.withdraw(future):  # it never started
                if outcome == "timeout":
                    raise CallTimeoutError(
                        f"{spec.qualified_name} timed out after {limits.timeout:g} s while queued"
                    )
                raise CallCancelledError(f"{spec.qualified_name} was cancelled while queued")
            # The thread cannot be stopped: ask it to stop; it keeps its thread until it does.
            progress.cancel()
            raise _interrupted(spec, outcome, limits.timeout)
        return value

    async def _run_process(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: Relay,
        limits: _Limits,
    ) -> object:
        assert state.slots is not None
        slot = await state.slots.get()
        call_id = next(self._ids)
        try:
            if slot is None:
                slot = await start_worker(state.module, state.config.progress_interval)
                state.live_slots.add(slot)
            slot.calls[call_id] = relay
            future = asyncio.wrap_future(
                slot.executor.submit(child_call, call_id, spec.name, arguments)
            )
            future.add_done_callback(_consume)
            try:
                outcome = await _wait(future, limits)
            except asyncio.CancelledError:
                self._replace(state, slot, kill=True)
                slot = None
                raise
            if outcome != "done":
                log.warning("runner.worker_killed", function=spec.qualified_name, reason=outcome)
                self._replace(state, slot, kill=True)
                slot = None
                raise _interrupted(spec, outcome, limits.timeout)
            try:
                reply = future.result()
            except BrokenProcessPool as exc:
                self._replace(state, slot, kill=True)
                slot = None
                if self._closed:
                    raise CallCancelledError(
                        f"{spec.qualified_name} was interrupted by shutdown"
                    ) from exc
                log.error("runner.worker_died", function=spec.qualified_name)
                raise FunctionFailedError(
                    f"worker process died while running {spec.qualified_name}; "
                    "the worker was replaced"
                ) from exc
            except Exception as exc:
                raise FunctionFailedError(
                    f"{spec.qualified_name} could not exchange values with its worker "
                    f"process: {one_line(exc)}"
                ) from exc
            if reply[0] == "error":
                _, kind, message, trace = reply
                log.error(
                    "runner.function_failed",
                    function=spec.qualified_name,
                    error=kind,
                    traceback=trace,
                )
                raise FunctionFailedError(f"{spec.qualified_name} raised {kind}: {message}")
            if spec.takes_progress is not None:
                try:
                    async with asyncio.timeout(_PROGRESS_DRAIN_SECONDS):
                        await relay.done.wait()
                except TimeoutError:
                    log.warning("runner.progress_lost", function=spec.qualified_name)
            return reply[1]
        finally:
            if slot is not None:
                slot.calls.pop(call_id, None)
            state.slots.put_nowait(slot)

    def _replace(self, state: _ModuleState, slot: WorkerSlot, *, kill: bool) -> None:
        """Discard ``slot``; the next call starts a fresh worker in its place."""
        slot.discard(kill=kill)
        state.live_slots.discard(slot)
        log.info("runner.worker_replaced", module=state.module.name, pid=slot.pid)


# --------------------------------------------------------------------------- helpers


def threaded(spec: FunctionSpec, state: _ModuleState) -> bool:
    """Whether calls of ``spec`` run on the module's threads."""
    return state.threads is not None and not spec.is_async


@dataclass(frozen=True)
class _Limits:
    deadline: float | None
    timeout: float | None
    cancel: CancelSignal | None


class CancelSignal(asyncio.Event):
    """An :class:`asyncio.Event` that also calls back when set (no waiting task needed)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the signal is set."""
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        """Forget a callback (harmless when it already ran)."""
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


async def _wait(future: asyncio.Future[Any], limits: _Limits) -> _Outcome:
    """Wait for ``future`` until the deadline or cancellation; never cancels ``future``.

    One waker future, woken by the future itself, a timer at the deadline, or the cancel
    signal's callback: no helper task per call.
    """
    deadline, cancel = limits.deadline, limits.cancel
    if not future.done():
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()

        def wake(*_: object) -> None:
            if not waker.done():
                waker.set_result(None)

        future.add_done_callback(wake)
        timer = loop.call_at(deadline, wake) if deadline is not None else None
        if cancel is not None:
            cancel.add_callback(wake)
            if cancel.is_set():
                wake()
        try:
            await waker
        finally:
            future.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
            if cancel is not None:
                cancel.remove_callback(wake)
    if future.done():
        return "done"
    if cancel is not None and cancel.is_set():
        return "cancelled"
    return "timeout"


#: What a thread call's future holds when its deadline or cancel signal came first.
_TIMED_OUT = object()
_CANCELLED = object()


def _interrupt(future: asyncio.Future[Any], why: object) -> None:
    if not future.done():
        future.set_result(why)


async def _abandon_acquire(waiter: asyncio.Future[Any], state: _ModuleState) -> None:
    waiter.cancel()
    await asyncio.wait({waiter})
    taken = not waiter.cancelled() and waiter.exception() is None
    # a slot taken after all goes to a sync call waiting in the thread pool, if any
    if taken and (state.threads is None or not state.threads.grant()):
        state.semaphore.release()


def _consume(future: asyncio.Future[Any] | Future[Any]) -> None:
    """Mark a future's exception as retrieved (it is handled or deliberately dropped)."""
    if future.done() and not future.cancelled():
        future.exception()


def _interrupted(spec: FunctionSpec, outcome: _Outcome, timeout: float | None) -> Exception:
    if outcome == "timeout":
        return CallTimeoutError(f"{spec.qualified_name} timed out after {timeout:g} s")
    return CallCancelledError(f"{spec.qualified_name} was cancelled")


def _failed(spec: FunctionSpec, exc: BaseException) -> FunctionFailedError:
    log.error(
        "runner.function_failed",
        function=spec.qualified_name,
        error=type(exc).__name__,
        exc_info=exc,
    )
    return FunctionFailedError(
        f"{spec.qualified_name} raised {type(exc).__name__}: {one_line(exc).partition(': ')[2]}"
    )


def _call_sync(spec: FunctionSpec, arguments: dict[str, object], progress: Progress) -> object:
    try:
        return spec.invoke(arguments, progress)
    finally:
        progress.flush()
