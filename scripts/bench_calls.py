#!/usr/bin/env python3
"""Benchmark fedhub calls against raw NATS request/reply over the same federation path.

    python scripts/bench_calls.py [--calls 2000] [--concurrency 64] [--node both]
                                  [--peers] [--json] [--keep DIR] [--profile DIR]
                                  [--executor thread|inline|process] [--processes N]

One run, one machine, one topology: a hub and two site leaf servers (``hereon``,
``geomar``) started with :func:`hub.nats.start_local_federation`. The caller connects
to geomar's leaf; everything it calls lives behind hereon's leaf, so every message crosses
leaf -> hub -> leaf and back.

* baseline: raw nats-py request/reply, a responder subscribed on hereon's leaf (on a
  subject hereon's account exports, so the request crosses the hub's account boundary
  like a call), the requester on geomar's leaf, 100-byte payloads;
* fedhub: ``Client.call("hereon.bench.echo", x=<100 characters>)`` -- signed, encrypted,
  durable in hereon's JetStream call stream, logged in the node's signed event log,
  result stored encrypted in the Object Store -- served by one node connected to hereon's
  leaf.

Each is measured as median and p99 latency at concurrency 1 (sequential calls after a
warm-up) and calls/s at ``--concurrency`` (default 64) in flight. ``--node`` says where
the responder and the node run: ``process`` (their own process: the headline),
``inproc`` (the benchmark's own process and event loop) or ``both`` (the default). Every
fedhub figure is printed with the raw figure measured in the same run, the same way
(process vs process), and their ratio; ``--json`` prints all of them as one object.

Issue targets: median latency <= 3 x raw NATS request/reply over the same path; >= 2,000
calls/s on one node. They are reported as measured, never asserted.

``--peers``: the same workload through Celery with a Redis broker and result backend, when
``celery`` and ``redis`` are importable and ``redis-server`` is on PATH (none of them is a
dependency of fedhub; nothing is installed by this script).

``--executor`` sets how the node runs the echo (the module's executor: ``thread``, the
default, ``inline`` on the node's event loop, or ``process``); ``--processes N`` starts N
node processes on the same config, sharing the durable call consumer.

CPU time of every process (node, responder, client, nats-servers, Celery worker, Redis)
is sampled around each measured run and reported per call. ``--profile DIR`` runs the
node process under cProfile and writes ``DIR/node.prof`` (main thread only: the event
log's thread and the module's worker threads are not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors

from hub.canonical import b64e
from hub.client import Client
from hub.cliutil import configure_logging
from hub.clock import now
from hub.errors import CallTimeoutError, NotFoundError
from hub.keys import KeyPair, KeyStore
from hub.nats import LocalFederation, start_local_federation
from hub.records import KeyRecord, sign_record
from node.bootstrap import open_log
from node.config import NodeConfig, load_config
from node.daemon import NodeDaemon

SITE, CALLER_SITE = "hereon", "geomar"
CALLER = "klaus@geomar"
MODULE = "bench"
ADDRESS = f"{SITE}.{MODULE}.echo"
PAYLOAD = 100
# A subject hereon's account exports as a service (module info requests), so the raw
# request crosses geomar's leaf, the hub's account boundary and hereon's leaf like a call.
RAW_SUBJECT = f"fh.info.{SITE}.rawbench"
CALL_TIMEOUT = 30.0
TARGET_LATENCY_RATIO = 3.0
RAW_PROCESS = "raw nats-py request/reply, responder in its own process"
RAW_INPROC = "raw nats-py request/reply, responder in the benchmark's process"
TARGET_CALLS_PER_S = 2000.0

MODULE_SOURCE = '''"""A trivial module for the call benchmark."""


def echo(x: str) -> str:
    """Return ``x`` unchanged.

    Parameters
    ----------
    x
        Any text.
    """
    return x
'''

CELERY_SOURCE = '''"""Celery app of the call benchmark: the same trivial function."""
import os

from celery import Celery

app = Celery("bench_calls", broker=os.environ["BENCH_REDIS_URL"],
             backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)


@app.task
def echo(x):
    return x
'''


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


# --- measuring --------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run: latencies of the calls that finished, and its wall time."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

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

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "calls": self.count,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.per_second, 1),
            "median_ms": round(self.quantile(0.5) * 1e3, 3),
            "p99_ms": round(self.quantile(0.99) * 1e3, 3),
        }
        if self.cpu:
            out["cpu_us_per_call"] = {
                k: round(v * 1e6 / max(1, self.count), 1) for k, v in self.cpu.items()
            }
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

    before = cpu.sample() if cpu else {}
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - started
    STOP.check()
    if cpu:
        after = cpu.sample()
        run.cpu = {k: after[k] - before[k] for k in after if k in before}
    return run


async def warm_up(call: Callable[[], Awaitable[object]], count: int) -> None:
    """A few sequential and concurrent calls: connections, caches, JIT-free Python paths."""
    for _ in range(count):
        STOP.check()
        await call()
    await asyncio.gather(*(call() for _ in range(min(64, count))))
    STOP.check()


class CpuMeter:
    """CPU seconds (user + system) of named processes, from /proc (Linux)."""

    def __init__(self, this_process: str = "client") -> None:
        self.this_process = this_process
        self.pids: dict[str, list[int]] = {}
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def add(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self.pids.setdefault(name, []).append(pid)

    def _proc_seconds(self, pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick

    def sample(self) -> dict[str, float]:
        out = {self.this_process: time.process_time()}
        for name, pids in self.pids.items():
            values = [self._proc_seconds(p) for p in pids]
            if all(v is not None for v in values):
                out[name] = sum(v for v in values if v is not None)
        return out


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


# --- raw NATS baseline ------------------------------------------------------------------


async def serve_raw(url: str, subject: str) -> None:
    """The raw responder (``--serve-raw``): echo every request until stdin closes."""
    nc = await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.drain()


async def bench_raw(
    fed: LocalFederation, procs: Processes, opts: argparse.Namespace, *, in_process: bool
) -> dict[str, Run]:
    """Raw nats-py request/reply from geomar's leaf to a responder on hereon's leaf."""
    subject = f"{RAW_SUBJECT}.{secrets.token_hex(4)}"
    responder: subprocess.Popen[bytes] | None = None
    local: Any = None
    cpu = CpuMeter("requester+responder" if in_process else "requester")
    if in_process:
        local = await nats.connect(fed.site_url(SITE))

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await local.subscribe(subject, cb=echo)
        await local.flush()
    else:
        responder = procs.start(
            [sys.executable, __file__, "--serve-raw", fed.site_url(SITE), subject],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert responder.stdout is not None
        line = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, responder.stdout.readline), 20
        )
        if line.strip() != b"ready":
            raise RuntimeError("raw responder did not start")
        cpu.add("responder", responder.pid)
    for name, server in [("nats", fed.hub), *(("nats", s) for s in fed.leaves.values())]:
        cpu.add(name, server.pid)
    nc = await nats.connect(fed.site_url(CALLER_SITE))
    payload = os.urandom(PAYLOAD)
    try:
        async with asyncio.timeout(20):  # interest has to cross leaf -> hub -> leaf
            while True:
                STOP.check()
                try:
                    await nc.request(subject, payload, timeout=0.5)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.05)

        async def call() -> object:
            return await nc.request(subject, payload, timeout=CALL_TIMEOUT)

        await warm_up(call, opts.warmup)
        seq = await measure(
            call, count=opts.calls, concurrency=1, max_seconds=opts.max_seconds, cpu=cpu
        )
        conc = await measure(
            call,
            count=max(opts.calls, opts.concurrency * 200),
            concurrency=opts.concurrency,
            max_seconds=opts.max_seconds,
            cpu=cpu,
        )
        return {"seq": seq, "conc": conc}
    finally:
        await nc.close()
        if local is not None:
            await local.close()
        if responder is not None:
            assert responder.stdin is not None
            with contextlib.suppress(OSError):
                responder.stdin.close()
            await asyncio.to_thread(Processes.stop, responder)


# --- fedhub -----------------------------------------------------------------------------


def write_node_config(root: Path, fed: LocalFederation, executor: str = "thread") -> NodeConfig:
    """Keys, the caller's vouched record, the module file, the node config; ``init``."""
    store = KeyStore(root / "keys")
    pairs: dict[str, KeyPair] = {}
    for ident in (f"site:{SITE}", f"site:{CALLER_SITE}", CALLER):
        pairs[ident] = store.load(ident) if store.exists(ident) else store.create(ident)
    klaus = pairs[CALLER]
    record = KeyRecord(
        identity=CALLER,
        role="user",
        site=CALLER_SITE,
        kid=klaus.kid,
        sign_key=b64e(klaus.sign_public),
        box_key=b64e(klaus.box_public),
        valid_from=now(),
    )
    signed = sign_record(record, pairs[f"site:{CALLER_SITE}"].signing_key)
    (root / "klaus.json").write_text(json.dumps(signed.model_dump()))
    (root / "bench_module.py").write_text(MODULE_SOURCE)
    trust_key = store.dir / "site%3Ageomar.pub"
    lines = [
        f"users = {json.dumps([str(root / 'klaus.json')])}",
        "[node]",
        f'site = "{SITE}"',
        'name = "n1"',
        f"data_dir = {json.dumps(str(root / 'node'))}",
        f"key_home = {json.dumps(str(store.home))}",
        "[nats]",
        f"url = {json.dumps(fed.site_url(SITE))}",
        "[log]",
        'level = "warning"',
        "[[modules]]",
        f'name = "{MODULE}"',
        f"path = {json.dumps(str(root / 'bench_module.py'))}",
        f"executor = {json.dumps(executor)}",
        "[[grants]]",
        f'principal = "{CALLER}"',
        f'module = "{MODULE}"',
        'functions = ["echo"]',
        "[[trust]]",
        f'site = "{CALLER_SITE}"',
        f"key = {json.dumps(str(trust_key))}",
    ]
    path = root / "hereon-n1.toml"
    path.write_text("\n".join(lines) + "\n")
    cfg = load_config(path)
    open_log(cfg, create=True).close()
    return cfg


