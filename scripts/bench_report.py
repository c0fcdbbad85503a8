"""The call benchmark's report: each figure next to its baseline, targets, printing.

Every figure is ``{figure, baseline, ratio}`` (:func:`benchlib.figure`) with its target,
whether it is met and the load average at the start and end of the runs behind it.
"""

from __future__ import annotations

from typing import Any

from bench_baselines import RAW_CORE, RAW_DURABLE
from benchlib import LogGrowth, Run, figure

TARGET_VS_DURABLE = 1.5
TARGET_VS_CORE = 3.0
TARGET_CALLS_PER_S = 1500.0
TARGET_NODE_CPU_US = 400.0
TARGET_CLIENT_CPU_US = 200.0
TARGET_LOG_BYTES = 2000.0
TARGET_SOAK_DRIFT = 0.10


# --- figures ----------------------------------------------------------------------------


def _ms(run: Run, q: float) -> float:
    return run.quantile(q) * 1e3


def _joined(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, list[float]]:
    """The load average at the start of ``a`` and the end of ``b``."""
    return {"start": a["start"], "end": b["end"]}


def _cpu_names(run: Run) -> list[str]:
    return sorted(run.cpu)


def fedhub_figures(
    ours: dict[str, Run], core: dict[str, Run], durable: dict[str, Run], log: LogGrowth, c: int
) -> dict[str, dict[str, Any]]:
    """Every figure of one mode, each next to its baseline from the same run."""
    s, k, cs, ds, dk = ours["seq"], ours["conc"], core["seq"], durable["seq"], durable["conc"]
    vs_durable = _ms(s, 0.5) / _ms(ds, 0.5) if ds.count else float("nan")
    vs_core = _ms(s, 0.5) / _ms(cs, 0.5) if cs.count else float("nan")
    out = {
        "latency_median_ms": figure(
            _ms(s, 0.5),
            "ms",
            RAW_DURABLE,
            _ms(ds, 0.5),
            target=f"<= {TARGET_VS_DURABLE:g} x {RAW_DURABLE}",
            met=vs_durable <= TARGET_VS_DURABLE,
            load=s.load,
            baseline_load=ds.load,
        ),
        "latency_median_ms_vs_core": figure(
            _ms(s, 0.5),
            "ms",
            RAW_CORE,
            _ms(cs, 0.5),
            target=f"<= {TARGET_VS_CORE:g} x {RAW_CORE}",
            met=vs_core <= TARGET_VS_CORE,
            load=s.load,
            baseline_load=cs.load,
        ),
        "latency_p99_ms": figure(
            _ms(s, 0.99), "ms", RAW_DURABLE, _ms(ds, 0.99), load=s.load, baseline_load=ds.load
        ),
        f"latency_median_ms_at_{c}": figure(
            _ms(k, 0.5), "ms", RAW_DURABLE, _ms(dk, 0.5), load=k.load, baseline_load=dk.load
        ),
        "calls_per_s": figure(
            k.per_second,
            "1/s",
            RAW_DURABLE,
            dk.per_second,
            target=f">= {TARGET_CALLS_PER_S:,.0f} calls/s",
            met=k.per_second >= TARGET_CALLS_PER_S,
            load=k.load,
            baseline_load=dk.load,
        ),
    }
    # CPU per call at c in flight, each process against its counterpart in the durable
    # baseline: the node against the pull consumer, the client against the publisher.
    pairs = [
        ("node", "node", "responder", TARGET_NODE_CPU_US),
        ("client", "client", "requester", TARGET_CLIENT_CPU_US),
        ("client_and_node", "client+node", "requester+responder", None),
        ("servers", "nats", "nats", None),
    ]
    for name, mine, theirs, limit in pairs:
        value = k.cpu_us(mine)
        if value is None:
            continue
        out[f"{name}_cpu_us_per_call_at_{c}"] = figure(
            value,
            "us",
            f"{RAW_DURABLE}, {theirs}",
            dk.cpu_us(theirs),
            target=None if limit is None else f"<= {limit:,.0f} µs",
            met=None if limit is None else value <= limit,
            load=k.load,
            baseline_load=dk.load,
        )
    out[f"total_cpu_us_per_call_at_{c}"] = figure(
        k.cpu_us(*_cpu_names(k)),
        "us",
        f"{RAW_DURABLE}, every process",
        dk.cpu_us(*_cpu_names(dk)),
        load=k.load,
        baseline_load=dk.load,
    )
    calls = max(1, log.calls)
    per_call = log.bytes / calls
    out["log_bytes_per_call"] = figure(
        per_call,
        "B",
        "issue target (no raw baseline)",
        TARGET_LOG_BYTES,
        target=f"<= {TARGET_LOG_BYTES:,.0f} B",
        met=per_call <= TARGET_LOG_BYTES,
        load=_joined(s.load, k.load),
    )
    out["db_bytes_per_call"] = figure(
        log.db_bytes / calls, "B", None, None, load=_joined(s.load, k.load)
    )
    out["log_events_per_call"] = figure(
        log.events / calls, "events", None, None, load=_joined(s.load, k.load)
    )
    out[f"log_commits_per_call_at_{c}"] = figure(
        log.commits / k.count if k.count else None,
        "commits",
        None,
        None,
        load=_joined(s.load, k.load),
    )
    out["log_bytes_per_event"] = figure(
        log.bytes / log.events if log.events else None,
        "B",
        None,
        None,
        load=_joined(s.load, k.load),
    )
    return out


