#!/usr/bin/env python3
"""Benchmark fedhub calls against raw NATS baselines over the same federation path.

    python scripts/bench_calls.py [--calls 2000] [--concurrency 64] [--node both]
                                  [--peers] [--json] [--keep DIR] [--profile DIR]
                                  [--executor thread|inline|process] [--processes N]
                                  [--secure]
    python scripts/bench_calls.py --soak 50000 [--in-flight 8] [--json]

One run, one machine, one topology: a hub and two site leaf servers (``hereon``,
``geomar``) started with :func:`hub.nats.start_local_federation`. The caller connects
to geomar's leaf; everything it calls lives behind hereon's leaf, so every message crosses
leaf -> hub -> leaf and back.

* baselines (``bench_baselines.py``): raw core request/reply, and a raw durable round trip
  (JetStream publish into a work-queue stream on hereon's leaf, a pull consumer there that
  echoes to the caller's inbox and acks; no crypto, no log), 100-byte payloads;
* fedhub: ``Client.call("hereon.bench.echo", x=<100 characters>)`` -- signed, encrypted,
  durable in hereon's JetStream call stream, logged in the node's signed event log,
  result stored encrypted in the Object Store -- served by one node connected to hereon's
  leaf.

Each is measured as median and p99 latency at 1 in flight (sequential calls after a
warm-up) and calls/s at ``--concurrency`` (default 64) in flight, with the CPU time of
every process (node with the processes it started, client, nats-servers; /proc) and the
load average (/proc/loadavg) at the start and end of each run. ``--node`` says where the
responders and the node run: ``process`` (their own process: the headline), ``inproc``
(the benchmark's own process and event loop) or ``both`` (the default). The node's event
log is measured too: growth of ``events.db`` + ``-wal`` per call, events per call.

Every figure is printed next to its baseline measured in the same run, with their ratio and
the load average; ``--json`` prints one object where each figure is ``{figure, baseline,
ratio}`` (plus its target and whether it is met). Issue targets, reported as measured and
never asserted: median latency <= 1.5 x the raw durable round trip and <= 3 x raw core
request/reply; >= 1,500 calls/s end to end; CPU per call at 64 in flight: node <= 400 µs,
client <= 200 µs; log <= 2 KB per call.

``--soak N``: N calls at ``--in-flight`` (default 8) through a node in its own process,
in ten consecutive tenths; for each, the rate, the node's and the client's CPU per call
and the log bytes per call; then the last tenth against the first (target: within 10 %).

``--peers``: the same workload through Celery with a Redis broker and result backend
(``bench_peers.py``). ``--executor`` sets how the node runs the echo (the module's
executor: ``thread``, the default, ``inline`` on the node's event loop, or ``process``);
``--processes N`` starts N node processes on the same config, sharing the durable call
consumer. ``--profile DIR`` runs the node process under cProfile and writes
``DIR/node.prof`` (main thread only, timed in the thread's CPU time: a busy machine's
waits for a core do not count).

``--secure``: the fedhub calls (and the soak) go through a second federation, generated
as ``fedhub federation init`` writes it and run as deployed: TLS on every client
connection, the node and the caller logging in with their own NKeys and role
permissions. The raw baselines stay on open site ports (they publish subjects outside
fedhub's roles), so the ratios then include what TLS and NKeys cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_baselines import RAW_CORE, RAW_DURABLE, bench_core, bench_durable
from bench_peers import bench_celery, peer_missing
from bench_report import fedhub_figures, peer_figures, print_report, soak_report
from benchlib import (
    CALL_TIMEOUT,
    CALLER_SITE,
    PAYLOAD,
    SITE,
    STOP,
    CpuMeter,
    Interrupted,
    LogGrowth,
    Processes,
    Run,
    load_average,
    measure,
    node_started,
    say,
    warm_up,
)

from hub.cli_keys import vouch_record
from hub.client import Client
from hub.cliutil import configure_logging
from hub.errors import CallTimeoutError, NotFoundError
from hub.keys import KeyPair, KeyStore
from hub.nats import LocalFederation, start_local_federation
from node.bootstrap import instance_log_path, open_log
from node.config import NodeConfig, load_config
from node.daemon import NodeDaemon

CALLER = "klaus@geomar"
MODULE = "bench"
ADDRESS = f"{SITE}.{MODULE}.echo"

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


# --- the node ---------------------------------------------------------------------------


def write_node_config(root: Path, fed: LocalFederation, executor: str = "thread") -> NodeConfig:
    """Keys, the caller's vouched record, the module file, the node config; ``init``."""
    store = KeyStore(root / "keys")
    pairs: dict[str, KeyPair] = {}
    for ident in (f"site:{SITE}", f"site:{CALLER_SITE}", CALLER):
        pairs[ident] = store.load(ident) if store.exists(ident) else store.create(ident)
    signed = vouch_record(pairs[f"site:{CALLER_SITE}"], store.public(CALLER))
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
        *(
            [
                f"credentials = {json.dumps(str(fed.credentials(SITE, 'node', 'n1')))}",
                f"ca = {json.dumps(str(fed.generated.ca))}",
            ]
            if fed.secure
            else []
        ),
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