async def spawn_node(
    cfg: NodeConfig, procs: Processes, profile: Path | None, instance: int = 1
) -> subprocess.Popen[bytes]:
    """``fedhub-node run`` in its own process; return once its status file appears.

    ``instance`` n > 1: a further process of the same node (same config, same durable
    consumer, its own log ``#n``), started after the first.
    """
    assert cfg.source is not None and cfg.node.key_home is not None
    status = cfg.node.data_dir / ("status.json" if instance == 1 else f"status.{instance}.json")
    with contextlib.suppress(FileNotFoundError):
        status.unlink()
    cfg.node.data_dir.mkdir(parents=True, exist_ok=True)
    prefix = [sys.executable]
    if profile is not None and instance == 1:
        prefix += ["-m", "cProfile", "-o", str(profile / "node.prof")]
    with (cfg.node.data_dir / "node.out").open("ab") as out:
        proc = procs.start(
            [*prefix, "-m", "node.cli", "run", "--config", str(cfg.source), "--grace", "5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FEDHUB_HOME": str(cfg.node.key_home)},
        )
    async with asyncio.timeout(30):
        while not status.exists():
            if proc.poll() is not None:
                tail = (cfg.node.data_dir / "node.out").read_text()[-2000:]
                raise RuntimeError(f"node exited with {proc.returncode}: {tail}")
            await asyncio.sleep(0.05)
    return proc


