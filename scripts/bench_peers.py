"""The Celery + Redis peer of the call benchmark: the same trivial function, the same runs.

Runs when ``celery`` and ``redis`` are importable and ``redis-server`` is on PATH (none of
them is a dependency of fedhub; nothing is installed by this module).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import CALL_TIMEOUT, PAYLOAD, STOP, CpuMeter, Processes, Run, free_port, load_average

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
        cpu.add("worker", worker.pid)  # with its prefork children
        seq = Run(1)
        seq.load_start = load_average()
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
        seq.load_end = load_average()
        seq.cpu = {k: after[k] - before[k] for k in after if k in before}
        # Concurrency: a window of `concurrency` tasks in flight, oldest collected first
        # (Celery's result consumer is not meant to be shared by threads).
        conc = Run(opts.concurrency)
        total = max(opts.calls, opts.concurrency * 20)
        window: list[tuple[float, Any]] = []
        conc.load_start = load_average()
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
        conc.load_end = load_average()
        conc.cpu = {k: after[k] - before[k] for k in after if k in before}
        app_module.app.close()
        return {"seq": seq, "conc": conc}
    finally:
        sys.path.remove(str(folder))
        Processes.stop(worker, timeout=15)
        Processes.stop(redis, timeout=10)