def peer_figures(ours: dict[str, Run], peer: dict[str, Run], c: int) -> dict[str, Any]:
    """fedhub's figures against the peer's, measured the same way in the same run."""
    s, k, ps, pk = ours["seq"], ours["conc"], peer["seq"], peer["conc"]
    name = "Celery + Redis"
    return {
        "latency_median_ms": figure(
            _ms(s, 0.5), "ms", name, _ms(ps, 0.5), load=s.load, baseline_load=ps.load
        ),
        "latency_p99_ms": figure(
            _ms(s, 0.99), "ms", name, _ms(ps, 0.99), load=s.load, baseline_load=ps.load
        ),
        "calls_per_s": figure(
            k.per_second, "1/s", name, pk.per_second, load=k.load, baseline_load=pk.load
        ),
        f"total_cpu_us_per_call_at_{c}": figure(
            k.cpu_us(*_cpu_names(k)),
            "us",
            name,
            pk.cpu_us(*_cpu_names(pk)),
            load=k.load,
            baseline_load=pk.load,
        ),
        "runs": {"seq": ps.summary(), "conc": pk.summary()},
    }


def soak_report(tenths: list[tuple[Run, LogGrowth]], in_flight: int) -> dict[str, Any]:
    """Each tenth of a soak, then the last tenth against the first."""
    rows = []
    for run, log in tenths:
        node, client = run.cpu_us("node"), run.cpu_us("client")
        rows.append(
            {
                **run.summary(),
                "node_cpu_us_per_call": None if node is None else round(node, 1),
                "client_cpu_us_per_call": None if client is None else round(client, 1),
                "log_bytes_per_call": round(log.bytes / max(1, log.calls), 1),
            }
        )
    first, last = tenths[0][0], tenths[-1][0]
    key = "node" if "node" in first.cpu else "client+node"
    rate_ratio = last.per_second / first.per_second if first.per_second else float("nan")
    cpu_first, cpu_last = first.cpu_us(key), last.cpu_us(key)
    cpu_ratio = cpu_last / cpu_first if cpu_first and cpu_last is not None else float("nan")
    slower = f"last tenth >= {1 - TARGET_SOAK_DRIFT:.0%} of the first"
    dearer = f"last tenth <= {1 + TARGET_SOAK_DRIFT:.0%} of the first"
    return {
        "calls": sum(r.count for r, _ in tenths),
        "in_flight": in_flight,
        "tenths": rows,
        "rate_last_vs_first": figure(
            last.per_second,
            "1/s",
            "first tenth of the soak",
            first.per_second,
            target=slower,
            met=rate_ratio >= 1 - TARGET_SOAK_DRIFT,
            load=last.load,
            baseline_load=first.load,
        ),
        f"{key.replace('+', '_and_')}_cpu_last_vs_first": figure(
            cpu_last,
            "us",
            "first tenth of the soak",
            cpu_first,
            target=dearer,
            met=cpu_ratio <= 1 + TARGET_SOAK_DRIFT,
            load=last.load,
            baseline_load=first.load,
        ),
    }


# --- printing ---------------------------------------------------------------------------

