"""Audit across the federation: logs read from the hub's copies, witnessed checkpoints.

A hub and three site leaves, the hub copying every site's ``FH_EVENTS`` and keeping the
federation directory. Nodes at each site countersign each other's checkpoints; a site
that rewrites or rolls back its log after a checkpoint was witnessed is caught, both by
the witnesses and by ``fedhub audit --site ... --url``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.hostile import audit_node, wait_reachable, wait_until
from support.world import World

from hub.audit import audit_events
from hub.audit.hubcopy import read_site_copy
from hub.client import Client
from hub.fedaudit import audit_hub
from hub.logfile import iter_jsonl, iter_sqlite
from hub.nats import LocalFederation, ensure_site_streams, source_site_events
from hub.nats import connect as nats_connect
from hub.nats.dirstreams import ensure_hub_directory, ensure_site_directory
from hub.witness import WitnessView, read_witness_view
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
    assert site.witness is not None and site.witness.vouchers(log_id) == 2
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
        return bool((await hub_view(fed, world)).evidence_lines(log_id))

    await wait_until(evidence_at_the_hub, LIMIT)

    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], pinned(world))
    assert not site.ok
    problems = "\n".join(site.problems())
    assert "fork" in problems
    # the node's own file audits clean: only the witnesses and the hub's copy remember
    assert audit_node(hereon, world.site("hereon").sign_public).ok
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub.cli", "audit", "--site", "hereon", "--url", fed.hub_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
    )
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
        return bool((await hub_view(fed, world)).evidence_lines(log_id))

    await wait_until(evidence_at_the_hub, LIMIT)

    [site] = await asyncio.to_thread(audit_hub, fed.hub_url, ["hereon"], pinned(world))
    assert not site.ok
    assert site.witness is not None
    assert any("rollback" in line for line in site.witness.evidence_lines(log_id)), site.problems()