# ``python -c _PROFILED OUT -m node.cli ARGS...``: ``node.cli ARGS`` under cProfile timed
# in the main thread's CPU time (cProfile's default, wall time, counts every wait for a
# core on a busy machine, e.g. in each socket send that wakes a server).
_PROFILED = """
import cProfile, sys, time
out = sys.argv[1]
sys.argv = ["fedhub-node", *sys.argv[4:]]  # after OUT -m node.cli
import node.cli
prof = cProfile.Profile(time.thread_time)
try:
    code = prof.runcall(node.cli.main)
finally:
    prof.dump_stats(out)
sys.exit(code)
"""


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
        prefix += ["-c", _PROFILED, str(profile / "node.prof")]
    with (cfg.node.data_dir / "node.out").open("ab") as out:
        proc = procs.start(
            [*prefix, "-m", "node.cli", "run", "--config", str(cfg.source), "--grace", "5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FEDHUB_HOME": str(cfg.node.key_home)},
        )
    await node_started(proc, status, cfg.node.data_dir / "node.out")
    return proc


class LogMeter:
    """Size and event count of every log of the node.

    The size is the database's own (pages x page size, as a reader sees it: committed
    pages still in the WAL count), i.e. what ``events.db`` holds once the WAL is checkpointed;
    the files' sizes (``events.db`` + ``-wal``) are kept too, but the WAL is reused and only
    grows to its high-water mark, so they say little over a short run.
    """

    def __init__(self, cfg: NodeConfig, processes: int) -> None:
        self.paths = [instance_log_path(cfg, i) for i in range(1, processes + 1)]

    def sample(self) -> tuple[int, int, int, int, int]:
        """(event log bytes, database bytes, file bytes, events, commits).

        The event log's bytes are the pages of the ``events`` table (SQLite's ``dbstat``):
        the log itself. The database's add the projections and indexes (a cache that
        ``fedhub-node log rebuild`` makes again from the log) and the checkpoints table.
        Commits are the signed events (log version 2 signs the last event of each).
        """
        log_bytes = size = files = events = commits = 0
        for path in self.paths:
            for part in (path, path.with_name(path.name + "-wal")):
                with contextlib.suppress(FileNotFoundError):
                    files += part.stat().st_size
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                conn.execute("BEGIN")  # one snapshot for the three reads
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                size += pages * conn.execute("PRAGMA page_size").fetchone()[0]
                events += conn.execute("SELECT IFNULL(MAX(seq), 0) FROM events").fetchone()[0]
                log_bytes += conn.execute(
                    "SELECT SUM(pgsize) FROM dbstat WHERE name = 'events'"
                ).fetchone()[0]
                commits += conn.execute(
                    "SELECT COUNT(*) FROM events WHERE length(sig) > 0"
                ).fetchone()[0]
            finally:
                conn.close()
        return log_bytes, size, files, events, commits

    def events(self) -> int:
        """How many events the logs hold (cheap: the last sequence number of each)."""
        total = 0
        for path in self.paths:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                total += conn.execute("SELECT IFNULL(MAX(seq), 0) FROM events").fetchone()[0]
            finally:
                conn.close()
        return total

    async def settled(self) -> tuple[int, int, int, int, int]:
        """A sample once the events of calls that just returned are written (the count
        holds still for 0.1 s; at most 2 s). Only the count is polled: a full sample
        reads every page of the log (``dbstat``), which in a long soak takes a while
        and holds back the node's WAL checkpoints."""
        last = self.events()
        for _ in range(20):
            await asyncio.sleep(0.1)
            now = self.events()
            if now == last:
                break
            last = now
        return self.sample()

    @staticmethod
    def growth(before: tuple[int, ...], after: tuple[int, ...], runs: list[Run]) -> LogGrowth:
        calls = sum(r.count + r.errors for r in runs)
        return LogGrowth(calls, *(a - b for a, b in zip(after, before, strict=True)))


