#!/usr/bin/env python3
"""Benchmark the bulk transfer layer against a raw JetStream Object Store put + get.

    python scripts/bench_payload.py [--sizes 1 100] [--big] [--concurrent 10] [--json]
                                    [--window BYTES] [--chunk-size BYTES] [--compress]

One run, one machine, one topology: a hub and two site leaf servers (``hereon``,
``geomar``) from the federation's own config generator, with TLS leaf links
(``bench_rawpath.start_bench_federation``: :class:`hub.nats.LocalFederation`, plus the
benchmark-only opening of one bucket described below). For each size (MiB):

* transfer round trip: a payload file at geomar (the caller) is sealed and sent to hereon
  (the node) across the hub (``fh.bulk.hereon.<transfer>``), then hereon seals what it
  received with a fresh key and sends it back to the caller's inbox. Each side of each leg
  runs ``scripts/bulk_peer.py`` in a process of its own, so the peak RSS of every sender
  and receiver is its own. A leg's time is the sender's: sealing, sending, and the
  receiver verifying and committing the file (the sender waits for its "done").
* raw baselines, in the same run, each of the same bytes put into a JetStream Object
  Store bucket and read back (1 MiB chunks, bounded memory, no crypto):

  - **over the same path** (issue 8's baseline, the one the target is against): a plain
    nats-py client at geomar puts into a bucket of hereon's JetStream domain and gets it
    back (a streamed get, as nats-py's ``ObjectStore.get``), crossing geomar's leaf, the
    hub and hereon's leaf with the same TLS leaf links as a call. The federation's
    accounts keep sites out of each other's JetStream, so ``scripts/bench_rawpath.py``
    opens this one bucket to geomar in the benchmark's own configs (what
    ``fedhub federation init`` writes for real sites is unchanged);
  - **on one server** (the figure this benchmark gave before, ``*_vs_single_server``): a
    client of hereon's own leaf, no hub, no TLS, the get one request per chunk
    (``iter_object``).

* call round trip (``scripts/bench_call_payload.py``): the same size as a NetCDF file
  through ``fedhub call ... da=@FILE --out BACK`` across the hub to a node process that
  returns it (encrypted, logged, stored, returned), two ways, each against both raw put +
  get of the same file:

  - **through the resident agent** (``call_round_trip_mib_s``, the figure the target is
    against): what a user's ``fedhub call`` does by default, and like for like with the
    raw baseline's warm, connected client. A fresh agent for each size (``fedhub agent
    start`` with the benchmark's ``FEDHUB_HOME``, stopped after), warmed with one 1 KiB
    call; the CLI process hands it the command line and working directory, and the agent
    reads ``da=@FILE`` and writes ``--out`` itself. The client's peak RSS (target
    256 MiB, file to file) is the agent's ``VmHWM`` over its whole life (its start, the
    warm-up call, the call) plus the CLI process's own;
  - **without the agent** (``call_without_agent_round_trip_mib_s``, no target;
    ``FEDHUB_AGENT=off``): the CLI process starts, imports fedhub, connects and moves the
    bytes itself, as the benchmark measured the call before; its peak RSS is the CLI's.

  The node's peak RSS (target payload + 256 MiB) is that of the agent leg's node. Each
  peak is the process's own ``VmHWM``, next to its limit; ``--out`` is compared with the
  source byte for byte (``arrived_whole``).

fedhub's own modules are byte-compiled first, as an installed package is (the CLI's
start is part of every call's time; see ``scripts/bench_startup.py``).

Every peer also reports the CPU seconds it used, and each figure comes with the CPU
seconds the federation's nats-servers used meanwhile (``*_servers_cpu_s``; the raw
baseline's client and server too), so the whole CPU budget per GiB is in the report: on a
machine that is doing other work those move far less than the rates do, and on two cores
the rates follow them.

``--concurrent N`` also runs N uploads of the largest size at the same time (one sender
and one receiver process each). Figures are printed next to their baseline and the load
average; never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_call_payload import CallBench, _cpu_ticks, same_file, write_netcdf_payload
from bench_rawpath import raw_put_get, start_bench_federation
from bench_startup import compile_fedhub
from benchlib import figure, load_average, say

from hub.cliutil import configure_logging
from hub.crypto import new_content_key
from hub.nats import LocalFederation
from hub.transfer import (
    DEFAULT_CHUNK_SIZE,
    Route,
    download_route,
    new_transfer_id,
    upload_route,
)

PEER = Path(__file__).resolve().parent / "bulk_peer.py"
CALLER, NODE, USER = "geomar", "hereon", "bench"
MIB = 1024 * 1024


def _servers_cpu_s(fed: LocalFederation) -> float:
    """CPU seconds (user + system) the federation's nats-servers have used so far."""
    servers = [*fed.hubs.values(), *fed.leaves.values()]
    ticks = sum(_cpu_ticks(s.pid) for s in servers if s.pid is not None)
    return ticks / os.sysconf("SC_CLK_TCK")


