#!/usr/bin/env python3
"""Two nodes under the same load: the latency at 1 in flight of A against B, paired.

    python scripts/bench_pair.py [--tree-a DIR] [--tree-b DIR]
                                 [--executor-a thread] [--executor-b thread]
                                 [--calls 1000] [--pause 0] [--json]

On a shared machine the load moves between two runs of ``bench_calls.py`` by more than a
change to the node moves the median. Here two federations (the topology of
``bench_calls.py``: a hub and two site leaves each) and two node processes run at once,
node A from the source tree ``--tree-a`` (a clone or a ``git worktree`` of another
commit; default: this one) with ``--executor-a``, node B likewise; one client calls A,
B, B, A, A, B, ... sequentially, so both see the same load, and prints both medians and
B/A, with the load average. Each node's tail (result stored, message acked) still runs
while the other node's call is on its way: read B/A, not the milliseconds. ``--pause``
waits that long after each call (the tail settles first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_calls import ADDRESS, CALLER, spawn_node, write_node_config
from benchlib import CALLER_SITE, PAYLOAD, SITE, Processes, first_call, load_average, say

from hub.client import Client
from hub.cliutil import configure_logging
from hub.nats import LocalFederation, start_local_federation

_HERE = Path(__file__).resolve().parents[1]


async def run(root: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Start both worlds, warm them up, make the paired calls; the medians."""
    procs = Processes()
    feds: list[LocalFederation] = []
    clients: list[Client] = []
    sides = [(opts.tree_a, opts.executor_a), (opts.tree_b, opts.executor_b)]
    took: list[list[float]] = [[], []]
    text = "x" * PAYLOAD
    try:
        for i, (tree, executor) in enumerate(sides):
            fed = await start_local_federation(
                root / f"{i}" / "nats", (SITE, CALLER_SITE), secure=False
            )
            feds.append(fed)
            cfg = write_node_config(root / f"{i}", fed, executor)
            path = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = str(tree.resolve())  # the node imports this tree
            try:
                await spawn_node(cfg, procs, None)
            finally:
                if path is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = path
            assert cfg.node.key_home is not None
            client = await Client.connect(
                fed.site_url(CALLER_SITE),
                CALLER,
                home=cfg.node.key_home,
                default_timeout=60,
                **fed.caller_auth(CALLER),
            )
            clients.append(client)
            await first_call(functools.partial(client.call, ADDRESS, x=text, timeout=5))
        say(f"{opts.calls} paired calls ...")
        for _ in range(opts.warmup):
            for client in clients:
                await client.call(ADDRESS, x=text, timeout=5)
        load_start = load_average()
        for n in range(opts.calls):
            for i in (0, 1) if n % 2 == 0 else (1, 0):
                started = time.perf_counter()
                await clients[i].call(ADDRESS, x=text, timeout=5)
                took[i].append(time.perf_counter() - started)
                if opts.pause:
                    await asyncio.sleep(opts.pause)
        load_end = load_average()
    finally:
        for client in clients:
            await client.aclose()
        for proc in procs.procs:
            Processes.stop(proc)
        for fed in feds:
            await fed.stop()
    a, b = (statistics.median(t) * 1e3 for t in took)
    return {
        "a": {"tree": str(opts.tree_a), "executor": opts.executor_a, "median_ms": round(a, 3)},
        "b": {"tree": str(opts.tree_b), "executor": opts.executor_b, "median_ms": round(b, 3)},
        "b_over_a": round(b / a, 4),
        "calls": opts.calls,
        "load_average": {"start": load_start, "end": load_end},
    }


def main() -> int:
    """Run the pair and print the medians."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    executors = ["thread", "inline", "process"]
    parser.add_argument("--tree-a", type=Path, default=_HERE, help="source tree of node A")
    parser.add_argument("--tree-b", type=Path, default=_HERE, help="source tree of node B")
    parser.add_argument("--executor-a", choices=executors, default="thread")
    parser.add_argument("--executor-b", choices=executors, default="thread")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per node")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls per node")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds after each call")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opts = parser.parse_args()
    for tree in (opts.tree_a, opts.tree_b):
        if not (tree / "node" / "pipeline.py").is_file():
            parser.error(f"{tree} is not a fedhub source tree")
    if opts.calls < 1:
        parser.error("--calls must be at least 1")
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory(prefix="fedhub-pair-") as tmp:
        result = asyncio.run(run(Path(tmp), opts))
    if opts.json:
        print(json.dumps(result))
        return 0
    load = result["load_average"]
    print(f"load average {load['start'][0]:.2f} before, {load['end'][0]:.2f} after (1 min)")
    for side in ("a", "b"):
        r = result[side]
        print(f"{side.upper()}: {r['median_ms']:.3f} ms  ({r['executor']}, {r['tree']})")
    print(f"B/A {result['b_over_a']:.3f}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
