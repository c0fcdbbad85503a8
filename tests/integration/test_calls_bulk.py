"""Calls with payloads too large for one message, across the hub (geomar caller, hereon node).

Arguments and results above the bulk threshold travel as chunk-encrypted bulk transfers
(docs/protocol.md, "Calls with bulk payloads"); small calls keep the one-message path.
The thresholds are lowered here so that a few MiB exercise the same path as a GiB.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import xarray as xr
from support.bulk import CALLER, MiB, bulk_node_config
from support.hostile import LogView, Spy, audit_node, wait_reachable
from support.world import World

from hub import call_bulk
from hub.bulk import NetCDFFile, SavedTo
from hub.client import Client
from hub.errors import OversizeError, TransferError
from hub.nats import connect as nats_connect
from hub.transfer import TransferProgress
from node.config import NodeConfig, load_config
from node.daemon import NodeDaemon


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
def hereon_cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    return bulk_node_config(world, federation, unique, bulk_threshold=MiB)


async def client(world: World, federation: Federation, **options: Any) -> Client:
    fed = await Client.connect(federation.site_url("geomar"), CALLER, home=world.store.home)
    fed.bulk_threshold = options.get("bulk_threshold", MiB)
    return fed


async def test_a_result_ten_times_the_old_limit_reaches_the_caller_instead_of_being_lost(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        handle = await fed.submit("hereon.bulk.blob", size=10 * MiB + 3, timeout=60)
        data = await handle.result()
        state = await handle.status()
        again = await fed.fetch("hereon", handle.request_id)
    assert again == data, "the kept copy is fetched again as a bulk transfer"
    assert len(data) == 10 * MiB + 3
    assert data[:512] == bytes(range(256)) * 2
    view = LogView(hereon_cfg.log_path)
    (done,) = view.events("request.completed")
    assert done["data"]["result_hash"] == state.result_hash
    assert done["data"]["object"] == handle.request_id
    assert not view.events("result.lost")
    assert [e["data"]["request_id"] for e in view.events("result.fetched")] == [handle.request_id]
    report = audit_node(hereon_cfg, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def test_a_large_xarray_argument_and_result_cross_the_hub_with_progress_both_ways(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    da = xr.DataArray(np.arange(3 * MiB // 8, dtype="float64"), dims=("x",), name="v")
    seen: list[tuple[str, TransferProgress]] = []
    async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        result = await fed.call(
            "hereon.bulk.shift",
            da=da,
            by=2.0,
            timeout=60,
            on_transfer=lambda d, p: seen.append((d, p)),
        )
    xr.testing.assert_identical(result, da + 2.0)
    directions = {d for d, _ in seen}
    assert directions == {"upload", "download"}, directions
    last = dict(seen)
    assert last["download"].done == last["download"].total > 0
    view = LogView(hereon_cfg.log_path)
    (accepted,) = view.events("request.accepted")
    (completed,) = view.events("request.completed")
    assert completed["data"]["object"] == accepted["data"]["request_id"]


async def test_a_netcdf_file_argument_is_streamed_and_opened_lazily_at_the_node(
    world: World, hereon_cfg: NodeConfig, federation: Federation, tmp_path: Path
) -> None:
    path = tmp_path / "big.nc"
    da = xr.DataArray(np.arange(2 * MiB // 8, dtype="float64") + 5, dims=("x",), name="v")
    da.to_netcdf(path, engine="scipy")
    async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        seen = await fed.call("hereon.bulk.inspect", da=NetCDFFile(path), timeout=60)
    assert seen == {"lazy": True, "size": da.size, "first": 5.0}
    spool = hereon_cfg.node.data_dir / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()], "the spooled argument was removed"


async def test_a_large_xarray_argument_in_memory_travels_as_a_netcdf_file_not_encoded_whole(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    da = xr.DataArray(np.arange(2 * MiB // 8, dtype="float64") + 5, dims=("x",), name="v")
    wide = xr.DataArray(np.arange(2 * MiB // 8, dtype="int64"), dims=("x",), name="n")
    async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        seen = await fed.call("hereon.bulk.inspect", da=da, timeout=60)
        # NetCDF3 cannot hold int64: that argument goes through the codec, exactly
        summed = await fed.call("hereon.bulk.total", da=wide, timeout=60)
    assert seen == {"lazy": True, "size": da.size, "first": 5.0}
    assert summed == float(wide.sum())
    spool = hereon_cfg.node.data_dir / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()], "the spooled argument was removed"


async def test_a_large_netcdf_result_is_written_straight_to_the_callers_file(
    world: World, hereon_cfg: NodeConfig, federation: Federation, tmp_path: Path
) -> None:
    out = tmp_path / "out.nc"
    async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        handle = await fed.submit("hereon.bulk.field", mib=3, timeout=60, result_path=out)
        saved = await handle.result()
        copy = tmp_path / "copy.nc"
        fetched = await fed.fetch("hereon", handle.request_id, result_path=copy)
    assert saved == SavedTo(out)
    assert fetched == SavedTo(copy)
    assert copy.read_bytes() == out.read_bytes()
    with xr.open_dataarray(out, engine="scipy") as got:
        assert got.size == 3 * MiB // 8
        assert float(got[-1]) == got.size - 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith("fh-partial")]  # noqa: ASYNC240
    assert not leftovers


async def test_a_compressed_call_moves_far_fewer_bytes_both_ways_and_says_what_it_saved(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    da = xr.DataArray(np.zeros(8 * MiB // 8), dims=("x",), name="v")
    spy_nc = await nats_connect(federation.site_url("geomar"))
    try:
        spy = await Spy(spy_nc).start()
        async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
            await wait_reachable(fed, "hereon", "bulk")
            handle = await fed.submit("hereon.bulk.shift", da=da, by=1.0, timeout=60, compress=True)
            result = await handle.result()
    finally:
        await spy_nc.close()
    xr.testing.assert_identical(result, da + 1.0)
    assert handle.saved is not None and handle.saved > 0.9
    moved = sum(len(m.data) for m in spy.on("fh.bulk.hereon.") + spy.on("fh.inbox.geomar."))
    assert moved < 2 * MiB, f"{moved} bytes crossed for 16 MiB of zeros there and back"


async def test_a_bulk_argument_other_than_the_signed_one_is_refused_and_the_caller_told_at_once(
    world: World, hereon_cfg: NodeConfig, federation: Federation, monkeypatch: Any
) -> None:
    """A caller (or anyone on the way) that sends other bytes than the request signed: the
    node refuses them at the open, the call fails once, and the sender hears why."""
    honest = call_bulk.seal_arguments

    async def swapped(plan: Any, key: bytes, **opts: Any) -> tuple[Path, Any, float]:
        spool, bulk, saved = await honest(plan, key, **opts)
        other = call_bulk.ArgumentPlan({}, encoded=b"\x00" * len(plan.encoded))
        spool2, _, _ = await honest(other, key, **opts)
        spool2.replace(spool)  # same key, other bytes: not the signed payload hash
        return spool, bulk, saved

    monkeypatch.setattr(call_bulk, "seal_arguments", swapped)
    async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        handle = await fed.submit("hereon.bulk.count", data=b"\x07" * (2 * MiB), timeout=120)
        with pytest.raises(TransferError) as err:
            await handle.result(timeout=30)  # far below the call's deadline
        # from the sender (refused) or the node's reply (transfer_failed), whichever is first
        assert err.value.code in ("refused", "transfer_failed")
        assert "not the expected one" in err.value.message
    events = LogView(hereon_cfg.log_path).for_request(handle.request_id)
    assert [(e["type"], e.get("code")) for e in events] == [
        ("request.accepted", None),
        ("request.failed", "transfer_failed"),
    ]


async def test_an_argument_above_the_sites_bulk_limit_fails_at_once_as_oversize(
    world: World, federation: Federation, unique: Any
) -> None:
    cfg = bulk_node_config(world, federation, unique, bulk_threshold=MiB, bulk_max_size=2 * MiB)
    async with NodeDaemon(cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        handle = await fed.submit("hereon.bulk.count", data=b"\x01" * (3 * MiB), timeout=120)
        with pytest.raises(OversizeError, match="at most"):
            await handle.result(timeout=30)
        assert await fed.call("hereon.bulk.count", data=b"\x01" * MiB, timeout=30) == MiB
    events = LogView(cfg.log_path).for_request(handle.request_id)
    assert [(e["type"], e.get("code")) for e in events] == [
        ("request.accepted", None),
        ("request.failed", "oversize"),
    ]


async def test_a_large_xarray_result_netcdf_cannot_hold_comes_back_through_the_codec(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    async with NodeDaemon(hereon_cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        result = await fed.call("hereon.bulk.ints", mib=2, timeout=60)
    assert result.dtype == np.int64
    assert result.size == 2 * MiB // 8 and int(result[-1]) == result.size - 1


async def test_a_result_that_takes_longer_than_ack_wait_to_send_is_not_answered_as_a_copy(
    world: World, federation: Federation, unique: Any
) -> None:
    """The node keeps the call's message alive while it sends and keeps the result, so the
    server does not deliver it again meanwhile (a copy would be answered "already ended")."""
    cfg = bulk_node_config(
        world, federation, unique, bulk_threshold=MiB, ack_wait=0.3, bulk_window=64 * 1024
    )
    async with NodeDaemon(cfg), await client(world, federation) as fed:
        await wait_reachable(fed, "hereon", "bulk")
        started = asyncio.get_running_loop().time()
        result = await fed.call("hereon.bulk.field", mib=40, timeout=120)
        took = asyncio.get_running_loop().time() - started
    assert result.size == 40 * MiB // 8
    assert took > 0.3, "the send outlasted ack_wait, or this test shows nothing"


async def test_a_module_configured_to_compress_sends_its_large_results_compressed(
    world: World, federation: Federation, unique: Any
) -> None:
    cfg = bulk_node_config(world, federation, unique, bulk_threshold=MiB)
    assert cfg.source is not None
    text = cfg.source.read_text().replace(
        'executor = "thread"', 'executor = "thread"\ncompress = true'
    )
    cfg.source.write_text(text)
    cfg = load_config(cfg.source)
    assert [m.compress for m in cfg.modules] == [True]
    spy_nc = await nats_connect(federation.site_url("geomar"))
    try:
        spy = await Spy(spy_nc).start()
        async with NodeDaemon(cfg), await client(world, federation) as fed:
            await wait_reachable(fed, "hereon", "bulk")
            data = await fed.call("hereon.bulk.blob", size=8 * MiB, timeout=60)
    finally:
        await spy_nc.close()
    assert data == bytes(range(256)) * (8 * MiB // 256)
    moved = sum(len(m.data) for m in spy.on("fh.inbox.geomar."))
    assert moved < MiB, f"{moved} bytes crossed for an 8 MiB result that compresses well"