def _payload(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
        out.write(os.urandom(size % MIB))


def _peer(role: str, url: str, route: Route, key: bytes, **opts: object) -> subprocess.Popen[str]:
    args = [sys.executable, str(PEER), role, "--url", url, "--key", key.hex()]
    args += ["--control", route.control]
    args += ["--subject", route.to] if role == "receive" else ["--to", route.to]
    for name, value in opts.items():
        if value is True:
            args.append(f"--{name.replace('_', '-')}")
        elif value is not False:
            args += [f"--{name.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    proc.stderr.readline()  # "ready": connected (a receiver subscribes right after)
    return proc


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"bulk peer failed: {err[-2000:]}")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def _leg(
    fed: LocalFederation,
    source: Path,
    dest: Path,
    *,
    upload: bool,
    window: int,
    compress: bool,
    chunk_size: int,
) -> dict[str, Any]:
    """One transfer between two peer processes; the sender's and receiver's reports."""
    tid = new_transfer_id().hex()
    key = new_content_key()
    route = (upload_route if upload else download_route)(CALLER, USER, NODE, tid)
    send_site, recv_site = (CALLER, NODE) if upload else (NODE, CALLER)
    receiver = _peer("receive", fed.site_url(recv_site), route, key, dest=dest, window=window)
    servers = _servers_cpu_s(fed)
    sender = _peer("send", fed.site_url(send_site), route, key, source=source, transfer=tid,
                   window=window, compress=compress, chunk_size=chunk_size)  # fmt: skip
    sent, received = _report(sender), _report(receiver)
    return {"sender": sent, "receiver": received, "servers_cpu_s": _servers_cpu_s(fed) - servers}


#: The two raw baselines: the same path as a call (issue 8's), and the figure this
#: benchmark gave before (a client of the node's own leaf: one server, no TLS).
RAW_PATHS = ("same_path", "single_server")
RAW_NAMES = {
    "same_path": "raw object store put + get over the same path (caller's leaf, hub, node's leaf)",
    "single_server": "raw object store put + get on one server (the node's leaf; "
    "the earlier baseline)",
}


def _raw(fed: LocalFederation, source: Path, name: str, expected: int) -> dict[str, Any]:
    """Both raw baselines, one after the other: for each, the seconds of the put and the
    get, the CPU of the client and the servers, and the load average around it.

    Same path: a client of the caller's leaf, the bucket in the node site's domain, the
    get streamed (:mod:`bench_rawpath`). Single server: a client of the node's leaf, the
    get one request per chunk, as this benchmark measured it before.
    """
    out: dict[str, Any] = {}
    for path in RAW_PATHS:
        same = path == "same_path"
        load = load_average()
        servers, client = _servers_cpu_s(fed), time.process_time()
        put, get = asyncio.run(
            raw_put_get(
                fed.site_url(CALLER if same else NODE),
                source,
                f"{name}-{path}",
                expected,
                domain=NODE if same else None,
                streamed=same,
            )
        )
        out[path] = {
            "put_s": put,
            "get_s": get,
            "client_cpu_s": time.process_time() - client,
            "servers_cpu_s": _servers_cpu_s(fed) - servers,
            "load": {"start": load, "end": load_average()},
        }
    return out


def _raw_figures(
    name: str,
    moved: int,
    seconds: float,
    load: dict[str, Any],
    raw: dict[str, Any],
    target: str | None,
) -> dict[str, Any]:
    """``name`` (the rate of moving ``moved`` bytes in ``seconds``) against each baseline:
    ``<name>`` against the same path, with the target; ``<name>_vs_single_server``."""
    out: dict[str, Any] = {}
    for path in RAW_PATHS:
        base = raw[path]
        key = name if path == "same_path" else f"{name}_vs_single_server"
        out[key] = figure(
            _mib_s(moved, seconds),
            "MiB/s",
            RAW_NAMES[path],
            _mib_s(moved, base["put_s"] + base["get_s"]),
            target=target if path == "same_path" else None,
            load=load,
            baseline_load=base["load"],
        )
    return out


def _raw_details(raw: dict[str, Any], moved: int) -> dict[str, Any]:
    """Rates and CPU of each raw baseline (``raw_*`` same path, ``single_server_raw_*``)."""
    out: dict[str, Any] = {}
    for path in RAW_PATHS:
        base, prefix = raw[path], "raw" if path == "same_path" else "single_server_raw"
        out |= {
            f"{prefix}_put_mib_s": round(_mib_s(moved // 2, base["put_s"]), 1),
            f"{prefix}_get_mib_s": round(_mib_s(moved // 2, base["get_s"]), 1),
            f"{prefix}_client_cpu_s": round(base["client_cpu_s"], 2),
            f"{prefix}_servers_cpu_s": round(base["servers_cpu_s"], 2),
            f"{prefix}_cpu_s_per_gib_one_way": _per_gib(
                [base["client_cpu_s"], base["servers_cpu_s"]], moved
            ),
        }
    return out


def _per_gib(cpu_seconds: list[float], moved: int) -> float | None:
    """CPU seconds per GiB moved."""
    return round(sum(cpu_seconds) * 1024 * MIB / moved, 2) if moved else None


def _mib_s(size: int, seconds: float) -> float:
    return size / MIB / seconds if seconds > 0 else float("nan")


def bench_size(fed: LocalFederation, work: Path, size_mib: float, args: Any) -> dict[str, Any]:
    size = int(size_mib * MIB)
    source, at_node, back = work / "source", work / "at-node", work / "back"
    _payload(source, size)
    load_start = load_average()
    say(f"{size_mib:g} MiB: caller -> node")
    knobs = {"window": args.window, "compress": args.compress, "chunk_size": args.chunk_size}
    up = _leg(fed, source, at_node, upload=True, **knobs)
    say(f"{size_mib:g} MiB: node -> caller")
    down = _leg(fed, at_node, back, upload=False, **knobs)
    transfer_s = up["sender"]["seconds"] + down["sender"]["seconds"]
    load_mid = load_average()
    say(f"{size_mib:g} MiB: raw object store put + get (same path, then one server)")
    raw = _raw(fed, source, f"raw-{size}", size)
    same = back.stat().st_size == size
    for path in (source, at_node, back):
        path.unlink(missing_ok=True)
    rss = {
        f"{leg}_{side}_peak_rss_mib": round(report[side]["rss_peak_kib"] / 1024, 1)
        for leg, report in (("upload", up), ("download", down))
        for side in ("sender", "receiver")
    }
    return {
        "size_mib": size_mib,
        "arrived_whole": same,
        **_raw_figures(
            "round_trip_mib_s",
            2 * size,
            transfer_s,
            {"start": load_start, "end": load_mid},
            raw,
            ">= 0.7 x raw (issue 8, for the full call)",
        ),
        "upload_mib_s": round(_mib_s(size, up["sender"]["seconds"]), 1),
        "download_mib_s": round(_mib_s(size, down["sender"]["seconds"]), 1),
        "resent_chunks": up["sender"]["resent_chunks"] + down["sender"]["resent_chunks"],
        # CPU of each side of each leg (seconds, the process's whole run): a figure that a
        # busy machine disturbs less than the rates
        **{
            f"{leg}_{side}_cpu_s": round(report[side]["cpu_seconds"], 2)
            for leg, report in (("upload", up), ("download", down))
            for side in ("sender", "receiver")
        },
        "upload_servers_cpu_s": round(up["servers_cpu_s"], 2),
        "download_servers_cpu_s": round(down["servers_cpu_s"], 2),
        # the whole budget of moving a GiB one way: peers (their start-up included, ~0.1 s
        # each) and servers, against the raw put + get's per GiB moved
        "cpu_s_per_gib_one_way": _per_gib(
            [up[s]["cpu_seconds"] + down[s]["cpu_seconds"] for s in ("sender", "receiver")]
            + [up["servers_cpu_s"], down["servers_cpu_s"]],
            2 * size,
        ),
        # each raw baseline's put and get rates, CPU, and CPU per GiB moved
        **_raw_details(raw, 2 * size),
        **rss,
    }


#: The two ways of the full call: the target's (through the agent), and the CLI alone.
CALL_WAYS = {
    "call_round_trip_mib_s": "fedhub call through the resident agent (a warm, connected "
    "process, as users' calls go by default; the CLI process hands it the command)",
    "call_without_agent_round_trip_mib_s": "fedhub call without the agent (FEDHUB_AGENT=off: "
    "the CLI process starts, imports fedhub, connects and moves the bytes itself)",
}
CALL_TARGET = ">= 0.7 x raw over the same path at 100 MiB and 1 GiB (issue 8)"


def bench_call(
    fed: LocalFederation, bench: CallBench, work: Path, size_mib: float, args: Any
) -> dict[str, Any]:
    """The full call round trip of a NetCDF file of ``size_mib``, through the agent and
    without it, against raw put + get of the same file."""
    source, back = work / "call-source.nc", work / "call-back.nc"
    write_netcdf_payload(source, int(size_mib * MIB))
    size = source.stat().st_size
    legs: dict[str, dict[str, Any]] = {}
    for name, through in zip(CALL_WAYS, (True, False), strict=True):
        load_start = load_average()
        say(f"{size_mib:g} MiB: fedhub call there and back, {'through' if through else 'without'}"
            " the agent")  # fmt: skip
        servers = _servers_cpu_s(fed)
        leg = bench.round_trip(source, back, agent=through, compress=args.compress)
        leg["servers_cpu_s"] = _servers_cpu_s(fed) - servers  # the node storing included
        leg["load"] = {"start": load_start, "end": load_average()}
        leg["arrived_whole"] = same_file(source, back)
        back.unlink(missing_ok=True)
        legs[name] = leg
    say(f"{size_mib:g} MiB: raw object store put + get of the same file")
    raw = _raw(fed, source, f"call-{size}", size)
    source.unlink()
    agent, alone = legs["call_round_trip_mib_s"], legs["call_without_agent_round_trip_mib_s"]
    figures: dict[str, Any] = {}
    for name, leg in legs.items():
        target = CALL_TARGET if leg is agent else None
        figures |= _raw_figures(name, 2 * size, leg["seconds"], leg["load"], raw, target)
        for key in (name, f"{name}_vs_single_server"):
            figures[key]["figure"]["name"] = CALL_WAYS[name]
    # the client's work through the agent: the agent's whole life (a fresh one: its start,
    # the warm-up call and this one) plus the CLI process that handed it the command
    client_rss = agent["agent_peak_rss_mib"] + agent["cli_peak_rss_mib"]
    return {
        "size_mib": round(size / MIB, 2),
        "arrived_whole": agent["arrived_whole"],
        "without_agent_arrived_whole": alone["arrived_whole"],
        **figures,
        # CPU of each call: the client's (the agent's during the call plus its CLI's whole
        # run; without the agent the CLI's whole run, its start included), the node's from
        # the call's start until it is idle again (storing the result included)
        "client_cpu_s": round(agent["agent_cpu_s"] + agent["cli_cpu_s"], 2),
        "agent_cpu_s": round(agent["agent_cpu_s"], 2),
        "agent_cli_cpu_s": round(agent["cli_cpu_s"], 2),
        "node_cpu_s": round(agent["node_cpu_s"], 2),
        "servers_cpu_s": round(agent["servers_cpu_s"], 2),
        "without_agent_client_cpu_s": round(alone["cli_cpu_s"], 2),
        "without_agent_node_cpu_s": round(alone["node_cpu_s"], 2),
        "without_agent_servers_cpu_s": round(alone["servers_cpu_s"], 2),
        **_raw_details(raw, 2 * size),
        "client_peak_rss_mib": _rss_figure(
            client_rss, 256, "256 MiB", "the agent's peak over its life + its CLI's peak"
        ),
        "agent_peak_rss_mib": round(agent["agent_peak_rss_mib"], 1),
        "agent_rss_before_call_mib": round(agent["agent_rss_before_call_mib"], 1),
        "agent_cli_peak_rss_mib": round(agent["cli_peak_rss_mib"], 1),
        "without_agent_client_peak_rss_mib": _rss_figure(
            alone["cli_peak_rss_mib"], 256, "256 MiB", "the CLI without the agent"
        ),
        "node_peak_rss_mib": _rss_figure(
            agent["node_peak_rss_mib"], size / MIB + 256, "payload + 256 MiB", "the node"
        ),
        "without_agent_node_peak_rss_mib": round(alone["node_peak_rss_mib"], 1),
    }


def _rss_figure(mib: float, limit: float, name: str, what: str) -> dict[str, Any]:
    """A peak RSS (of ``what``) next to its limit (the baseline): met when at most it."""
    out = figure(
        mib,
        "MiB",
        f"limit: {name} (issue 8)",
        limit,
        target="<= 1.0 x limit",
        met=mib <= limit,
        load={"start": load_average(), "end": load_average()},
    )
    out["figure"]["name"] = what
    return out


def bench_concurrent(
    fed: LocalFederation, work: Path, count: int, size_mib: float
) -> dict[str, Any]:
    """``count`` uploads of ``size_mib`` at once; wall time, aggregate rate, peak RSS."""
    size = int(size_mib * MIB)
    sources = [work / f"c{i}" for i in range(count)]
    for source in sources:
        _payload(source, size)
    load_start = load_average()
    started = time.monotonic()
    procs = []
    for i, source in enumerate(sources):
        tid = new_transfer_id().hex()
        key = new_content_key()
        route = upload_route(CALLER, USER, NODE, tid)
        procs.append(_peer("receive", fed.site_url(NODE), route, key, dest=work / f"d{i}"))
        procs.append(_peer("send", fed.site_url(CALLER), route, key, source=source,
                           transfer=tid))  # fmt: skip
    reports = [_report(p) for p in procs]
    seconds = time.monotonic() - started
    for path in work.iterdir():
        path.unlink()
    return {
        "transfers": count,
        "size_mib": size_mib,
        "wall_seconds_with_process_starts": round(seconds, 2),
        "aggregate_mib_s": round(_mib_s(count * size, seconds), 1),
        "mean_per_transfer_mib_s": round(
            sum(_mib_s(size, r["seconds"]) for r in reports if r["role"] == "send") / count, 1
        ),
        "max_peak_rss_mib": round(max(r["rss_peak_kib"] for r in reports) / 1024, 1),
        "resent_chunks": sum(r["resent_chunks"] for r in reports),
        "load_average": {"start": load_start, "end": load_average()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 100], help="MiB")
    parser.add_argument("--big", action="store_true", help="also 1 GiB")
    parser.add_argument("--concurrent", type=int, default=0, help="N uploads at once")
    parser.add_argument("--window", type=int, default=4 * MIB)
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="transfer legs only"
    )
    parser.add_argument("--compress", action="store_true", help="zstd per chunk")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-call", action="store_true", help="skip the fedhub call round trip")
    args = parser.parse_args(argv)
    configure_logging(level="warning")  # stdout carries the report only
    # as installed (pip byte-compiles): with PYTHONDONTWRITEBYTECODE set, every CLI, node
    # and peer process would otherwise compile the fedhub modules edited since their .pyc
    compile_fedhub()
    sizes = [*args.sizes, *([1024.0] if args.big else [])]
    with tempfile.TemporaryDirectory(prefix="fedhub-bench-payload-") as tmp:
        # Open client ports at the sites: the bulk peers are raw NATS clients on subjects of
        # their own
        # (leaf-hub legs use TLS); the raw baseline's bucket at the node reachable from the
        # caller's leaf over the same path, in this federation only (bench_rawpath).
        fed = asyncio.run(start_bench_federation(Path(tmp) / "fed", NODE, CALLER))
        try:
            work = Path(tmp) / "work"
            work.mkdir()
            results = [bench_size(fed, work, size, args) for size in sizes]
            (Path(tmp) / "call").mkdir()
            bench = CallBench(Path(tmp) / "call", fed) if not args.no_call else None
            calls = [bench_call(fed, bench, work, size, args) for size in sizes] if bench else []
            concurrent = (
                bench_concurrent(fed, work, args.concurrent, max(sizes))
                if args.concurrent
                else None
            )
        finally:
            asyncio.run(fed.stop())
    report = {
        "load_average": load_average(),
        "sizes": results,
        "calls": calls,
        "concurrent": concurrent,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row in results:
            rt, one = row["round_trip_mib_s"], row["round_trip_mib_s_vs_single_server"]
            print(
                f"{row['size_mib']:>7g} MiB  round trip {rt['figure']['value']} MiB/s  "
                f"raw same path {rt['baseline']['value']} MiB/s  ratio {rt['ratio']}  "
                f"(raw one server {one['baseline']['value']} MiB/s, ratio {one['ratio']})  "
                f"peak RSS up {row['upload_sender_peak_rss_mib']}/"
                f"{row['upload_receiver_peak_rss_mib']} MiB, down "
                f"{row['download_sender_peak_rss_mib']}/{row['download_receiver_peak_rss_mib']}"
                f" MiB (sender/receiver)  load {rt['figure']['load_average']}"
            )
        for row in calls:
            for name, label in (
                ("call_round_trip_mib_s", "fedhub call through the agent"),
                ("call_without_agent_round_trip_mib_s", "fedhub call without the agent"),
            ):
                rt, one = row[name], row[f"{name}_vs_single_server"]
                print(
                    f"{row['size_mib']:>7g} MiB  {label} {rt['figure']['value']} MiB/s  raw "
                    f"same path {rt['baseline']['value']} MiB/s  ratio {rt['ratio']}"
                    f"{' (target >= 0.7)' if rt['target'] else ' (no target)'}  raw one "
                    f"server {one['baseline']['value']} MiB/s, ratio {one['ratio']}  "
                    f"load {rt['figure']['load_average']}"
                )
            client = row["client_peak_rss_mib"]["figure"]["value"]
            print(
                f"{row['size_mib']:>7g} MiB  peak RSS: client through the agent {client} MiB "
                f"(agent {row['agent_peak_rss_mib']} MiB over its life, "
                f"{row['agent_rss_before_call_mib']} MiB before the call; its CLI "
                f"{row['agent_cli_peak_rss_mib']} MiB; limit 256), CLI without the agent "
                f"{row['without_agent_client_peak_rss_mib']['figure']['value']} MiB, node "
                f"{row['node_peak_rss_mib']['figure']['value']} MiB (limit "
                f"{row['node_peak_rss_mib']['baseline']['value']:g})  arrived whole: "
                f"{row['arrived_whole']} / {row['without_agent_arrived_whole']}"
            )
        if concurrent:
            print(f"concurrent: {concurrent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
