"""Audit across the federation: logs read from the hub's copies, witnessed checkpoints.

A hub and three site leaves, the hub copying every site's ``FH_EVENTS`` and keeping the
federation directory. Nodes at each site countersign each other's checkpoints; a site
that rewrites or rolls back its log after a checkpoint was witnessed is caught, both by
the witnesses and by ``fedhub audit --site ... --url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from support.hostile import audit_node, wait_reachable, wait_until
from support.world import World

from hub.audit import audit_events
from hub.audit.hubcopy import read_site_copy
from hub.canonical import b64d
from hub.client import Client
from hub.clock import now
from hub.fedaudit import audit_hub
from hub.keys import KeyPair
from hub.logfile import iter_jsonl, iter_sqlite
from hub.nats import LocalFederation, ensure_site_streams, source_site_events
from hub.nats import connect as nats_connect
from hub.nats.dirstreams import ensure_hub_directory, ensure_site_directory
from hub.records import Checkpoint, Cosignature, KeyRecord, SignedRecord, sign_record
from hub.subjects import directory_subject
from hub.witness import ConflictNotice, CosignatureNotice, WitnessView, read_witness_view
from node.config import NodeConfig
from node.daemon import NodeDaemon

KLAUS = "klaus@geomar"
SITES = ("hereon", "geomar", "awi")
LIMIT = 20.0
FAST_CHECKPOINTS = {"checkpoint_seconds": 0.2}


@pytest.fixture
async def fed(federation_factory: Callable[..., Awaitable[LocalFederation]]) -> LocalFederation:
    """Three sites; the hub copies every site's events and keeps the directory."""
    # open site client ports and a plain-text hub user (the audit CLI takes a hub URL)
    federation = await federation_factory(SITES, secure=False)
    for site in SITES:  # the sites' streams first: a source waits for its origin
        nc = await nats_connect(federation.site_url(site))
        try:
            await ensure_site_streams(nc.jetstream(), site)
            await ensure_site_directory(nc.jetstream(), site)
        finally:
            await nc.close()
    hub = await nats_connect(federation.hub_url)
    try:
        js = hub.jetstream(domain="hub")
        for site in SITES:
            await source_site_events(js, site)
        await ensure_hub_directory(js, SITES)
    finally:
        await hub.close()
    return federation


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(KLAUS)
    return w


def config(world: World, fed: LocalFederation, site: str, **extra: Any) -> NodeConfig:
    others = [s for s in SITES if s != site]
    return world.node_config(
        site, nats_url=fed.site_url(site), trust=others, log=FAST_CHECKPOINTS, **extra
    )


def hereon_config(world: World, fed: LocalFederation, *, init: bool = True) -> NodeConfig:
    return config(world, fed, "hereon", users=[KLAUS], grants=[(KLAUS, "climate", "*")], init=init)


def pinned(world: World) -> dict[str, bytes]:
    return {site: world.site(site).sign_public for site in SITES}


def rows(events: Any) -> list[tuple[bytes, bytes, bytes]]:
    return [(raw.hash, raw.sig, raw.body) for raw in events]


async def some_calls(world: World, fed: LocalFederation, n: int = 3) -> None:
    async with await Client.connect(fed.site_url("geomar"), KLAUS, home=world.store.home) as c:
        await wait_reachable(c, "hereon", "climate")
        for i in range(n):
            assert await c.call("hereon.climate.scale", values=[float(i)], timeout=10) == [2.0 * i]


async def hub_copy_size(fed: LocalFederation, folder: Path) -> int:
    nc = await nats_connect(fed.hub_url)
    try:
        logs = await read_site_copy(nc, "hereon", folder)
    finally:
        await nc.close()
    return sum(log.events for log in logs)


async def hub_view(fed: LocalFederation, world: World) -> WitnessView:
    """What the witnesses published, as the hub holds it (checked with the pinned keys)."""
    nc = await nats_connect(fed.hub_url)
    try:
        view = await read_witness_view(nc.jetstream(domain="hub"))
    finally:
        await nc.close()
    view.verify(pinned(world))
    return view


def cosigned(node: NodeDaemon, log: str, size: int | None = None) -> bool:
    assert node.federation is not None
    return any(
        action == "cosign" and name == log and (size is None or got >= size)
        for action, name, got in node.federation.witness.judged
    )


def disputes(node: NodeDaemon) -> list[tuple[str, str, int]]:
    assert node.federation is not None
    return [j for j in node.federation.witness.judged if j[0] == "conflict"]


