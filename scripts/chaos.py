#!/usr/bin/env python3
"""Chaos, measured with the full outages: four faults under a steady stream of calls.

    python scripts/chaos.py [--json] [--hub-outage 30] [--leaf-outage 10] [--rate 10]

Each scenario starts a federation of its own on loopback from the generated configs (a
hub of three servers, leaves ``hereon`` and ``geomar``, TLS and NKeys), a ``hereon`` node
process and a caller at ``geomar`` who sends calls at ``--rate`` per second (each appends
its tag to a file and works 0.2 s), and injects one fault:

1. kill -9 one hub server (it stays down);
2. stop the whole hub for ``--hub-outage`` seconds;
3. stop the node's site leaf server for ``--leaf-outage`` seconds;
4. kill -9 the node while calls run, start it again a second later.

For each it prints the calls accepted (confirmed by the call stream), refused (never
confirmed within their deadline), completed, failed, duplicated (two outcomes in the
node's log, or run twice) and lost (accepted, no outcome in the node's log); the
recovery time (fault's end to the next completed call), for the node restart the time
until every call the killed node held had ended, the longest time with no completion,
the slowest call, the node's outage warnings, whether the node's log audits clean, and
the load average.
Figures are measured, never asserted (tests/integration/test_chaos.py checks the promises
with shorter outages). Takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.chaos import ChaosBench, Fault, Tally, table


async def scenario(
    root: Path, name: str, fault: Fault, opts: argparse.Namespace, *, timeout: float
) -> Tally:
    async with ChaosBench(root, rate=opts.rate, timeout=timeout) as bench:
        return await bench.run(name, fault, before=opts.before, after=opts.after)


async def main(opts: argparse.Namespace) -> list[Tally]:
    # a call's deadline outlives the longest outage, so calls sent during it can still end
    timeout = max(30.0, 2 * max(opts.hub_outage, opts.leaf_outage))
    plan: list[tuple[str, Fault]] = [
        ("kill one hub server", ChaosBench.kill_hub_server()),
        (f"hub down {opts.hub_outage:g} s", ChaosBench.stop_hub(opts.hub_outage)),
        (
            f"hereon leaf down {opts.leaf_outage:g} s",
            ChaosBench.restart_leaf("hereon", opts.leaf_outage),
        ),
        ("kill -9 the node", ChaosBench.kill_node()),
    ]
    tallies = []
    with tempfile.TemporaryDirectory(prefix="fedhub-chaos-") as tmp:
        for i, (name, fault) in enumerate(plan):
            if not opts.json:
                print(f"running: {name} ...", file=sys.stderr, flush=True)
            tallies.append(await scenario(Path(tmp) / f"s{i}", name, fault, opts, timeout=timeout))
    return tallies


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--hub-outage", type=float, default=30.0, help="seconds the hub is down")
    p.add_argument("--leaf-outage", type=float, default=10.0, help="seconds the leaf is down")
    p.add_argument("--rate", type=float, default=10.0, help="calls per second")
    p.add_argument("--before", type=float, default=5.0, help="seconds of calls before a fault")
    p.add_argument("--after", type=float, default=10.0, help="seconds of calls after it")
    return p.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    # the caller's own log lines (late confirmations, recovered replies) stay off the table
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results = asyncio.run(main(options))
    if options.json:
        print(json.dumps([t.as_dict() for t in results], indent=2))
    else:
        print(table(results))
    bad = [t.scenario for t in results if t.lost or t.duplicated or not t.audit_ok]
    if bad:
        print(f"broken promises in: {', '.join(bad)}", file=sys.stderr)
    sys.exit(1 if bad else 0)
