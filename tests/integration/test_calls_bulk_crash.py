"""Kill -9 during large transfers: every accepted call ends exactly once, nothing partial is
ever visible, and the orphans are swept (and logged) by the node.

The node runs as its own ``fedhub-node run`` process at hereon (killed with SIGKILL); the
caller is at geomar, across the hub.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import xarray as xr
from support.bulk import CALLER, MiB, bulk_node_config
from support.hostile import LogView, wait_reachable, wait_until
from support.world import NodeProcess, World

from hub.client import Client
from hub.errors import NotFoundError, TransferError
from hub.nats import connect as nats_connect
from hub.nats import get_object
from hub.subjects import CALLS_CONSUMER, CALLS_STREAM, RESULTS_BUCKET
from node.config import NodeConfig


@pytest.fixture(scope="module")
def federation(open_federation: Federation) -> Federation:
    """Bulk transfers, not logins, are what these tests are about: the site servers' client
    ports are open (the hub is secured as everywhere); logins are tested elsewhere."""
    return open_federation


if TYPE_CHECKING:
    from conftest import Federation


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture
def cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    return bulk_node_config(
        world, federation, unique, ack_wait=3, bulk_orphan_age=1, bulk_idle_timeout=5
    )


@pytest.fixture
async def fed(world: World, federation: Federation) -> AsyncIterator[Client]:
    async with await Client.connect(
        federation.site_url("geomar"), CALLER, home=world.store.home
    ) as client:
        yield client


def spool_files(cfg: NodeConfig) -> list[str]:
    spool = cfg.node.data_dir / "spool"
    return sorted(p.name for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


async def spawn(world: World, cfg: NodeConfig) -> NodeProcess:
    return await asyncio.to_thread(world.spawn_node, cfg)


async def no_object(federation: Federation, name: str) -> None:
    """The result bucket at hereon shows no object ``name`` (nothing partial is visible)."""
    nc = await nats_connect(federation.site_url("hereon"))
    try:
        with pytest.raises(NotFoundError):
            await get_object(nc.jetstream(), RESULTS_BUCKET, name)
    finally:
        await nc.close()


async def all_acked(federation: Federation) -> bool:
    """Whether hereon's call consumer has nothing left to deliver or to be acked."""
    nc = await nats_connect(federation.site_url("hereon"))
    try:
        info = await nc.jetstream().consumer_info(CALLS_STREAM, CALLS_CONSUMER)
    finally:
        await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


def outcomes(cfg: NodeConfig, rid: str) -> list[tuple[str, Any]]:
    return [(e["type"], e.get("code")) for e in LogView(cfg.log_path).for_request(rid)]


async def test_a_node_killed_during_an_upload_fails_the_call_once_and_sweeps_the_spool(
    world: World, cfg: NodeConfig, fed: Client, federation: Federation
) -> None:
    node = await spawn(world, cfg)
    try:
        await wait_reachable(fed, "hereon", "bulk")
        moving = asyncio.Event()
        da = xr.DataArray(np.ones(200 * MiB // 8), dims=("x",), name="v")
        handle = await fed.submit(
            "hereon.bulk.total",
            da=da,
            timeout=120,
            on_transfer=lambda d, p: p.fraction > 0.1 and moving.set(),
        )
        await asyncio.wait_for(moving.wait(), 60)
        await asyncio.to_thread(node.kill)
        assert [n for n in spool_files(cfg) if n.endswith("fh-partial")], "a partial was left"
        with pytest.raises(TransferError):  # the caller learns it from its sender
            await handle.result()
        node = await spawn(world, cfg)
        await wait_until(lambda: len(outcomes(cfg, handle.request_id)) == 2, 30)
        assert outcomes(cfg, handle.request_id) == [
            ("request.accepted", None),
            ("request.failed", "interrupted"),
        ]
        assert spool_files(cfg) == []
        assert "transfer.swept" in node.output()
    finally:
        await asyncio.to_thread(node.stop)


async def test_a_node_killed_while_storing_a_large_result_never_shows_a_partial_object(
    world: World, cfg: NodeConfig, fed: Client, federation: Federation
) -> None:
    node = await spawn(world, cfg)
    try:
        await wait_reachable(fed, "hereon", "bulk")
        moving = asyncio.Event()
        handle = await fed.submit(
            "hereon.bulk.field", mib=200, timeout=120, on_transfer=lambda d, p: moving.set()
        )
        await asyncio.wait_for(moving.wait(), 60)
        await asyncio.to_thread(node.kill)
        with pytest.raises(TransferError):  # the caller's receiver hears nothing more
            await handle.result()
        await no_object(federation, handle.request_id)
        node = await spawn(world, cfg)
        swept = node
        await wait_until(lambda: "result.chunks_swept" in swept.output(), 20)
        assert spool_files(cfg) == []
        await no_object(federation, handle.request_id)
        with pytest.raises(NotFoundError):
            await fed.fetch("hereon", handle.request_id)
        # the redelivered message finds the call ended: it is not run or ended again
        await wait_until(lambda: all_acked(federation), 30)
        assert outcomes(cfg, handle.request_id) == [
            ("request.accepted", None),
            ("request.completed", None),
        ]
    finally:
        await asyncio.to_thread(node.stop)


async def test_a_caller_killed_during_an_upload_ends_its_call_once_at_the_node(
    world: World, cfg: NodeConfig, fed: Client, federation: Federation, tmp_path: Path
) -> None:
    source = tmp_path / "big.nc"
    xr.DataArray(np.ones(200 * MiB // 8), dims=("x",), name="v").to_netcdf(source, engine="scipy")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env.update(
        FEDHUB_HOME=str(world.store.home),
        FEDHUB_URL=federation.site_url("geomar"),
        FEDHUB_IDENTITY=CALLER,
        TMPDIR=str(tmp := tmp_path / "tmp"),
    )
    tmp.mkdir()
    node = await spawn(world, cfg)
    try:
        await wait_reachable(fed, "hereon", "bulk")
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "hub.cli", "call", "hereon.bulk.total", f"da=@{source}"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_until(lambda: any(n.endswith("fh-partial") for n in spool_files(cfg)), 60)
        finally:
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
        view = LogView(cfg.log_path)
        await wait_until(lambda: view.counts()["request.failed"] == 1, 30)
        (accepted,) = view.events("request.accepted")
        rid = accepted["data"]["request_id"]
        assert outcomes(cfg, rid) == [("request.accepted", None), ("request.failed", "timeout")]
        await wait_until(lambda: spool_files(cfg) == [], 10)
        await no_object(federation, rid)
        # the killed caller's own spool folder is removed by the next caller that needs one
        spools = tmp / f"fedhub-spool-{os.getuid()}"
        assert [p.name for p in spools.iterdir()] == [str(proc.pid)]
        again = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "hub.cli", "call", "hereon.bulk.total", f"da=@{source}"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(again.communicate(), 120)
        assert again.returncode == 0, err.decode()
        assert float(out) == 200 * MiB // 8
        assert [p.name for p in spools.iterdir()] == [], "both callers' folders are gone"
    finally:
        await asyncio.to_thread(node.stop)