def export(cfg: NodeConfig, out: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "log",
            "export",
            "--db",
            str(cfg.log_path),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr


async def test_the_hub_copy_yields_the_same_events_and_report_as_the_sqlite_log_and_its_export(
    world: World, fed: LocalFederation, tmp_path: Path
) -> None:
    hereon = hereon_config(world, fed)
    async with NodeDaemon(hereon):
        await some_calls(world, fed)
    stored = rows(iter_sqlite(hereon.log_path))

    async def copied() -> bool:
        return await hub_copy_size(fed, tmp_path / "probe") == len(stored)

    await wait_until(copied, LIMIT)
    export(hereon, tmp_path / "log.jsonl")
    nc = await nats_connect(fed.hub_url)
    try:
        [copy] = await read_site_copy(nc, "hereon", tmp_path / "copy")
    finally:
        await nc.close()

    assert rows(copy.raw_events()) == rows(iter_jsonl(tmp_path / "log.jsonl")) == stored
    assert copy.conflicts == []
    trusted = pinned(world)
    from_file = audit_events(iter_sqlite(hereon.log_path), trusted_sites=trusted).to_json()
    from_hub = audit_events(copy.raw_events(), trusted_sites=trusted).to_json()
    assert from_file["ok"] and from_hub == from_file
    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], trusted)
    assert site.ok, site.problems()
    assert site.logs[0][1].to_json() | {"receipts": []} == from_file | {"receipts": []}


async def test_every_other_site_vouches_for_hereons_checkpoints_and_the_cli_says_so(
    world: World, fed: LocalFederation
) -> None:
    hereon = hereon_config(world, fed)
    async with (
        NodeDaemon(hereon) as node,
        NodeDaemon(config(world, fed, "geomar")) as geomar,
        NodeDaemon(config(world, fed, "awi")) as awi,
    ):
        await some_calls(world, fed)
        log_id = node.eventlog.log_id if node.eventlog else ""
        size = node.eventlog.size if node.eventlog else 0
        await wait_until(
            lambda: cosigned(geomar, log_id, size) and cosigned(awi, log_id, size), LIMIT
        )
        assert disputes(geomar) == disputes(awi) == []

    async def both_at_the_hub() -> bool:
        return (await hub_view(fed, world)).vouchers(log_id) == 2

    await wait_until(both_at_the_hub, LIMIT)
    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], pinned(world))
    assert site.ok, site.problems()
    [(copy, _)] = site.logs
    assert site.witness(copy).vouchers() == 2
    assert site.witness(copy).ignored == [], "an honest federation's notices all count"
    # the CLI pins the key store's site keys: every site of this world
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub.cli", "audit", "--all", "--url", fed.hub_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == sorted(SITES)
    hereon_line = next(line for line in lines if line.startswith("hereon:"))
    assert "audit OK" in hereon_line and "vouched by up to 2 other site(s)" in hereon_line


