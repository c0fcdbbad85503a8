"""How fast a revocation at a person's home site stops their calls at another site.

A local federation (hub, leaves ``hereon`` and ``geomar``), a node at each site (in this
process), and per round a new person of geomar, registered at geomar and granted at
hereon through the federation directory, who keeps calling ``hereon.bench.echo`` with
``--in-flight`` calls in flight. Then geomar's operator revokes the person's key at
geomar's node; the script measures

* ``applied_ms``: from sending the revocation until hereon's node holds it (the node's
  in-memory directory, polled every 0.5 ms), and
* ``refused_ms``: until the first of the person's calls is refused at hereon,

next to the baseline ``raw_ms``: a plain JetStream publish into geomar's ``FH_DIR`` until
it arrives through the hub at a watcher of hereon's ``FH_DIRECTORY`` (the same two
stream-source hops, no crypto, no log).

Usage: ``python scripts/bench_directory.py [--rounds 5] [--in-flight 4] [--json]``.
Run it on a quiet machine: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_calls import ADDRESS, write_node_config
from benchlib import CALLER_SITE, SITE, load_average, say

from hub.cli_keys import vouch_record
from hub.client import Client
from hub.cliutil import configure_logging
from hub.clock import now
from hub.directory import record_token
from hub.errors import FederationError, UnauthorizedError
from hub.keys import KeyPair, KeyStore
from hub.nats import LocalFederation, connect
from hub.records import GrantRecord, Revocation, SignedRecord, sign_record
from hub.subjects import DIRECTORY_STREAM, admin_subject, directory_subject
from node.admin import admin_message
from node.bootstrap import open_log
from node.config import NodeConfig, load_config
from node.daemon import NodeDaemon

LIMIT = 30.0  # seconds one measurement may take before the round is abandoned


def geomar_config(root: Path, fed: LocalFederation) -> NodeConfig:
    """A node at geomar (no modules): it takes geomar's directory records."""
    store = KeyStore(root / "keys")
    path = root / "geomar-n1.toml"
    path.write_text(
        "\n".join(
            [
                "[node]",
                f'site = "{CALLER_SITE}"',
                'name = "n1"',
                f"data_dir = {json.dumps(str(root / 'geomar-node'))}",
                f"key_home = {json.dumps(str(store.home))}",
                "[nats]",
                f"url = {json.dumps(fed.site_url(CALLER_SITE))}",
                "[log]",
                'level = "warning"',
            ]
        )
        + "\n"
    )
    cfg = load_config(path)
    open_log(cfg, create=True).close()
    return cfg


def person_record(store: KeyStore, ident: str) -> tuple[KeyPair, SignedRecord]:
    pair = store.create(ident)
    return pair, vouch_record(store.load(f"site:{CALLER_SITE}"), store.public(ident))


async def raw_latency(fed: LocalFederation, store: KeyStore, samples: int) -> list[float]:
    """Publish into geomar's FH_DIR, watch hereon's FH_DIRECTORY: milliseconds each."""
    geomar = await connect(fed.site_url(CALLER_SITE))
    hereon = await connect(fed.site_url(SITE))
    arrived: asyncio.Queue[tuple[float, str]] = asyncio.Queue()

    async def seen(msg: Any) -> None:
        arrived.put_nowait((time.perf_counter(), msg.subject))

    sub = await hereon.jetstream().subscribe(
        f"fh.dir.{CALLER_SITE}.key.>", stream=DIRECTORY_STREAM, ordered_consumer=True, cb=seen
    )
    # a known record under fresh subjects: the nodes hold it already and ignore it
    signed = person_record(store, f"raw{time.monotonic_ns()}@{CALLER_SITE}")[1]
    out = []
    try:
        await asyncio.sleep(0.5)
        while not arrived.empty():
            arrived.get_nowait()
        # sample 0 warms up: a source created before its origin stream existed retries
        # only every few seconds, so the first record of a new federation may wait
        for i in range(samples + 1):
            subject = directory_subject(CALLER_SITE, "key", f"{record_token(signed)}{i:04d}")
            start = time.perf_counter()
            await geomar.jetstream().publish(subject, signed.model_dump_json().encode())
            while True:
                at, got = await asyncio.wait_for(arrived.get(), LIMIT)
                if got == subject:
                    if i > 0:
                        out.append((at - start) * 1000)
                    break
    finally:
        await sub.unsubscribe()
        await geomar.close()
        await hereon.close()
    return out