async def bench_fedhub(
    fed: LocalFederation,
    cfg: NodeConfig,
    procs: Processes,
    opts: argparse.Namespace,
    *,
    in_process: bool,
) -> dict[str, Run]:
    """``Client.call`` from geomar's leaf to a node serving hereon's leaf."""
    assert cfg.node.key_home is not None
    cpu = CpuMeter("client+node" if in_process else "client")
    for server in [fed.hub, *fed.leaves.values()]:
        cpu.add("nats", server.pid)
    async with contextlib.AsyncExitStack() as stack:
        if in_process:
            await stack.enter_async_context(NodeDaemon(cfg, grace=5))
        else:
            for instance in range(1, opts.processes + 1):
                proc = await spawn_node(cfg, procs, opts.profile, instance)
                cpu.add("node", proc.pid)
                stack.callback(Processes.stop, proc)
        client = await Client.connect(
            fed.site_url(CALLER_SITE), CALLER, home=cfg.node.key_home, default_timeout=60
        )
        stack.push_async_callback(client.aclose)
        text = "x" * PAYLOAD

        async def call() -> object:
            return await client.call(ADDRESS, x=text, timeout=CALL_TIMEOUT)

        async with asyncio.timeout(30):  # the info request crosses the hub too
            while True:
                STOP.check()
                try:
                    answer = await call()
                except (NotFoundError, CallTimeoutError):
                    await asyncio.sleep(0.1)
                    continue
                if answer != text:
                    raise RuntimeError(f"echo returned {answer!r}")
                break
        await warm_up(call, opts.warmup)
        seq = await measure(
            call, count=opts.calls, concurrency=1, max_seconds=opts.max_seconds, cpu=cpu
        )
        conc = await measure(
            call,
            count=max(opts.calls, opts.concurrency * 20),
            concurrency=opts.concurrency,
            max_seconds=opts.max_seconds,
            cpu=cpu,
        )
        return {"seq": seq, "conc": conc}
    raise AssertionError("unreachable")