async def test_a_site_that_rewrites_its_log_after_a_witnessed_checkpoint_is_caught(
    world: World, fed: LocalFederation
) -> None:
    hereon = hereon_config(world, fed)
    async with NodeDaemon(config(world, fed, "geomar")) as geomar:
        async with NodeDaemon(hereon) as node:
            await some_calls(world, fed)
            log_id = node.eventlog.log_id if node.eventlog else ""
            await wait_until(lambda: cosigned(geomar, log_id), LIMIT)
        # hereon throws its log away and starts a new history under the same node
        for path in hereon.node.data_dir.glob("events.db*"):
            path.unlink()
        hereon = hereon_config(world, fed)
        async with NodeDaemon(hereon):
            await some_calls(world, fed, 5)
            await wait_until(lambda: bool(disputes(geomar)), LIMIT)
        assert {(action, log) for action, log, _ in disputes(geomar)} == {("conflict", log_id)}

    async def evidence_at_the_hub() -> bool:
        return any(c.log == log_id for c in (await hub_view(fed, world)).conflicts)

    await wait_until(evidence_at_the_hub, LIMIT)

    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], pinned(world))
    assert not site.ok
    problems = "\n".join(site.problems())
    assert "fork" in problems
    [(copy, _)] = site.logs
    assert site.witness(copy).evidence, "the witness's notice is proven by its checkpoints"
    # the node's own file audits clean: only the witnesses and the hub's copy remember
    assert audit_node(hereon, world.site("hereon").sign_public).ok
    done = await run_cli_audit(world, fed)
    print(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("hereon: audit FAILED")
    assert "fork" in done.stdout


async def test_a_site_that_rolls_its_log_back_after_a_witnessed_checkpoint_is_caught(
    world: World, fed: LocalFederation, tmp_path: Path
) -> None:
    hereon = hereon_config(world, fed)
    backup = tmp_path / "backup"
    async with NodeDaemon(config(world, fed, "geomar")) as geomar:
        async with NodeDaemon(hereon) as node:
            await some_calls(world, fed)
            log_id = node.eventlog.log_id if node.eventlog else ""
        backup.mkdir()
        for path in hereon.node.data_dir.glob("events.db*"):
            shutil.copy2(path, backup / path.name)
        async with NodeDaemon(hereon) as node:
            await some_calls(world, fed, 5)
            size = node.eventlog.size if node.eventlog else 0
            await wait_until(lambda: cosigned(geomar, log_id, size), LIMIT)
        for path in hereon.node.data_dir.glob("events.db*"):
            path.unlink()
        for path in backup.iterdir():
            shutil.copy2(path, hereon.node.data_dir / path.name)
        async with NodeDaemon(hereon):  # the older log goes on as if nothing happened
            await some_calls(world, fed, 1)
            await wait_until(lambda: bool(disputes(geomar)), LIMIT)
        assert geomar.federation is not None
    rolled = [j for j in disputes(geomar) if j[1] == log_id]
    assert rolled, geomar.federation.witness.judged

    async def evidence_at_the_hub() -> bool:
        return any(c.log == log_id for c in (await hub_view(fed, world)).conflicts)

    await wait_until(evidence_at_the_hub, LIMIT)

    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], pinned(world))
    assert not site.ok
    [(copy, _)] = site.logs
    evidence = site.witness(copy).evidence
    assert any("rollback" in line for line in evidence), site.problems()
    assert all("both signed by the log's node keys" in line for line in evidence)


# --- notices any site can publish: only what verifies counts ---------------------------

#: awi's own key: a hostile site signs with what it has and claims another site's key id
MALLORY = KeyPair.generate("node:awi/n1")


def forged(record: Checkpoint | Cosignature, claimed_kid: str) -> SignedRecord:
    """``record`` signed by awi's key, claiming ``claimed_kid`` as its signer."""
    return sign_record(record, MALLORY.signing_key).model_copy(update={"signer": claimed_kid})


async def publish_as(fed: LocalFederation, site: str, kind: str, notice: BaseModel) -> None:
    """Publish a witness record in ``site``'s own part of the directory (as any site may)."""
    data = notice.model_dump_json().encode()
    token = hashlib.blake2b(data, digest_size=16).hexdigest()
    nc = await nats_connect(fed.site_url(site))
    try:
        await nc.jetstream().publish(directory_subject(site, kind, token), data, timeout=10)
    finally:
        await nc.close()


def checkpoints_of(cfg: NodeConfig) -> list[SignedRecord]:
    """The log's signed checkpoints, smallest first (read from its SQLite file)."""
    with contextlib.closing(sqlite3.connect(cfg.log_path)) as db:
        rows = db.execute("SELECT signed FROM checkpoints ORDER BY size").fetchall()
    return [SignedRecord.model_validate_json(text) for (text,) in rows]


def size_of(signed: SignedRecord) -> int:
    return Checkpoint.model_validate_json(b64d(signed.record)).size


async def run_cli_audit(world: World, fed: LocalFederation) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub.cli", "audit", "--site", "hereon", "--url", fed.hub_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
    )


@dataclass(frozen=True)
class Witnessed:
    """hereon's log, witnessed by geomar."""

    cfg: NodeConfig
    log_id: str
    kid: str  # hereon's node key
    witness: str  # geomar's log
    witness_key: SignedRecord  # geomar's node key record


async def witnessed_by_geomar(world: World, fed: LocalFederation, rounds: int) -> Witnessed:
    """hereon serves ``rounds`` rounds of calls; geomar cosigns each one's checkpoint."""
    hereon = hereon_config(world, fed)
    async with NodeDaemon(hereon) as node, NodeDaemon(config(world, fed, "geomar")) as geomar:
        assert node.eventlog is not None and geomar.eventlog is not None
        assert geomar.federation is not None
        log_id = node.eventlog.log_id
        for _ in range(rounds):
            await some_calls(world, fed)
            await wait_until(partial(cosigned, geomar, log_id, node.eventlog.size), LIMIT)
        return Witnessed(
            hereon,
            log_id,
            node.eventlog.key.kid,
            geomar.eventlog.log_id,
            geomar.federation.witness.node_key,
        )


