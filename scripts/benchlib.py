"""What the call benchmarks share: stopping on Ctrl-C, measured runs, CPU and load, processes.

Used by ``bench_calls.py`` and the modules it runs (``bench_baselines.py``,
``bench_peers.py``); not part of fedhub.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SITE, CALLER_SITE = "hereon", "geomar"
PAYLOAD = 100
CALL_TIMEOUT = 30.0


# --- stopping on Ctrl-C ------------------------------------------------------------------


class Interrupted(Exception):  # noqa: N818 - the user asked to stop; not an error of ours
    """SIGINT or SIGTERM: stop measuring, clean up, exit 130."""


class _Stop:
    """Signal handling that survives libraries which swallow a cancellation.

    A signal sets a flag that every measuring loop checks, and cancels the running
    benchmark task (async phases) or raises KeyboardInterrupt (the synchronous Celery
    phase). Python 3.11's ``asyncio.wait_for`` can lose a cancellation that races with a
    reply, so the flag, not the cancellation, is what ends a run for sure.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None

    def handler(self, signum: int, frame: object) -> None:
        first = not self.event.is_set()
        self.event.set()
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        elif first:
            raise KeyboardInterrupt

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise Interrupted


STOP = _Stop()
_STARTED = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr (stdout carries the report)."""
    print(f"[{time.monotonic() - _STARTED:5.1f} s] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``, else ``os.getloadavg``)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return [round(x, 2) for x in os.getloadavg()]


# --- measuring --------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run: latencies of the calls that finished, its wall time, the CPU
    seconds of each process meanwhile and the load average at its start and end."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    load_start: list[float] = field(default_factory=list)
    load_end: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile of the latencies, in seconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def cpu_us(self, *names: str) -> float | None:
        """CPU µs per finished call of the named processes (None if one was not sampled)."""
        if not names or any(n not in self.cpu for n in names):
            return None
        return sum(self.cpu[n] for n in names) * 1e6 / max(1, self.count)

    @property
    def load(self) -> dict[str, list[float]]:
        return {"start": self.load_start, "end": self.load_end}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "calls": self.count,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.per_second, 1),
            "median_ms": round(self.quantile(0.5) * 1e3, 3),
            "p99_ms": round(self.quantile(0.99) * 1e3, 3),
            "load_average": self.load,
        }
        if self.cpu:
            out["cpu_us_per_call"] = {k: round(self.cpu_us(k) or 0.0, 1) for k in self.cpu}
        return out


async def measure(
    call: Callable[[], Awaitable[object]],
    *,
    count: int,
    concurrency: int,
    max_seconds: float,
    cpu: CpuMeter | None = None,
) -> Run:
    """Run ``count`` calls, ``concurrency`` in flight, stopping early after ``max_seconds``."""
    run = Run(concurrency)
    left = count
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds

    async def worker() -> None:
        nonlocal left
        while left > 0 and loop.time() < deadline and not STOP.requested:
            left -= 1
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:  # counted, not fatal: the figure says how many failed
                run.errors += 1
                continue
            run.latencies.append(time.perf_counter() - t0)

    run.load_start = load_average()
    before = cpu.sample() if cpu else {}
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - started
    STOP.check()
    if cpu:
        after = cpu.sample()
        run.cpu = {k: after[k] - before[k] for k in after if k in before}
    run.load_end = load_average()
    return run


async def node_started(
    proc: subprocess.Popen[bytes], status: Path, output: Path, within: float = 30.0
) -> None:
    """Wait until the node process ``proc`` has written its ``status`` file (it serves);
    RuntimeError with the tail of its ``output`` when it exits first."""
    async with asyncio.timeout(within):
        while not await asyncio.to_thread(status.exists):
            if proc.poll() is not None:
                tail = (await asyncio.to_thread(output.read_text))[-2000:]
                raise RuntimeError(f"node exited with {proc.returncode}: {tail}")
            await asyncio.sleep(0.05)


async def first_call(call: Callable[[], Awaitable[object]], within: float = 30.0) -> None:
    """Call until one call succeeds: the first waits for the node's consumer."""
    async with asyncio.timeout(within):
        while True:
            try:
                await call()
                return
            except Exception:  # not ready yet: try again
                await asyncio.sleep(0.1)


