#!/usr/bin/env python3
"""Where one call's time goes at 1 in flight: timestamps along the path, client and node.

    python scripts/bench_timeline.py [--calls 200] [--executor thread|inline] [--json]

The topology of ``bench_calls.py`` (a hub and two site leaf servers; the caller on
geomar's leaf, the node on hereon's, in its own process). Both processes mark each step
of a call with ``time.perf_counter()`` (the system's monotonic clock on Linux, so the two
processes' marks compare) through hooks wrapped around the functions that do the step;
sequential calls with a pause after each (the result store and the ack, which follow the
reply, settle before the next call). Prints, per step, the median time from the start of
``Client.call`` and the median time since the step before, with the load average: on a
busy machine every step stretches, so read the shares, not the milliseconds.

The hooks wrap private functions of fedhub and nats-py: a step whose function is renamed
is missing from the table (the script says which), nothing else breaks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_calls import ADDRESS, CALLER, write_node_config
from benchlib import (
    CALLER_SITE,
    PAYLOAD,
    SITE,
    Processes,
    first_call,
    load_average,
    node_started,
    say,
)

from hub.client import Client
from hub.cliutil import configure_logging
from hub.nats import start_local_federation

_SCRIPTS = str(Path(__file__).resolve().parent)
#: (step, seconds) as marked in this process.
MARKS: list[tuple[str, float]] = []
MISSING: list[str] = []


def _mark(name: str) -> None:
    MARKS.append((name, time.perf_counter()))


def _hook(owner: Any, attr: str, before: str | None, after: str | None = None) -> None:
    """Mark ``before`` when ``owner.attr`` is called and ``after`` when it returns."""
    orig = getattr(owner, attr, None)
    if orig is None:
        MISSING.append(f"{getattr(owner, '__name__', owner)}.{attr}")
        return
    if asyncio.iscoroutinefunction(orig):

        @functools.wraps(orig)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            if before:
                _mark(before)
            result = await orig(*args, **kwargs)
            if after:
                _mark(after)
            return result

        setattr(owner, attr, wrapped_async)
        return

    @functools.wraps(orig)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before:
            _mark(before)
        result = orig(*args, **kwargs)
        if after:
            _mark(after)
        return result

    setattr(owner, attr, wrapped)


def install_node_hooks() -> None:
    """Marks in the node process (called by the node's wrapper, see :data:`_NODE`)."""
    import nats.aio.client

    from node import consumer, dispatch, executors, logwriter, pipeline, replies, runner

    _hook(nats.aio.client.Client, "_process_msg", "node: a message parsed")
    _hook(consumer.CallConsumer, "_on_msg", "node: consumer has the call")
    _hook(dispatch.Dispatcher, "_take_burst", "node: burst taken")
    _hook(pipeline.Pipeline, "_open_all", "node: verify", "node: verified")
    orig_append: Callable[..., Any] = logwriter.LogWriter.append

    async def append(self: Any, *events: Any, **kwargs: Any) -> Any:
        kind = events[0].type if events else "?"
        _mark(f"node: log {kind}")
        stored = await orig_append(self, *events, **kwargs)
        _mark(f"node: log {kind} committed")
        return stored

    logwriter.LogWriter.append = append  # type: ignore[method-assign]
    _hook(runner.Runner, "run", "node: runner called", "node: runner returned")
    orig_submit: Callable[..., Any] = executors.ThreadWorkers.submit

    def submit(self: Any, fn: Callable[[], Any], **kwargs: Any) -> Any:
        _mark("node: handed to a worker thread")

        def on_thread() -> Any:
            _mark("node: worker thread runs it")
            value = fn()
            _mark("node: worker thread done")
            return value

        return orig_submit(self, on_thread, **kwargs)

    executors.ThreadWorkers.submit = submit  # type: ignore[method-assign]
    _hook(executors.ThreadWorkers, "_deliver", "node: loop takes the outcome")
    _hook(replies.Replies, "send", "node: reply", "node: reply queued")
    _hook(dispatch.Dispatcher, "_settle", "node: result kept, ack", "node: acked")


def install_client_hooks() -> None:
    """Marks in this (the client's) process."""
    import nats.aio.client

    from hub import client

    _hook(client, "pack_request", "client: sign and pack", "client: packed")
    _hook(client, "publish_call", None, "client: the stream confirmed the call")
    _hook(nats.aio.client.Client, "_process_msg", "client: a message parsed")
    _hook(client.Client, "_on_reply", "client: reply", "client: reply opened")


# ``python -c _NODE OUT SCRIPTS -m node.cli ARGS...``: the node with its marks, written to
# OUT as JSON when it exits.
_NODE = """
import atexit, json, sys
out, scripts = sys.argv[1], sys.argv[2]
sys.argv = ["fedhub-node", *sys.argv[5:]]  # after OUT SCRIPTS -m node.cli
sys.path.insert(0, scripts)
import bench_timeline
bench_timeline.install_node_hooks()
def dump():
    with open(out, "w") as fh:
        json.dump({"marks": bench_timeline.MARKS, "missing": bench_timeline.MISSING}, fh)
atexit.register(dump)
import node.cli
sys.exit(node.cli.main())
"""


async def run(root: Path, calls: int, executor: str, pause: float) -> dict[str, Any]:
    """Start the federation and the node, make ``calls`` sequential calls, collect marks."""
    procs = Processes()
    fed = await start_local_federation(root / "nats", (SITE, CALLER_SITE), secure=False)
    node_marks = root / "node-marks.json"
    windows: list[tuple[float, float]] = []
    load_start = load_average()
    try:
        cfg = write_node_config(root, fed, executor)
        assert cfg.source is not None and cfg.node.key_home is not None
        status = cfg.node.data_dir / "status.json"
        run_node = ["run", "--config", str(cfg.source), "--grace", "5"]
        with (root / "node.out").open("ab") as out:
            proc = procs.start(
                [
                    sys.executable,
                    "-c",
                    _NODE,
                    str(node_marks),
                    _SCRIPTS,
                    "-m",
                    "node.cli",
                    *run_node,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FEDHUB_HOME": str(cfg.node.key_home)},
            )
        await node_started(proc, status, root / "node.out")
        client = await Client.connect(
            fed.site_url(CALLER_SITE),
            CALLER,
            home=cfg.node.key_home,
            default_timeout=60,
            **fed.caller_auth(CALLER),
        )
        text = "x" * PAYLOAD
        try:
            await first_call(lambda: client.call(ADDRESS, x=text, timeout=5))
            say(f"{calls} calls, one at a time ...")
            for _ in range(50):  # warm-up
                await client.call(ADDRESS, x=text, timeout=5)
            MARKS.clear()
            for _ in range(calls):
                started = time.perf_counter()
                await client.call(ADDRESS, x=text, timeout=5)
                windows.append((started, time.perf_counter()))
                await asyncio.sleep(pause)
        finally:
            await client.aclose()
            Processes.stop(proc)
    finally:
        await fed.stop()
    node = json.loads(node_marks.read_text())
    marks = sorted([*MARKS, *(tuple(m) for m in node["marks"])], key=lambda m: m[1])
    return {
        "report": _report(marks, windows, pause),
        "missing": sorted({*MISSING, *node["missing"]}),
        "load_average": {"start": load_start, "end": load_average()},
    }


def _report(
    marks: list[tuple[str, float]], windows: list[tuple[float, float]], pause: float
) -> list[dict[str, Any]]:
    """Per step (its first mark in each call's window, the pause after it included), the
    median ms from the call's start, in the order of those medians."""
    since: dict[str, list[float]] = {"call returned": []}
    at = 0
    for started, ended in windows:
        seen: set[str] = set()
        while at < len(marks) and marks[at][1] < started:
            at += 1
        i = at
        while i < len(marks) and marks[i][1] <= ended + pause * 0.9:
            name, t = marks[i]
            if name not in seen:
                seen.add(name)
                since.setdefault(name, []).append((t - started) * 1e3)
            i += 1
        since["call returned"].append((ended - started) * 1e3)
    rows = sorted(
        ((name, statistics.median(v), len(v)) for name, v in since.items()),
        key=lambda row: row[1],
    )
    out, before = [], 0.0
    for name, median, count in rows:
        out.append(
            {"step": name, "ms": round(median, 3), "delta_ms": round(median - before, 3)}
            | ({"calls": count} if count != len(windows) else {})
        )
        before = median
    return out


def main() -> int:
    """Run and print the timeline."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="measured calls")
    parser.add_argument("--executor", choices=["thread", "inline"], default="thread")
    parser.add_argument(
        "--pause", type=float, default=0.02, help="seconds after each call (its tail settles)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opts = parser.parse_args()
    configure_logging(level="warning")
    install_client_hooks()
    with tempfile.TemporaryDirectory(prefix="fedhub-timeline-") as tmp:
        result = asyncio.run(run(Path(tmp), opts.calls, opts.executor, opts.pause))
    if opts.json:
        print(json.dumps(result | {"executor": opts.executor, "calls": opts.calls}))
        return 0
    load = result["load_average"]
    print(f"one call at a time, {opts.executor} executor, {opts.calls} calls")
    print(f"load average {load['start'][0]:.2f} before, {load['end'][0]:.2f} after (1 min)")
    print(f"{'step':44s} {'ms':>8s} {'+ms':>8s}")
    for row in result["report"]:
        note = f"  (in {row['calls']} calls)" if "calls" in row else ""
        print(f"{row['step']:44s} {row['ms']:8.3f} {row['delta_ms']:8.3f}{note}")
    if result["missing"]:
        print("not hooked (renamed?): " + ", ".join(result["missing"]))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