@dataclass
class Session:
    """A node serving the echo and a client calling it, with their meters."""

    call: Callable[[], Awaitable[object]]
    cpu: CpuMeter
    log: LogMeter


@contextlib.asynccontextmanager
async def fedhub_session(
    fed: LocalFederation,
    cfg: NodeConfig,
    procs: Processes,
    opts: argparse.Namespace,
    *,
    in_process: bool,
) -> AsyncIterator[Session]:
    """Start the node (in its own process or in this loop) and a client at geomar's leaf;
    yield once a call goes through and the warm-up is done."""
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
            fed.site_url(CALLER_SITE),
            CALLER,
            home=cfg.node.key_home,
            default_timeout=60,
            **fed.caller_auth(CALLER),
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
        yield Session(call, cpu, LogMeter(cfg, 1 if in_process else opts.processes))


async def bench_fedhub(
    fed: LocalFederation,
    cfg: NodeConfig,
    procs: Processes,
    opts: argparse.Namespace,
    *,
    in_process: bool,
) -> tuple[dict[str, Run], LogGrowth]:
    """``Client.call`` from geomar's leaf to a node serving hereon's leaf."""
    async with fedhub_session(fed, cfg, procs, opts, in_process=in_process) as s:
        before = await s.log.settled()
        seq = await measure(
            s.call, count=opts.calls, concurrency=1, max_seconds=opts.max_seconds, cpu=s.cpu
        )
        middle = await s.log.settled()
        conc = await measure(
            s.call,
            count=max(opts.calls, opts.concurrency * 20),
            concurrency=opts.concurrency,
            max_seconds=opts.max_seconds,
            cpu=s.cpu,
        )
        after = await s.log.settled()
        growth = LogMeter.growth(before, after, [seq, conc])
        # commits of the run at ``concurrency`` in flight only: how well calls share them
        growth.commits = after[4] - middle[4]
        return {"seq": seq, "conc": conc}, growth
    raise AssertionError("unreachable")