async def test_a_forged_cosignature_of_a_forged_checkpoint_fails_no_honest_site(
    world: World, fed: LocalFederation
) -> None:
    """awi publishes a cosignature claiming geomar's node key, of a checkpoint claiming
    hereon's node key: neither signed it, so hereon's audit stays clean and says what
    was ignored (before, the forged checkpoint was held against hereon's log and failed it)."""
    hereon = await witnessed_by_geomar(world, fed, 1)
    log_id, hereon_kid, geomar_log, geomar_key = (
        hereon.log_id,
        hereon.kid,
        hereon.witness,
        hereon.witness_key,
    )
    geomar_kid = KeyRecord.model_validate_json(b64d(geomar_key.record)).kid
    cp = Checkpoint(log=log_id, size=10_000, root="ab" * 32, time=now(), kid=hereon_kid)
    cosig = Cosignature(
        log=log_id,
        size=cp.size,
        root=cp.root,
        checkpoint_time=cp.time,
        witness=geomar_log,
        time=now(),
        kid=geomar_kid,
    )
    notice = CosignatureNotice(
        checkpoint=forged(cp, hereon_kid),
        cosignature=forged(cosig, geomar_kid),
        witness_key=geomar_key,
    )
    await publish_as(fed, "awi", "cosignature", notice)

    async def both_at_the_hub() -> bool:
        view = await hub_view(fed, world)
        return notice in view.cosignatures and view.vouchers(log_id) == 1

    await wait_until(both_at_the_hub, LIMIT)
    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], pinned(world))
    assert site.ok, site.problems()
    assert site.problems() == []
    [(copy, _)] = site.logs
    ignored = "\n".join(site.witness(copy).ignored)
    assert f"cosigned checkpoint claiming key {hereon_kid}" in ignored
    assert "checkpoint signature does not verify" in ignored
    assert f"cosignature claiming key {geomar_kid} does not verify" in ignored
    assert site.witness(copy).vouchers() == 1, "geomar's genuine cosignature still counts"
    done = await run_cli_audit(world, fed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("hereon: audit OK")
    assert f"ignored: cosigned checkpoint claiming key {hereon_kid}" in done.stdout


async def test_forged_conflict_notices_are_ignored_not_printed_as_evidence_of_a_fork(
    world: World, fed: LocalFederation
) -> None:
    """awi publishes two conflict notices naming geomar as the witness: one pairs hereon's
    real checkpoint with a forged one of the same size; one calls two real checkpoints of
    hereon's one history a rollback. Neither is evidence (before, both were printed as
    such, and the forged checkpoint failed hereon's audit)."""
    hereon = await witnessed_by_geomar(world, fed, 2)
    log_id, hereon_kid, geomar_log = hereon.log_id, hereon.kid, hereon.witness
    real = checkpoints_of(hereon.cfg)
    assert len({size_of(cp) for cp in real}) >= 2
    smaller, larger = real[0], real[-1]
    other_root = Checkpoint(
        log=log_id, size=size_of(larger), root="cd" * 32, time=now(), kid=hereon_kid
    )
    fork = ConflictNotice(
        log=log_id,
        reason="fork",
        earlier=larger,
        later=forged(other_root, hereon_kid),
        witness=geomar_log,
    )
    rollback = ConflictNotice(
        log=log_id, reason="rollback", earlier=larger, later=smaller, witness=geomar_log
    )
    await publish_as(fed, "awi", "conflict", fork)
    await publish_as(fed, "awi", "conflict", rollback)

    async def both_at_the_hub() -> bool:
        view = await hub_view(fed, world)
        return fork in view.conflicts and rollback in view.conflicts

    await wait_until(both_at_the_hub, LIMIT)
    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], pinned(world))
    assert site.ok, site.problems()
    assert site.problems() == []
    [(copy, report)] = site.logs
    witnessed = site.witness(copy)
    assert witnessed.evidence == []
    ignored = "\n".join(witnessed.ignored)
    assert f"fork notice from {geomar_log}: later checkpoint claiming key {hereon_kid}" in ignored
    assert "the log holds both checkpoints" in ignored
    # the real checkpoints in them were held against the log, and it holds them
    assert {r["size"] for r in report.receipts} >= {size_of(smaller), size_of(larger)}
    done = await run_cli_audit(world, fed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "two histories" not in done.stdout