async def warm_up(call: Callable[[], Awaitable[object]], count: int) -> None:
    """A few sequential and concurrent calls: connections, caches, JIT-free Python paths."""
    for _ in range(count):
        STOP.check()
        await call()
    await asyncio.gather(*(call() for _ in range(min(64, count))))
    STOP.check()


class CpuMeter:
    """CPU seconds (user + system) of named processes, from /proc (Linux).

    A named process counts with every process it started (e.g. the event log's signing
    workers): those alive are read directly, those that ended and were reaped are in its
    children's times. ``this_process`` is this process alone (``time.process_time``).
    """

    def __init__(self, this_process: str = "client") -> None:
        self.this_process = this_process
        self.pids: dict[str, list[int]] = {}
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def add(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self.pids.setdefault(name, []).append(pid)

    def _proc_seconds(self, pid: int) -> float | None:
        """utime + stime + cutime + cstime of ``pid`` (None if it is gone)."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return sum(int(x) for x in fields[11:15]) / self.tick

    @staticmethod
    def _children(pid: int) -> list[int]:
        out: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    out += [int(c) for c in (task / "children").read_text().split()]
        return out

    def _tree_seconds(self, pid: int) -> float | None:
        total = self._proc_seconds(pid)
        if total is None:
            return None
        todo, seen = self._children(pid), {pid}
        while todo:
            child = todo.pop()
            if child in seen:
                continue
            seen.add(child)
            total += self._proc_seconds(child) or 0.0
            todo += self._children(child)
        return total

    def sample(self) -> dict[str, float]:
        out = {self.this_process: time.process_time()}
        for name, pids in self.pids.items():
            values = [self._tree_seconds(p) for p in pids]
            if all(v is not None for v in values):
                out[name] = sum(v for v in values if v is not None)
        return out


@dataclass
class LogGrowth:
    """What the node's event log(s) grew by over some calls."""

    calls: int
    bytes: int
    db_bytes: int
    file_bytes: int
    events: int
    commits: int = 0  # commits (signed events, log v2) of the run at N in flight only

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "bytes": self.bytes,
            "db_bytes": self.db_bytes,
            "file_bytes_db_and_wal": self.file_bytes,
            "events": self.events,
            "commits": self.commits,
        }


# --- processes --------------------------------------------------------------------------


class Processes:
    """Every process this benchmark starts, stopped in reverse order however it ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, **kwargs)
        proc.own_group = bool(kwargs.get("start_new_session"))  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL; to its whole group when it was started in a session.

        The group is signalled only while its leader is not yet reaped, so the id is ours.
        """
        if proc.returncode is not None:
            return proc.returncode
        group = getattr(proc, "own_group", False)

        def send(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)

        send(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout=5)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=10)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- figures ----------------------------------------------------------------------------


def figure(
    value: float | None,
    unit: str,
    baseline: str | None,
    baseline_value: float | None,
    *,
    target: str | None = None,
    met: bool | None = None,
    load: dict[str, list[float]] | None = None,
    baseline_load: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """One figure next to its baseline: ``{figure, baseline, ratio}`` plus the target, whether
    it is met and the load average at the start and end of the runs it comes from."""

    def rounded(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else round(x, 3)

    ratio = None
    if value is not None and baseline_value and not math.isnan(value / baseline_value):
        ratio = round(value / baseline_value, 3)
    return {
        "figure": {"value": rounded(value), "unit": unit, "load_average": load},
        "baseline": None
        if baseline is None
        else {
            "name": baseline,
            "value": rounded(baseline_value),
            "unit": unit,
            "load_average": baseline_load,
        },
        "ratio": ratio,
        "target": target,
        "met": met,
    }
