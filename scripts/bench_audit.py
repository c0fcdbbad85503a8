#!/usr/bin/env python3
"""Benchmark the event log and the auditor against raw baselines measured in the same run.

    python scripts/bench_audit.py --events 100000 [--keep PATH] [--json] [--batch 256]
                                  [--synchronous normal|full] [--repeat 3]
                                  [--ids sequential|random]

Builds a log of N events through the real append path (node.eventlog.EventLog: canonical
bodies, hash chain, one signature per group commit, projections, a checkpoint every 1000
events) with a realistic mix (accepted / completed per request, as version 2 logs them), then
reports (each figure measured between two runs of its raw baseline, whose mean is used;
``--repeat R`` runs the audits and baselines R times and reports medians; the load average
is printed because the machine may be shared):

* append events/s               vs raw sqlite3 inserts/s (WAL, same batches, same synchronous)
* full audit events/s           vs raw PyNaCl verify/s x cores (every signature, every core)
* chain-and-checkpoints audit   vs raw BLAKE2b chain hashes/s (one core)
* raw PyNaCl verify/s on one core and on every core, raw BLAKE2b hashes/s
* log bytes per event           vs the mean canonical body per event (what the file adds:
                                  hash, signature, indexes, projections, checkpoints)

Issue targets (2-core machine): full audit of 1,000,000 events, every signature checked,
in <= 6 s; durable append >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.signing

from hub.audit import audit_events
from hub.canonical import b64e, canonical_bytes
from hub.chain import leaf_hash
from hub.crypto import blake2b_256
from hub.events import (
    DOMAIN_COMMIT,
    NodeStarted,
    RequestCompleted,
)
from hub.keys import KeyPair
from hub.logfile import iter_sqlite
from hub.records import sign_record
from node.bootstrap import key_record
from node.eventlog import EventLog
from node.projections import AcceptedCall

SITE = "hereon"


# A caller's signed header of the size a real call carries (~600 bytes: ids, times, the
# reply inbox, schema and payload hashes, the content key wrapped for the node).
_SIG = b64e(bytes(64))


def _header(rid: str) -> str:
    return b64e(
        canonical_bytes(
            {
                "caller": "klaus@geomar",
                "function": "compute_sum",
                "id": rid,
                "kid": "0" * 20,
                "module": "climate",
                "nonce": b64e(bytes(16)),
                "payload_hash": "ab" * 32,
                "payload_size": 1234,
                "reply": "fh.inbox.geomar.klaus." + "r" * 22,
                "schema_hash": "cd" * 32,
                "site": SITE,
                "time": "2026-11-30T10:00:00.000000Z",
                "timeout_ms": 300000,
                "v": 1,
                "wraps": {"0" * 20: b64e(bytes(104))},
            }
        )
    )


def _request(i: int, random_ids: bool = False) -> list[Any]:
    """One call as a node logs it (version 2): accepted with the signed header (and, as
    the node's pipeline builds it, who asked for what, read from the verified header),
    completed."""
    # clients draw ids at random (secrets.token_urlsafe(16)); sequential ones keep the
    # projection's id index at its right edge, the figure the target was set on
    rid = b64e(blake2b_256(b"%d" % i)[:16]) if random_ids else f"req{i:010d}"
    return [
        AcceptedCall.of(
            "klaus@geomar",
            f"{SITE}.climate.compute_sum",
            None,
            request_id=rid,
            header=_header(rid),
            sig=_SIG,
        ),
        RequestCompleted(
            request_id=rid,
            result_hash="cd" * 32,
            result_size=99,
            duration_us=1500,
            object=f"results/{rid}",
        ),
    ]


def build(
    path: Path, n: int, batch: int, synchronous: str, random_ids: bool = False
) -> tuple[float, float, float, KeyPair]:
    """Append about ``n`` events; return (seconds spent appending, CPU seconds of the
    appending thread, CPU seconds of the process meanwhile (the WAL checkpointer's
    thread too), site key)."""
    site = KeyPair.generate(f"site:{SITE}")
    node = KeyPair.generate(f"node:{SITE}/n1")
    log = EventLog(path, node, checkpoint_every=1000, synchronous=synchronous)  # type: ignore[arg-type]
    record = sign_record(key_record(node, SITE, "node"), site.signing_key)
    log.initialize(SITE, site.sign_public, record)
    log.append(NodeStarted(version="bench", pid=os.getpid()))
    # Event models are built beforehand: the benchmark measures the log, not pydantic.
    per_batch = max(1, batch // 2)
    batches: list[list[Any]] = []
    i = 0
    total = 2
    while total < n:
        evs: list[Any] = []
        for _ in range(per_batch):
            evs.extend(_request(i, random_ids))
            i += 1
        evs = evs[: n - total]
        batches.append(evs)
        total += len(evs) + (total + len(evs)) // 1000 - total // 1000
    started = time.perf_counter()
    thread0, process0 = time.thread_time(), time.process_time()
    for evs in batches:
        log.append_many(evs)
    seconds = time.perf_counter() - started
    thread_s, process_s = time.thread_time() - thread0, time.process_time() - process0
    log.close()
    return seconds, thread_s, process_s, site


def raw_sqlite(folder: Path, n: int, batch: int, synchronous: str) -> float:
    """Rows/s of plain sqlite3 inserts of event-sized rows (WAL, batches per transaction)."""
    for name in ("raw.db", "raw.db-wal", "raw.db-shm"):
        (folder / name).unlink(missing_ok=True)
    conn = sqlite3.connect(folder / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute(
        "CREATE TABLE t (seq INTEGER PRIMARY KEY, hash BLOB, sig BLOB, body BLOB, type TEXT,"
        " time TEXT, request_id TEXT)"
    )
    body = b"x" * 420
    rows = [
        (i, os.urandom(32), os.urandom(64), body, "request.started", "2026-01-01", f"r{i}")
        for i in range(1, n + 1)
    ]
    started = time.perf_counter()
    for i in range(0, n, batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)", rows[i : i + batch])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return n / seconds


def raw_verify(n: int, threads: int) -> float:
    """Ed25519 verifications/s of event signatures (domain || 32-byte hash)."""
    sk = nacl.signing.SigningKey.generate()
    pk = bytes(sk.verify_key)
    msgs = [DOMAIN_COMMIT + os.urandom(32) for _ in range(256)]
    signed = [sk.sign(m).signature + m for m in msgs]
    items = (signed * (n // len(signed) + 1))[:n]
    open_ = nacl.bindings.crypto_sign_open

    def run(chunk: list[bytes]) -> None:
        for sm in chunk:
            open_(sm, pk)

    started = time.perf_counter()
    if threads == 1:
        run(items)
    else:
        step = -(-n // threads)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, [items[i : i + step] for i in range(0, n, step)]))
    return n / (time.perf_counter() - started)


def raw_blake2b(n: int) -> float:
    """Chain hashes/s: BLAKE2b-256 leaf hashes of 420-byte bodies on one core."""
    bodies = [os.urandom(420) for _ in range(1024)]
    started = time.perf_counter()
    for i in range(n):
        leaf_hash(bodies[i & 1023])
    return n / (time.perf_counter() - started)


def log_bytes(path: Path) -> tuple[int, float]:
    """(bytes of the log's files: database + WAL, mean canonical body bytes per event)."""
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        (mean_body,) = conn.execute("SELECT AVG(LENGTH(body)) FROM events").fetchone()
    finally:
        conn.close()
    return size, float(mean_body or 0.0)


def audit_rate(path: Path, site: KeyPair, signatures: bool, threads: int) -> tuple[float, float]:
    """(events/s, seconds) of auditing the SQLite log."""
    started = time.perf_counter()
    report = audit_events(
        iter_sqlite(path),
        trusted_sites={SITE: site.sign_public},
        verify_signatures=signatures,
        threads=threads,
    )
    seconds = time.perf_counter() - started
    if not report.ok:
        first = report.first
        raise SystemExit(f"benchmark log does not audit clean: {first.line() if first else ''}")
    return report.events / seconds, seconds


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="leave the SQLite log at this path")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch", type=int, default=256, help="events per append (group commit)")
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    parser.add_argument(
        "--ids",
        choices=["sequential", "random"],
        default="sequential",
        help="request ids: sequential (the issue's figure) or random, as clients draw them",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="audit and baseline rounds (medians reported)"
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedhub-bench-") as tmp:
        folder = Path(tmp)
        db = folder / "events.db"
        # Each figure is measured between two runs of its raw baseline (their mean is the
        # baseline), so a change in the machine's load shows up in both.
        sample = min(args.events, 50_000)
        sqlite_n = min(args.events, 200_000)
        sqlite_before = raw_sqlite(folder, sqlite_n, args.batch, args.synchronous)
        append_s, append_thread_s, append_cpu_s, site = build(
            db, args.events, args.batch, args.synchronous, args.ids == "random"
        )
        sqlite_after = raw_sqlite(folder, sqlite_n, args.batch, args.synchronous)
        with EventLog.open_readonly(db) as ro:
            events = ro.size
        file_bytes, body_bytes = log_bytes(db)
        rounds: dict[str, list[float]] = {
            k: [] for k in ("full", "full_s", "chain", "chain_s", "v1", "vn", "blake")
        }
        for _ in range(max(1, args.repeat)):
            v1_before, vn_before = raw_verify(sample, 1), raw_verify(sample, cores)
            full_rate, full_s = audit_rate(db, site, True, cores)
            v1_after, vn_after = raw_verify(sample, 1), raw_verify(sample, cores)
            blake_before = raw_blake2b(min(events, 500_000))
            chain_rate, chain_s = audit_rate(db, site, False, cores)
            blake_after = raw_blake2b(min(events, 500_000))
            rounds["full"].append(full_rate)
            rounds["full_s"].append(full_s)
            rounds["chain"].append(chain_rate)
            rounds["chain_s"].append(chain_s)
            rounds["v1"].append((v1_before + v1_after) / 2)
            rounds["vn"].append((vn_before + vn_after) / 2)
            rounds["blake"].append((blake_before + blake_after) / 2)
        if args.keep:
            shutil.copyfile(db, args.keep)
    load_after = os.getloadavg()
    sqlite_rate = (sqlite_before + sqlite_after) / 2
    append_rate = events / append_s
    full_ratios = [f / (v * cores) for f, v in zip(rounds["full"], rounds["v1"], strict=True)]
    full_ratios_n = [f / v for f, v in zip(rounds["full"], rounds["vn"], strict=True)]
    chain_ratios = [c / b for c, b in zip(rounds["chain"], rounds["blake"], strict=True)]
    full_rate, full_s = statistics.median(rounds["full"]), statistics.median(rounds["full_s"])
    chain_rate, chain_s = statistics.median(rounds["chain"]), statistics.median(rounds["chain_s"])
    verify1, verify_n, blake = (
        statistics.median(rounds["v1"]),
        statistics.median(rounds["vn"]),
        statistics.median(rounds["blake"]),
    )
    figures: dict[str, Any] = {
        "events": events,
        "cores": cores,
        "synchronous": args.synchronous,
        "batch": args.batch,
        "request_ids": args.ids,
        "repeat": max(1, args.repeat),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "append": {
            "events_per_s": round(append_rate),
            "baseline": "raw sqlite3 inserts/s, WAL, same batches",
            "baseline_per_s": round(sqlite_rate),
            "ratio": round(append_rate / sqlite_rate, 3),
            # CPU time per event (steadier than the rate on a shared machine): the
            # appending thread, and the whole process (with the WAL checkpointer's thread)
            "thread_cpu_us_per_event": round(append_thread_s / events * 1e6, 2),
            "process_cpu_us_per_event": round(append_cpu_s / events * 1e6, 2),
        },
        "audit_full": {
            "events_per_s": round(full_rate),
            "seconds": round(full_s, 3),
            "baseline": f"raw PyNaCl verify/s on one core x {cores}",
            "baseline_per_s": round(verify1 * cores),
            "ratio": round(statistics.median(full_ratios), 3),
            "ratio_to_measured_all_cores": round(statistics.median(full_ratios_n), 3),
        },
        "audit_chain_only": {
            "events_per_s": round(chain_rate),
            "seconds": round(chain_s, 3),
            "seconds_per_million": round(1e6 / chain_rate, 2),
            "baseline": "raw BLAKE2b-256 chain hashes/s, one core",
            "baseline_per_s": round(blake),
            "ratio": round(statistics.median(chain_ratios), 3),
        },
        "log_bytes": {
            "bytes_per_event": round(file_bytes / events, 1),
            "file_bytes": file_bytes,
            "baseline": "mean canonical event body bytes",
            "baseline_bytes_per_event": round(body_bytes, 1),
            "ratio": round(file_bytes / events / body_bytes, 3) if body_bytes else None,
        },
        "raw_verify_1_core_per_s": round(verify1),
        "raw_verify_all_cores_per_s": round(verify_n),
        "raw_blake2b_per_s": round(blake),
        "raw_sqlite_insert_per_s": round(sqlite_rate),
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    a, f, c = figures["append"], figures["audit_full"], figures["audit_chain_only"]
    rounds_note = f", medians of {figures['repeat']} rounds" if figures["repeat"] > 1 else ""
    print(
        f"events                 {events:,} ({cores} cores, synchronous={args.synchronous},"
        f" batch {args.batch}{rounds_note})"
    )
    print(f"load average           {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    print(
        f"append                 {a['events_per_s']:>10,} events/s   "
        f"x{a['ratio']:.2f} of raw sqlite3 {a['baseline_per_s']:,} rows/s"
        f"  (CPU {a['thread_cpu_us_per_event']:.2f} us/event, with other threads"
        f" {a['process_cpu_us_per_event']:.2f})"
    )
    print(
        f"audit, all signatures  {f['events_per_s']:>10,} events/s   "
        f"x{f['ratio']:.2f} of raw verify x{cores} {f['baseline_per_s']:,}/s  ({full_s:.2f} s)"
        f"  [x{f['ratio_to_measured_all_cores']:.2f} of raw verify measured on {cores} threads]"
    )
    print(
        f"audit, chain only      {c['events_per_s']:>10,} events/s   "
        f"x{c['ratio']:.2f} of raw BLAKE2b {c['baseline_per_s']:,}/s  "
        f"({c['seconds_per_million']:.2f} s per million)"
    )
    lb = figures["log_bytes"]
    print(
        f"log bytes per event    {lb['bytes_per_event']:>10,.0f} B          "
        f"x{lb['ratio']:.2f} of the mean event body {lb['baseline_bytes_per_event']:,.0f} B"
        f"  ({lb['file_bytes']:,} B in all)"
    )
    print(
        f"raw verify             {round(verify1):>10,} /s one core, "
        f"{round(verify_n):,} /s on {cores} threads"
    )
    print(f"raw BLAKE2b            {round(blake):>10,} /s one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