async def bench_soak(
    fed: LocalFederation, cfg: NodeConfig, procs: Processes, opts: argparse.Namespace
) -> list[tuple[Run, LogGrowth]]:
    """``opts.soak`` calls at ``opts.in_flight``, measured as ten consecutive tenths."""
    in_process = opts.node == "inproc"
    tenths: list[tuple[Run, LogGrowth]] = []
    async with fedhub_session(fed, cfg, procs, opts, in_process=in_process) as s:
        size = -(-opts.soak // 10)
        left = opts.soak
        while left > 0:
            before = await s.log.settled()
            run = await measure(
                s.call,
                count=min(size, left),
                concurrency=opts.in_flight,
                max_seconds=max(opts.max_seconds, 600.0),
                cpu=s.cpu,
            )
            left -= size
            tenths.append((run, LogMeter.growth(before, await s.log.settled(), [run])))
            node = run.cpu_us("node") or run.cpu_us("client+node") or 0.0
            say(
                f"soak tenth {len(tenths)}: {run.per_second:,.0f} calls/s, node CPU "
                f"{node:,.0f} µs per call, load {run.load_end[0]:.2f}"
            )
    return tenths


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
    # Open client ports at the sites: the raw baselines publish subjects outside fedhub's
    # role permissions; every leg, baseline or not, runs the same (leaf-hub legs use TLS).
    fed = await start_local_federation(root / "nats", (SITE, CALLER_SITE), secure=False)
    # --secure: fedhub's legs go through a federation run as deployed (TLS, NKeys)
    calls = fed
    try:
        if opts.secure:
            calls = await start_local_federation(root / "secure", (SITE, CALLER_SITE))
        cfg = write_node_config(root, calls, opts.executor)
        if opts.soak:
            say(f"soak: {opts.soak:,} calls at {opts.in_flight} in flight ...")
            soak = await bench_soak(calls, cfg, procs, opts)
            return {"soak": soak_report(soak, opts.in_flight)}
        modes = ["process", "inproc"] if opts.node == "both" else [opts.node]
        report: dict[str, Any] = {"baselines": {}, "figures": {}, "runs": {}, "log": {}}
        for mode in modes:
            inproc = mode == "inproc"
            say(f"{RAW_CORE}, responder {mode} ...")
            core = await bench_core(fed, procs, opts, in_process=inproc)
            say(f"{RAW_DURABLE}, responder {mode} ...")
            durable = await bench_durable(fed, procs, opts, in_process=inproc)
            say(f"fedhub calls, node {mode}{' (TLS, NKeys)' if opts.secure else ''} ...")
            ours, log = await bench_fedhub(calls, cfg, procs, opts, in_process=inproc)
            report["baselines"][mode] = {
                name: {k: r.summary() for k, r in runs.items()}
                for name, runs in ((RAW_CORE, core), (RAW_DURABLE, durable))
            }
            report["figures"][mode] = fedhub_figures(ours, core, durable, log, opts.concurrency)
            report["runs"][mode] = {k: r.summary() for k, r in ours.items()}
            report["log"][mode] = log.summary()
            report.setdefault("_ours", {})[mode] = ours
        return report
    finally:
        await calls.stop()
        await fed.stop()


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
        help="run the node (and the raw responders) in its own process, in-process, or both",
    )
    parser.add_argument("--soak", type=int, help="only a soak: this many calls, in tenths")
    parser.add_argument("--in-flight", type=int, default=8, help="calls in flight in a soak")
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
    parser.add_argument(
        "--secure",
        action="store_true",
        help="fedhub calls over TLS with NKeys (the generated federation, as deployed)",
    )
    opts = parser.parse_args()
    if opts.calls < 1 or opts.concurrency < 1 or opts.in_flight < 1:
        parser.error("--calls, --concurrency and --in-flight must be at least 1")
    if opts.soak is not None:
        if opts.soak < 10:
            parser.error("--soak needs at least 10 calls (it reports tenths)")
        if opts.node == "both":
            opts.node = "process"  # the node's CPU is measured in a process of its own
        if opts.peers:
            parser.error("--soak measures fedhub alone; drop --peers")
    if opts.keep and opts.keep.exists() and any(opts.keep.iterdir()):
        parser.error(f"--keep {opts.keep}: give a new or empty folder")
    configure_logging(level="warning")
    load_start = load_average()
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
        ours: dict[str, dict[str, Run]] = report.pop("_ours", {})
        headline = "process" if "process" in ours else next(iter(ours), None)
        if opts.peers and headline is not None:
            why = peer_missing()
            if why is not None:
                report["peers"] = {"celery_redis": {"skipped": why}}
            else:
                say("Celery + Redis ...")
                runs = bench_celery(root, procs, opts)
                report["peers"] = {
                    "celery_redis": peer_figures(ours[headline], runs, opts.concurrency)
                }
    finally:
        procs.stop_all()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures = report["figures"][headline] if headline else report["soak"]
    report = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "load_average": {"start": load_start, "end": load_average()},
        "settings": {
            "calls": opts.calls,
            "concurrency": opts.concurrency,
            "soak": opts.soak,
            "in_flight": opts.in_flight,
            "payload_bytes": PAYLOAD,
            "executor": opts.executor,
            "node": opts.node,
            "node_processes": opts.processes,
            "secure": opts.secure,
        },
        "headline": headline,
        "targets": {
            k: {
                "target": f["target"],
                "measured": f["figure"]["value"],
                "ratio": f["ratio"],
                "met": f["met"],
            }
            for k, f in figures.items()
            if isinstance(f, dict) and f.get("target") is not None
        },
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