async def until(check: Any) -> float:
    """Poll ``check()`` every 0.5 ms (for at most LIMIT s); the time it became true."""
    for _ in range(int(LIMIT / 0.0005)):
        if check():
            return time.perf_counter()
        await asyncio.sleep(0.0005)
    raise TimeoutError("the revocation did not arrive in time")


async def one_round(
    fed: LocalFederation, store: KeyStore, node: NodeDaemon, ident: str, in_flight: int
) -> dict[str, float]:
    """Register, grant, call, revoke: the delays of one revocation under load."""
    pair, record = person_record(store, ident)
    admin = {site: await connect(fed.site_url(site)) for site in (SITE, CALLER_SITE)}
    grant = GrantRecord(
        site=SITE, principal=ident, module="bench", function="echo", serial=1, time=now()
    )
    try:
        await admin[CALLER_SITE].request(
            admin_subject(CALLER_SITE), admin_message("register", record), timeout=5
        )
        await admin[SITE].request(
            admin_subject(SITE),
            admin_message("grant", sign_record(grant, store.load(f"site:{SITE}").signing_key)),
            timeout=5,
        )
        async with await Client.connect(fed.site_url(CALLER_SITE), ident, home=store.home) as cl:
            refused: list[float] = []
            calls = 0

            async def caller() -> None:
                nonlocal calls
                while not refused:
                    try:
                        await cl.call(ADDRESS, x="ping", timeout=10)
                        calls += 1
                    except UnauthorizedError:
                        refused.append(time.perf_counter())
                    except FederationError:
                        await asyncio.sleep(0.01)  # not registered at hereon yet

            async with asyncio.timeout(LIMIT):  # until the record and grant reached hereon
                while calls == 0:
                    with contextlib.suppress(FederationError):
                        await cl.call(ADDRESS, x="ping", timeout=10)
                        calls += 1
                    await asyncio.sleep(0.01)
            tasks = [asyncio.create_task(caller()) for _ in range(in_flight)]
            await asyncio.sleep(0.5)
            before = calls
            revocation = Revocation(identity=ident, kid=pair.kid, time=now(), reason="bench")
            signed = sign_record(revocation, store.load(f"site:{CALLER_SITE}").signing_key)
            start = time.perf_counter()
            await admin[CALLER_SITE].request(
                admin_subject(CALLER_SITE), admin_message("revoke", signed), timeout=5
            )
            directory = node.directory
            assert directory is not None
            applied = await until(lambda: pair.kid in directory.revoked)
            await until(lambda: bool(refused))
            await asyncio.gather(*tasks)
    finally:
        for nc in admin.values():
            await nc.close()
    return {
        "applied_ms": (applied - start) * 1000,
        "refused_ms": (min(refused) - start) * 1000,
        "calls_before": float(before),
    }


async def bench(rounds: int, in_flight: int, samples: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fedhub-bench-dir-"))
    load_start = load_average()
    # open site ports (the operator's admin requests and the raw watcher log in as
    # nobody); starting sets up the hub's directory from the generated files
    async with LocalFederation(root / "fed", sites=(SITE, CALLER_SITE), secure=False) as fed:
        hereon_cfg = write_node_config(root, fed)
        geomar_cfg = geomar_config(root, fed)
        store = KeyStore(root / "keys")
        async with NodeDaemon(hereon_cfg) as hereon, NodeDaemon(geomar_cfg):
            say("measuring the raw baseline")
            raw = await raw_latency(fed, store, samples)
            results = []
            for r in range(rounds):
                say(f"round {r + 1}/{rounds}")
                results.append(
                    await one_round(
                        fed, store, hereon, f"p{r}-{time.monotonic_ns()}@geomar", in_flight
                    )
                )

    def med(key: str) -> float:
        return round(statistics.median(x[key] for x in results), 3)

    return {
        "rounds": rounds,
        "in_flight": in_flight,
        "raw_ms_median": round(statistics.median(raw), 3),
        "raw_ms_max": round(max(raw), 3),
        "applied_ms_median": med("applied_ms"),
        "applied_ms_max": round(max(x["applied_ms"] for x in results), 3),
        "refused_ms_median": med("refused_ms"),
        "refused_ms_max": round(max(x["refused_ms"] for x in results), 3),
        "load_average": {"start": load_start, "end": load_average()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="revocations to measure")
    parser.add_argument("--in-flight", type=int, default=4, help="calls in flight meanwhile")
    parser.add_argument("--samples", type=int, default=50, help="raw baseline samples")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opts = parser.parse_args(argv)
    configure_logging(level="error")
    report = asyncio.run(bench(opts.rounds, opts.in_flight, opts.samples))
    if opts.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
