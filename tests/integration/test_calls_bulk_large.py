"""Large payloads across the hub: 200 MiB both ways, file to file from the CLI, spies on
every account, concurrent transfers, a cancelled transfer.

The caller is at geomar, the node at hereon; every byte crosses the hub's leaf links.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.js.errors
import numpy as np
import pytest
import xarray as xr
from support.bulk import CALLER, MiB, bulk_node_config
from support.hostile import LogView, Spy, find_in_tree, wait_reachable, wait_until
from support.world import World

from hub.client import Client
from hub.errors import CallCancelledError, NotFoundError, TransferError
from hub.nats import connect as nats_connect
from hub.nats import get_object
from hub.subjects import RESULTS_BUCKET
from node.config import NodeConfig
from node.daemon import NodeDaemon


@pytest.fixture(scope="module")
def federation(open_federation: Federation) -> Federation:
    """Bulk transfers, not logins, are what these tests are about: the site servers' client
    ports are open (the hub is secured as everywhere); logins are tested elsewhere."""
    return open_federation


if TYPE_CHECKING:
    from conftest import Federation

#: The CLI's peak RSS, measured by a parent process that runs only it.
_RSS_OF_CHILD = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run([sys.executable, '-m', 'hub.cli', *sys.argv[1:]]).returncode\n"
    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture
def cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    return bulk_node_config(world, federation, unique, ack_wait=5)


@pytest.fixture
async def fed(world: World, federation: Federation) -> AsyncIterator[Client]:
    async with await Client.connect(
        federation.site_url("geomar"), CALLER, home=world.store.home
    ) as client:
        yield client


def spool_files(cfg: NodeConfig) -> list[str]:
    spool = cfg.node.data_dir / "spool"
    return sorted(p.name for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


async def test_a_200_mib_argument_and_a_200_mib_result_cross_the_hub_from_python(
    cfg: NodeConfig, fed: Client
) -> None:
    da = xr.DataArray(np.arange(200 * MiB // 8, dtype="float64"), dims=("x",), name="v")
    async with NodeDaemon(cfg):
        await wait_reachable(fed, "hereon", "bulk")
        handle = await fed.submit("hereon.bulk.shift", da=da, by=0.5, timeout=300)
        result = await handle.result()
        assert spool_files(cfg) == [], "the node removed its spool files"
        js = fed.nc.jetstream()
    assert result.size == da.size
    assert float(result[0]) == 0.5 and float(result[-1]) == da.size - 0.5
    events = LogView(cfg.log_path).for_request(handle.request_id)
    assert [e["type"] for e in events] == ["request.accepted", "request.completed"]
    # the result is kept at hereon only: geomar's JetStream holds no copy of it (geomar may
    # have a results bucket of its own, from a node another test ran there)
    try:
        kept_at_geomar = await js.object_store(RESULTS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return
    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await kept_at_geomar.get_info(handle.request_id)


async def test_the_cli_streams_a_200_mib_netcdf_file_to_the_node_and_the_result_to_a_file(
    world: World, cfg: NodeConfig, federation: Federation, fed: Client, tmp_path: Path
) -> None:
    source, out = tmp_path / "big.nc", tmp_path / "out.nc"
    field = xr.DataArray(np.arange(200 * MiB // 8, dtype="float64"), dims=("x",), name="v")
    field.to_netcdf(source, engine="scipy")
    del field
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env.update(
        FEDHUB_HOME=str(world.store.home),
        FEDHUB_URL=federation.site_url("geomar"),
        FEDHUB_IDENTITY=CALLER,
    )
    args = ["call", "hereon.bulk.shift", f"da=@{source}", "by=2", "--out", str(out)]
    async with NodeDaemon(cfg):
        await wait_reachable(fed, "hereon", "bulk")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _RSS_OF_CHILD, *args,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(proc.communicate(), 300)
    err = stderr.decode()
    assert proc.returncode == 0, err
    assert f"wrote {out}" in err
    rss_mib = int(err.split("maxrss_kib")[1].split()[0]) / 1024
    assert rss_mib < 256, f"the CLI peaked at {rss_mib:.0f} MiB"
    with xr.open_dataarray(out, engine="scipy") as got:
        assert got.size == 200 * MiB // 8
        assert float(got[1]) == 3.0 and float(got[-1]) == got.size + 1
    assert spool_files(cfg) == []


async def test_spies_in_every_account_see_no_plaintext_of_a_large_argument_or_result(
    cfg: NodeConfig, fed: Client, federation: Federation
) -> None:
    urls = {"hub": federation.hub_url} | {s: federation.site_url(s) for s in federation.sites}
    conns = {name: await nats_connect(url) for name, url in urls.items()}
    try:
        spies = {name: await Spy(nc).start() for name, nc in conns.items()}
        data = secrets.token_bytes(3 * MiB)
        needles = [data[i : i + 32] for i in (0, MiB + 7, 2 * MiB + 11, len(data) - 32)]
        async with NodeDaemon(cfg):
            await wait_reachable(fed, "hereon", "bulk")
            fed.bulk_threshold = MiB
            assert await fed.call("hereon.bulk.count", data=data, timeout=60) == len(data)
            blob = await fed.call("hereon.bulk.blob", size=3 * MiB, timeout=60)
        needles += [blob[i : i + 32] for i in (0, MiB + 5, len(blob) - 32)]
        for site in ("geomar", "hereon"):
            assert spies[site].on("fh.bulk.hereon."), f"{site} saw the transfers pass"
        for bystander in ("hub", "awi"):
            assert spies[bystander].on("fh.bulk.") == [], bystander
        assert [(n, leak) for n, spy in spies.items() for leak in spy.leaks(needles)] == []
    finally:
        for nc in conns.values():
            await nc.close()
    for server in (federation.hub, *federation.leaves.values()):
        assert find_in_tree(server.store_dir, needles) == [], server.store_dir


async def test_five_concurrent_20_mib_calls_each_get_their_own_result(
    cfg: NodeConfig, fed: Client
) -> None:
    async with NodeDaemon(cfg):
        await wait_reachable(fed, "hereon", "bulk")
        fields = [
            xr.DataArray(np.full(20 * MiB // 8, float(i)), dims=("x",), name="v") for i in range(5)
        ]
        results = await asyncio.gather(
            *(fed.call("hereon.bulk.shift", da=f, by=1.0, timeout=300) for f in fields)
        )
    assert [float(r[0]) for r in results] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(r.size == 20 * MiB // 8 for r in results)
    assert LogView(cfg.log_path).counts()["request.completed"] == 5


async def test_a_transfer_cancelled_by_the_caller_stops_both_sides_and_leaves_nothing(
    cfg: NodeConfig, fed: Client, federation: Federation
) -> None:
    da = xr.DataArray(np.zeros(100 * MiB // 8), dims=("x",), name="v")
    moving = asyncio.Event()
    async with NodeDaemon(cfg):
        await wait_reachable(fed, "hereon", "bulk")
        handle = await fed.submit(
            "hereon.bulk.total", da=da, timeout=120, on_transfer=lambda d, p: moving.set()
        )
        await asyncio.wait_for(moving.wait(), 60)
        await handle.cancel()
        with pytest.raises((CallCancelledError, TransferError)) as err:
            await handle.result()
        assert "cancel" in str(err.value)
        await wait_until(lambda: LogView(cfg.log_path).counts()["request.failed"] == 1, 30)
        assert spool_files(cfg) == []
    hereon = await nats_connect(federation.site_url("hereon"))
    try:
        with pytest.raises(NotFoundError):
            await get_object(hereon.jetstream(), RESULTS_BUCKET, handle.request_id)
    finally:
        await hereon.close()
    events = LogView(cfg.log_path).for_request(handle.request_id)
    assert [(e["type"], e.get("code")) for e in events] == [
        ("request.accepted", None),
        ("request.failed", "cancelled"),
    ]
