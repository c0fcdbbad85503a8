#!/usr/bin/env python3
"""What a call's guarantees cost over the raw durable round trip, with the least Python.

    python scripts/bench_floor.py [--calls 2000] [--rounds 2] [--executor thread|inline]
                                  [--json]

The raw durable round trip of ``bench_calls.py`` (``bench_baselines.py``: a JetStream
publish into a work-queue stream on hereon's leaf, a pull consumer there echoing to the
caller's inbox on geomar's leaf), and the same round trip carrying what a fedhub call
must carry, written as directly as the primitives allow, with none of fedhub's own code
on the path but :mod:`hub.crypto`:

* the caller seals the payload under a fresh content key wrapped for the responder and
  signs (Ed25519) a header holding the payload's BLAKE2b hash;
* the responder checks the signature and the hash, unwraps and opens the payload, and
  commits a signed, hash-chained row to SQLite (WAL, ``synchronous=NORMAL``) before it
  runs the call (an echo: on a worker thread, as fedhub's default ``thread`` executor
  runs a function, or with ``--executor inline`` on the loop); it seals the result for
  the caller, commits a second signed row, replies, and acks;
* the caller opens the reply, checking that the responder's key wrapped it.

No pydantic, no canonical JSON, no projections, no replay memory, no result store (fedhub
stores a result after its reply). Both legs run one call at a time, ``--rounds`` times
interleaved (raw, guarded, raw, guarded ...), the responders each in a process of their
own. The ratio of the guarded round trip to the raw one is about the least such a call
costs relative to the raw durable path on this machine with these libraries (Python's
asyncio, nats-py, PyNaCl, sqlite3), whatever the code around them: it shows how much of
a latency target the guarantees themselves take, and how much is left for the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import nats
from bench_baselines import (
    RAW_DURABLE,
    DurableRequester,
    DurableResponder,
    _end,
    bench_durable,
    until_reachable,
)
from benchlib import (
    CALLER_SITE,
    PAYLOAD,
    SITE,
    STOP,
    CpuMeter,
    Processes,
    Run,
    load_average,
    measure,
    say,
    warm_up,
)
from nats.aio.msg import Msg

from hub.cliutil import configure_logging
from hub.crypto import (
    blake2b_256,
    open_secret,
    seal_payload,
    sign,
    unwrap_key,
    verify,
)
from hub.nats import LocalFederation, start_local_federation

GUARDED = "raw durable round trip with the guarantees"
_D_REQUEST, _D_COMMIT = b"floor-request\0", b"floor-commit\0"
_WRAP = 32 + 24 + 16 + 32  # sender's X25519 key, nonce, MAC, content key
_SIG = 64
_REPLY, _ID = "Fh-Reply", "Fh-Id"


class GuardedResponder(DurableResponder):
    """:class:`DurableResponder` that checks, opens, logs, seals and logs again."""

    def __init__(
        self,
        url: str,
        stream: str,
        subject: str,
        caller_sign: bytes,
        caller_box: bytes,
        executor: str,
    ) -> None:
        super().__init__(url, stream, subject)
        self.caller_sign, self.caller_box = caller_sign, caller_box
        self.pool = ThreadPoolExecutor(1) if executor == "thread" else None
        self.sign_key = nacl.signing.SigningKey.generate()
        self.box_key = nacl.public.PrivateKey.generate()
        self.folder = Path(tempfile.mkdtemp(prefix="fedhub-bench-floor-"))
        self.db = sqlite3.connect(self.folder / "log.db", isolation_level=None)
        self.db.execute("PRAGMA page_size=16384")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE log (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, sig BLOB NOT NULL,"
            " body BLOB NOT NULL)"
        )
        self.seq, self.prev = 0, bytes(32)

    @property
    def box_public(self) -> bytes:
        return bytes(self.box_key.public_key)

    def _commit(self, body: bytes) -> None:
        """One signed, chained row in one transaction (a commit of one event)."""
        leaf = blake2b_256(self.prev + body)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute(
            "INSERT INTO log VALUES (?, ?, ?, ?)",
            (self.seq + 1, leaf, sign(self.sign_key, _D_COMMIT, leaf), body),
        )
        self.db.execute("COMMIT")
        self.seq, self.prev = self.seq + 1, leaf

    async def _answer(self, msg: Msg) -> None:
        assert self.consumer is not None
        try:
            data, headers = msg.data, msg.headers or {}
            header, sig = data[:48], data[48 : 48 + _SIG]
            wrap, sealed = data[48 + _SIG : 48 + _SIG + _WRAP], data[48 + _SIG + _WRAP :]
            verify(self.caller_sign, _D_REQUEST, header, sig)
            if header[16:] != blake2b_256(wrap + sealed):
                raise ValueError("payload hash differs from the signed header")
            plain = open_secret(unwrap_key(bytes(self.box_key), wrap), sealed)
            self._commit(header + sig)  # accepted, before it runs
            if self.pool is None:  # the call: an echo
                result = bytes(plain)
            else:
                result = await asyncio.get_running_loop().run_in_executor(self.pool, bytes, plain)
            out = seal_payload(result, bytes(self.box_key), self.box_public, {"c": self.caller_box})
            reply = out.wraps["c"] + out.ciphertext
            self._commit(header[:16] + blake2b_256(reply))  # completed, before the reply
            await self.nc.publish(headers[_REPLY], reply, headers={_ID: headers[_ID]})
            await msg.ack()
        finally:
            self.consumer.release()

    async def stop(self) -> None:
        await super().stop()
        if self.pool is not None:
            self.pool.shutdown()
        self.db.close()
        shutil.rmtree(self.folder, ignore_errors=True)


async def bench_guarded(
    fed: LocalFederation, procs: Processes, opts: argparse.Namespace
) -> dict[str, Run]:
    """The guarded round trip from geomar's leaf to a responder process on hereon's."""
    caller_sign = nacl.signing.SigningKey.generate()
    caller_box = nacl.public.PrivateKey.generate()
    token = secrets.token_hex(4)
    stream, subject = f"RAWFLOOR_{token}", f"fh.info.{SITE}.rawfloor.{token}"
    proc = procs.start(
        [
            sys.executable,
            __file__,
            "serve-guarded",
            fed.site_url(SITE),
            stream,
            subject,
            bytes(caller_sign.verify_key).hex(),
            bytes(caller_box.public_key).hex(),
            opts.executor,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    words = line.split()
    if words[:1] != [b"ready"] or len(words) != 2:
        await _end(proc)
        raise RuntimeError("the guarded responder did not start")
    node_box = bytes.fromhex(words[1].decode())
    nc = await nats.connect(fed.site_url(CALLER_SITE))
    requester = await DurableRequester.start(nc, subject, "rawfloor")
    my_secret, my_public = bytes(caller_box), bytes(caller_box.public_key)
    payload = os.urandom(PAYLOAD)

    async def call() -> object:
        sealed = seal_payload(payload, my_secret, my_public, {"n": node_box})
        body = sealed.wraps["n"] + sealed.ciphertext
        header = secrets.token_bytes(16) + blake2b_256(body)
        reply = await requester.round_trip(header + sign(caller_sign, _D_REQUEST, header) + body)
        wrap = reply[:_WRAP]
        if wrap[:32] != node_box:
            raise ValueError("the reply was not sealed by the responder")
        result = open_secret(unwrap_key(my_secret, wrap), reply[_WRAP:])
        if result != payload:
            raise RuntimeError("the echo differs")
        return result

    cpu = CpuMeter("requester")
    cpu.add("responder", proc.pid)
    for server in [fed.hub, *fed.leaves.values()]:
        cpu.add("nats", server.pid)
    try:
        await until_reachable(call)
        await warm_up(call, opts.warmup)
        seq = await measure(
            call, count=opts.calls, concurrency=1, max_seconds=opts.max_seconds, cpu=cpu
        )
        return {"seq": seq}
    finally:
        await nc.close()
        await _end(proc)


async def _run(root: Path, procs: Processes, opts: argparse.Namespace) -> dict[str, list[Run]]:
    fed = await start_local_federation(root / "nats", (SITE, CALLER_SITE), secure=False)
    runs: dict[str, list[Run]] = {RAW_DURABLE: [], GUARDED: []}
    try:
        for i in range(opts.rounds):
            say(f"round {i + 1}: {RAW_DURABLE} ...")
            runs[RAW_DURABLE].append(
                (await bench_durable(fed, procs, opts, in_process=False))["seq"]
            )
            say(f"round {i + 1}: {GUARDED} ...")
            runs[GUARDED].append((await bench_guarded(fed, procs, opts))["seq"])
    finally:
        await fed.stop()
    return runs


async def _serve_guarded(args: list[str]) -> None:
    url, stream, subject, sign_hex, box_hex, executor = args
    responder = GuardedResponder(
        url, stream, subject, bytes.fromhex(sign_hex), bytes.fromhex(box_hex), executor
    )
    await responder.start()
    print("ready", responder.box_public.hex(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await responder.stop()


def main() -> int:
    """Run both round trips and print their medians and ratio."""
    if sys.argv[1:2] == ["serve-guarded"]:
        asyncio.run(_serve_guarded(sys.argv[2:]))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measured run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls per run")
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument(
        "--executor",
        choices=["thread", "inline"],
        default="thread",
        help="where the guarded responder runs the echo (fedhub's default: thread)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opts = parser.parse_args()
    # bench_durable measures a second run at this many in flight; one is enough here
    opts.concurrency = 1
    configure_logging(level="warning")
    load_start = load_average()
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="fedhub-bench-floor-"))
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, STOP.handler)
        runs = asyncio.run(_run(root, procs, opts))
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    load_end = load_average()
    medians = {name: [r.quantile(0.5) * 1e3 for r in rs] for name, rs in runs.items()}
    raw, guarded = statistics.median(medians[RAW_DURABLE]), statistics.median(medians[GUARDED])
    figures: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "load_average": {"start": load_start, "end": load_end},
        "settings": {
            "calls": opts.calls,
            "rounds": opts.rounds,
            "payload_bytes": PAYLOAD,
            "executor": opts.executor,
        },
        "guarded_median_ms": {
            "measured": round(guarded, 3),
            "baseline": RAW_DURABLE,
            "baseline_ms": round(raw, 3),
            "ratio": round(guarded / raw, 3),
        },
        "rounds": {name: [r.summary() for r in rs] for name, rs in runs.items()},
    }
    if opts.json:
        print(json.dumps(figures))
        return 0
    print(f"load average {load_start[0]:.2f} -> {load_end[0]:.2f} (1 min)")
    for name, ms in medians.items():
        rounds = ", ".join(f"{m:.3f}" for m in ms)
        print(f"{name:<44} {statistics.median(ms):.3f} ms  (median of each round: {rounds})")
    print(
        f"guarded / raw durable: x{guarded / raw:.2f}  (a call at <= 1.5 x raw durable "
        f"has {1.5 * raw - raw:.3f} ms for everything it adds; these guarantees alone add "
        f"{guarded - raw:.3f} ms)"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