_LABELS = {
    "latency_median_ms": "median latency, 1 in flight",
    "latency_median_ms_vs_core": "median latency, 1 in flight",
    "latency_p99_ms": "p99 latency, 1 in flight",
    "calls_per_s": "calls/s, {c} in flight",
    "latency_median_ms_at_{c}": "median latency, {c} in flight",
    "node_cpu_us_per_call_at_{c}": "node CPU per call, {c} in flight",
    "client_cpu_us_per_call_at_{c}": "client CPU per call, {c} in flight",
    "client_and_node_cpu_us_per_call_at_{c}": "client+node CPU per call",
    "servers_cpu_us_per_call_at_{c}": "servers' CPU per call",
    "total_cpu_us_per_call_at_{c}": "all CPU per call, {c} in flight",
    "log_bytes_per_call": "event log bytes per call (the events table)",
    "log_events_per_call": "events per call",
    "log_commits_per_call_at_{c}": "log commits per call, {c} in flight",
    "log_bytes_per_event": "event log bytes per event",
    "db_bytes_per_call": "database bytes per call (log, projections, indexes)",
    "rate_last_vs_first": "calls/s, last tenth",
    "node_cpu_last_vs_first": "node CPU per call, last tenth",
    "client_and_node_cpu_last_vs_first": "client+node CPU, last tenth",
}
_UNITS = {"ms": "ms", "1/s": "/s", "us": "µs", "B": "B", "events": "", "commits": ""}


def _load(load: dict[str, list[float]] | None) -> str:
    if not load or not load.get("start") or not load.get("end"):
        return ""
    return f"load {load['start'][0]:.2f}->{load['end'][0]:.2f}"


def _errors(seq: dict[str, Any], conc: dict[str, Any]) -> str:
    if not seq["errors"] and not conc["errors"]:
        return ""
    at = conc["concurrency"]
    return f" (failed calls: {seq['errors']} at 1 in flight, {conc['errors']} at {at})"


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if unit in ("ms", "events") else f"{value:,.0f}"


def print_figures(figures: dict[str, Any], c: int) -> None:
    """One line per figure: value, ratio to its baseline, target, load average."""
    labels = {k.format(c=c): v.format(c=c) for k, v in _LABELS.items()}
    for key, f in figures.items():
        if not isinstance(f, dict) or "figure" not in f:
            continue
        unit = f["figure"]["unit"]
        line = (
            f"  {labels.get(key, key):34} {_num(f['figure']['value'], unit):>10} {_UNITS[unit]:2}"
        )
        base = f["baseline"]
        if base is not None:
            ratio = "" if f["ratio"] is None else f"x{f['ratio']:<6.3f}"
            line += f"  {ratio:7} of {base['name']} {_num(base['value'], unit)} {_UNITS[unit]}"
        if f["target"] is not None:
            line += f"; target {f['target']}: {'met' if f['met'] else 'NOT met'}"
        print(f"{line}  [{_load(f['figure']['load_average'])}]")


def print_report(report: dict[str, Any]) -> None:
    m, st = report["machine"], report["settings"]
    print(
        f"machine: {m['cores']} cores, Python {m['python']}; load average "
        f"{_load(report['load_average'])[5:]} over the whole run"
    )
    if "soak" in report:
        soak = report["soak"]
        print(f"soak: {soak['calls']:,} calls at {soak['in_flight']} in flight, in tenths:")
        for i, row in enumerate(soak["tenths"], 1):
            node, client = row["node_cpu_us_per_call"], row["client_cpu_us_per_call"]
            print(
                f"  tenth {i:2}: {row['per_s']:>8,.0f} calls/s, CPU per call: node "
                f"{_num(node, 'us')} µs, client {_num(client, 'us')} µs; log "
                f"{row['log_bytes_per_call']:,.0f} B per call, errors {row['errors']}  "
                f"[{_load(row['load_average'])}]"
            )
        print_figures(soak, soak["in_flight"])
        return
    c = st["concurrency"]
    print(
        f"{st['calls']} calls per run, {c} in flight, {st['payload_bytes']} B payload; module "
        f"executor {st['executor']}, {st['node_processes']} node process(es)"
    )
    for mode, base in report["baselines"].items():
        where = "in its own process" if mode == "process" else "in-process"
        for name, runs in base.items():
            s, k = runs["seq"], runs["conc"]
            print(
                f"{name}, responder {where}: median {s['median_ms']:.3f} ms, p99 "
                f"{s['p99_ms']:.3f} ms [{_load(s['load_average'])}]; {k['per_s']:,.0f}/s "
                f"at {c} [{_load(k['load_average'])}]{_errors(s, k)}"
            )
    for mode, figures in report["figures"].items():
        print(f"fedhub call, node {'in its own process' if mode == 'process' else 'in-process'}:")
        print_figures(figures, c)
        runs = report["runs"][mode]
        if _errors(runs["seq"], runs["conc"]):
            print(f" {_errors(runs['seq'], runs['conc'])}")
    for name, peer in report.get("peers", {}).items():
        if "skipped" in peer:
            print(f"peer {name}: skipped ({peer['skipped']})")
            continue
        print(f"fedhub against peer {name} (worker in its own process):")
        print_figures(peer, c)