# --- Celery peer ------------------------------------------------------------------------


def peer_missing() -> str | None:
    """Why the Celery + Redis peer cannot run here, or None."""
    missing = [m for m in ("celery", "redis") if importlib.util.find_spec(m) is None]
    if missing:
        return f"Python package(s) not installed: {', '.join(missing)}"
    if shutil.which("redis-server") is None:
        return "no redis-server binary on PATH"
    return None


def bench_celery(root: Path, procs: Processes, opts: argparse.Namespace) -> dict[str, Run]:
    """The same echo through Celery (prefork worker, stock concurrency) and Redis."""
    folder = root / "celery"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    redis = procs.start(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (folder / "bench_celery_app.py").write_text(CELERY_SOURCE)
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(folder)}
    os.environ["BENCH_REDIS_URL"] = redis_url
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or redis.poll() is not None:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    with (folder / "worker.out").open("ab") as out:
        worker = procs.start(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench_celery_app",
                "worker",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sys.path.insert(0, str(folder))
    try:
        app_module = importlib.import_module("bench_celery_app")
        echo = app_module.echo
        text = "x" * PAYLOAD
        if echo.delay(text).get(timeout=60) != text:
            raise RuntimeError("celery echo returned something else")
        for _ in range(opts.warmup):
            STOP.check()
            echo.delay(text).get(timeout=CALL_TIMEOUT)
        cpu = CpuMeter()
        cpu.add("redis", redis.pid)
        cpu.add("worker", worker.pid)
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
            for child in children:
                cpu.add("worker", int(child))
        seq = Run(1)
        before = cpu.sample()
        started = time.perf_counter()
        stop_at = started + opts.max_seconds
        for _ in range(opts.calls):
            STOP.check()
            if time.perf_counter() > stop_at:
                break
            t0 = time.perf_counter()
            echo.delay(text).get(timeout=CALL_TIMEOUT)
            seq.latencies.append(time.perf_counter() - t0)
        seq.seconds = time.perf_counter() - started
        after = cpu.sample()
        seq.cpu = {k: after[k] - before[k] for k in after if k in before}
        # Concurrency: a window of `concurrency` tasks in flight, oldest collected first
        # (Celery's result consumer is not meant to be shared by threads).
        conc = Run(opts.concurrency)
        total = max(opts.calls, opts.concurrency * 20)
        window: list[tuple[float, Any]] = []
        before = cpu.sample()
        started = time.perf_counter()
        stop_at = started + opts.max_seconds
        sent = 0
        while sent < total or window:
            STOP.check()
            while sent < total and len(window) < opts.concurrency and time.perf_counter() < stop_at:
                window.append((time.perf_counter(), echo.delay(text)))
                sent += 1
            if not window:
                break
            t0, res = window.pop(0)
            try:
                res.get(timeout=CALL_TIMEOUT)
                conc.latencies.append(time.perf_counter() - t0)
            except Exception:
                conc.errors += 1
            if time.perf_counter() >= stop_at:
                total = sent
        conc.seconds = time.perf_counter() - started
        after = cpu.sample()
        conc.cpu = {k: after[k] - before[k] for k in after if k in before}
        app_module.app.close()
        return {"seq": seq, "conc": conc}
    finally:
        sys.path.remove(str(folder))
        Processes.stop(worker, timeout=15)
        Processes.stop(redis, timeout=10)


# --- report -----------------------------------------------------------------------------


def figure(value: float, baseline: float, baseline_name: str, unit: str) -> dict[str, Any]:
    return {
        "value": round(value, 3),
        "unit": unit,
        "baseline": baseline_name,
        "baseline_value": round(baseline, 3),
        "ratio": round(value / baseline, 3) if baseline else None,
    }


def _cpu_total(run: Run) -> float:
    return sum(run.cpu.values()) / max(1, run.count) * 1e6


def compare(ours: dict[str, Run], base: dict[str, Run], what: str, c: int) -> dict[str, Any]:
    """Each figure of ``ours`` against the figure of ``base`` measured the same way."""
    s, k, bs, bk = ours["seq"], ours["conc"], base["seq"], base["conc"]
    return {
        "latency_median_ms": figure(s.quantile(0.5) * 1e3, bs.quantile(0.5) * 1e3, what, "ms"),
        "latency_p99_ms": figure(s.quantile(0.99) * 1e3, bs.quantile(0.99) * 1e3, what, "ms"),
        "calls_per_s": figure(k.per_second, bk.per_second, what, "1/s"),
        f"latency_median_ms_at_{c}": figure(
            k.quantile(0.5) * 1e3, bk.quantile(0.5) * 1e3, what, "ms"
        ),
        f"cpu_us_per_call_at_{c}": figure(_cpu_total(k), _cpu_total(bk), what, "us"),
        "runs": {"seq": s.summary(), "conc": k.summary()},
        "baseline_runs": {"seq": bs.summary(), "conc": bk.summary()},
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    ratio = result["latency_median_ms"]["ratio"]
    rate = result["calls_per_s"]["value"]
    return {
        "median_latency_le_3x_raw": {
            "target": f"<= {TARGET_LATENCY_RATIO:g} x raw",
            "measured": ratio,
            "met": ratio is not None and ratio <= TARGET_LATENCY_RATIO,
        },
        "calls_per_s_ge_2000": {
            "target": f">= {TARGET_CALLS_PER_S:,.0f} calls/s",
            "measured": rate,
            "met": rate >= TARGET_CALLS_PER_S,
        },
    }


def _print_block(title: str, res: dict[str, Any], c: int, base: str) -> None:
    print(title)
    for key, label in (
        ("latency_median_ms", "median latency, 1 in flight"),
        ("latency_p99_ms", "p99 latency, 1 in flight"),
        (f"latency_median_ms_at_{c}", f"median latency, {c} in flight"),
        ("calls_per_s", f"calls/s, {c} in flight"),
        (f"cpu_us_per_call_at_{c}", f"CPU per call, {c} in flight"),
    ):
        f = res[key]
        unit = {"ms": "ms", "1/s": "/s", "us": "µs"}[f["unit"]]
        value = f"{f['value']:,.3f}" if unit == "ms" else f"{f['value']:,.0f}"
        baseline = f"{f['baseline_value']:,.3f}" if unit == "ms" else f"{f['baseline_value']:,.0f}"
        print(
            f"  {label:30} {value:>10} {unit:2}   x{f['ratio']:<7.3f} of {base} {baseline} {unit}"
        )
    for phase, label in (("seq", "1 in flight"), ("conc", f"{c} in flight")):
        cpu = res["runs"][phase].get("cpu_us_per_call")
        if cpu:
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items())
            print(f"  {'CPU µs per call, ' + label:30} {parts}")


def print_report(report: dict[str, Any]) -> None:
    c = report["concurrency"]
    m = report["machine"]
    print(
        f"machine: {m['cores']} cores, load average {m['load_average_before']} before, "
        f"{m['load_average_after']} after; {report['calls']} calls per run, {c} in flight, "
        f"{report['payload_bytes']} B payload; module executor {report['executor']}, "
        f"{report['node_processes']} node process(es)"
    )
    for mode, raw in report["raw"].items():
        s, k = raw["seq"], raw["conc"]
        where = "responder in its own process" if mode == "process" else "responder in-process"
        print(
            f"raw NATS request/reply, {where}: median {s['median_ms']:.3f} ms, "
            f"p99 {s['p99_ms']:.3f} ms, {k['per_s']:,.0f} req/s at {c}"
        )
    for mode, res in report["fedhub"].items():
        where = "node in its own process" if mode == "process" else "node in-process"
        _print_block(f"fedhub call, {where}:", res, c, "raw")
        for name, t in res["targets"].items():
            verdict = "met" if t["met"] else "NOT met"
            print(f"  target {name:26} {t['target']:>18}: {t['measured']:,} -> {verdict}")
    for name, peer in report.get("peers", {}).items():
        if "skipped" in peer:
            print(f"peer {name}: skipped ({peer['skipped']})")
            continue
        _print_block(f"peer {name} (worker in its own process):", peer, c, "raw")
        ours = peer["fedhub_vs_peer"]
        print(
            "  fedhub / peer: "
            + ", ".join(f"{k} x{v:.3f}" for k, v in ours.items() if v is not None)
        )


# --- main -------------------------------------------------------------------------------


async def bench_all(root: Path, procs: Processes, opts: argparse.Namespace) -> dict[str, Any]:
    STOP.loop, STOP.task = asyncio.get_running_loop(), asyncio.current_task()
    try:
        return await _bench_all(root, procs, opts)
    except asyncio.CancelledError:
        if STOP.requested:
            raise Interrupted from None
        raise
    finally:
        STOP.loop = STOP.task = None


async def _bench_all(root: Path, procs: Processes, opts: argparse.Namespace) -> dict[str, Any]:
    modes = ["process", "inproc"] if opts.node == "both" else [opts.node]
    fed = await start_local_federation(root / "nats", (SITE, CALLER_SITE))
    try:
        raw: dict[str, dict[str, Run]] = {}
        ours: dict[str, dict[str, Run]] = {}
        cfg = write_node_config(root, fed, opts.executor)
        for mode in modes:
            say(f"raw NATS request/reply, responder {mode} ...")
            raw[mode] = await bench_raw(fed, procs, opts, in_process=mode == "inproc")
            say(f"fedhub calls, node {mode} ...")
            ours[mode] = await bench_fedhub(fed, cfg, procs, opts, in_process=mode == "inproc")
    finally:
        await fed.stop()
    c = opts.concurrency
    report: dict[str, Any] = {
        "raw": {mode: {k: r.summary() for k, r in runs.items()} for mode, runs in raw.items()},
        "fedhub": {},
    }
    for mode in modes:
        what = RAW_PROCESS if mode == "process" else RAW_INPROC
        res = compare(ours[mode], raw[mode], what, c)
        res["targets"] = targets(res)
        report["fedhub"][mode] = res
    report["_raw_runs"] = raw
    report["_ours"] = ours
    return report


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measured run")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls per run")
    parser.add_argument(
        "--max-seconds", type=float, default=15.0, help="stop a measured run after this long"
    )
    parser.add_argument(
        "--node",
        choices=["process", "inproc", "both"],
        default="both",
        help="run the node (and the raw responder) in its own process, in-process, or both",
    )
    parser.add_argument("--peers", action="store_true", help="also measure Celery + Redis")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    parser.add_argument("--profile", type=Path, help="write node.prof (cProfile) here")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="node processes sharing the call consumer (with --node process; default 1)",
    )
    parser.add_argument(
        "--executor",
        choices=["thread", "inline", "process"],
        default="thread",
        help="how the node runs the echo function (the module's executor; default thread)",
    )
    parser.add_argument("--serve-raw", nargs=2, metavar=("URL", "SUBJECT"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve_raw:
        asyncio.run(serve_raw(*opts.serve_raw))
        return 0
    if opts.calls < 1 or opts.concurrency < 1:
        parser.error("--calls and --concurrency must be at least 1")
    if opts.keep and opts.keep.exists() and any(opts.keep.iterdir()):
        parser.error(f"--keep {opts.keep}: give a new or empty folder")
    configure_logging(level="warning")
    load_before = round(os.getloadavg()[0], 2)
    procs = Processes()
    if opts.profile:
        opts.profile.mkdir(parents=True, exist_ok=True)
    if opts.keep:
        opts.keep.mkdir(parents=True, exist_ok=True)
        root = opts.keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="fedhub-bench-calls-"))
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, STOP.handler)
        report = asyncio.run(bench_all(root, procs, opts))
        raw_runs: dict[str, dict[str, Run]] = report.pop("_raw_runs")
        ours: dict[str, dict[str, Run]] = report.pop("_ours")
        headline = "process" if "process" in ours else next(iter(ours))
        if opts.peers:
            why = peer_missing()
            if why is not None:
                report["peers"] = {"celery_redis": {"skipped": why}}
            else:
                say("Celery + Redis ...")
                runs = bench_celery(root, procs, opts)
                base = RAW_PROCESS if headline == "process" else RAW_INPROC
                peer = compare(runs, raw_runs[headline], base, opts.concurrency)
                mine = compare(ours[headline], runs, "celery", opts.concurrency)
                peer["fedhub_vs_peer"] = {
                    k: mine[k]["ratio"]
                    for k in ("latency_median_ms", "latency_p99_ms", "calls_per_s")
                }
                report["peers"] = {"celery_redis": peer}
    finally:
        procs.stop_all()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "machine": {
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
        },
        "calls": opts.calls,
        "concurrency": opts.concurrency,
        "payload_bytes": PAYLOAD,
        "executor": opts.executor,
        "node_processes": opts.processes,
        "headline": headline,
        "targets": report["fedhub"][headline]["targets"],
        **report,
    }
    if opts.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Interrupted, KeyboardInterrupt):
        print("interrupted; every server and process this run started is stopped", file=sys.stderr)
        sys.exit(130)
