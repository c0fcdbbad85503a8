"""Lazy kept results: ``fed.open_result(..., chunks=...)`` is a dask-backed xarray value
built from one ``describe``; computing a block sends one slice request for that block and
nothing else (counted in the node's log). Real servers, keys and crypto.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array
import pytest
import xarray as xr
from support.grids import (
    OWNER,
    KiB,
    grids_node_config,
    grids_world,
    kept,
    selection_hash,
    sliced,
)
from support.hostile import LogView, NodeThread, wait_reachable
from support.world import World

from hub import lazy
from hub.client import Client
from hub.errors import ConfigError
from hub.lazy import require_dask
from hub.sync_client import connect as connect_sync
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation


@pytest.fixture(scope="module")
def federation(open_federation: Federation) -> Federation:
    """Lazy results, not logins, are what these tests are about."""
    return open_federation


@pytest.fixture
def world(tmp_path: Path) -> World:
    return grids_world(tmp_path / "world")


@pytest.fixture
def cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    return grids_node_config(world, federation, unique)


def connect(world: World, federation: Federation) -> Any:
    return Client.connect(federation.site_url("geomar"), OWNER, home=world.store.home)


def slices(cfg: NodeConfig) -> list[dict[str, Any]]:
    return [e for e in sliced(cfg) if e["part"] == "slice"]


async def test_computing_one_block_of_a_lazy_result_fetches_that_block_and_nothing_else(
    node: NodeDaemon, world: World, cfg: NodeConfig, federation: Federation
) -> None:
    async with await connect(world, federation) as fed:
        rid, whole = await kept(fed, "grid", ntime=24, nlat=20, nlon=30)  # kept as bulk
        ds = await fed.open_result(rid, site="hereon", chunks={"time": 6})
        assert isinstance(ds.t2m.data, dask.array.Array)
        assert ds.t2m.chunks == ((6, 6, 6, 6), (20,), (30,))
        assert [e["part"] for e in sliced(cfg)] == ["layout"], "only the layout so far"
        xr.testing.assert_identical(ds.coords.to_dataset(), whole.coords.to_dataset())
        assert ds.attrs == whole.attrs and ds.t2m.attrs == whole.t2m.attrs

        block = await asyncio.to_thread(ds.t2m.isel(time=slice(6, 12)).compute)
        xr.testing.assert_identical(block, whole.t2m.isel(time=slice(6, 12)))
        (one,) = slices(cfg)
        assert one["selection_hash"] == selection_hash({"time": (6, 12, None)}, ("t2m",))
        assert one["size"] < whole.t2m.nbytes / 3

        everything = await asyncio.to_thread(ds.compute)
    xr.testing.assert_identical(everything, whole)
    assert len(slices(cfg)) == 1 + 2 * 4, "two variables of four blocks each, once more"
    (completed,) = LogView(cfg.log_path).events("request.completed")
    assert completed["data"]["result_size"] > 64 * KiB, "a bulk result, read lazily"


async def test_computing_on_the_clients_own_event_loop_is_refused_with_a_clear_error(
    node: NodeDaemon,
    world: World,
    cfg: NodeConfig,
    federation: Federation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with await connect(world, federation) as fed:
        rid, _ = await kept(fed, "grid", ntime=4)
        ds = await fed.open_result(rid, site="hereon")
        with pytest.raises(ConfigError, match="event loop"):
            ds.t2m.compute(scheduler="synchronous")  # the block asked for on the loop itself
        monkeypatch.setattr(lazy, "LOOP_SILENCE", 0.5)
        with pytest.raises(ConfigError, match="event loop"):
            ds.t2m.compute()  # dask's threads ask, while the loop waits for them
    assert slices(cfg) == []


def test_the_blocking_client_gives_a_lazy_dataarray_that_computes_anywhere(
    world: World, cfg: NodeConfig, federation: Federation
) -> None:
    node = NodeThread(cfg)
    try:
        with connect_sync(federation.site_url("geomar"), OWNER, home=world.store.home) as fed:
            fed._run(wait_reachable(fed.client, "hereon", "grids"))
            handle = fed.submit("hereon.grids.line", n=100, timeout=30)
            whole = handle.result(timeout=30)
            lazy = fed.open_result(handle.request_id, site="hereon", chunks={"x": 30})
            assert isinstance(lazy, xr.DataArray) and lazy.chunks == ((30, 30, 30, 10),)
            assert float(lazy.isel(x=slice(60, 90)).sum().compute()) == float(
                whole.isel(x=slice(60, 90)).sum()
            )
            assert len(slices(cfg)) == 1
            xr.testing.assert_identical(lazy.compute(), whole)
    finally:
        node.stop()
    assert len(slices(cfg)) == 1 + 4


async def test_chunks_that_name_no_dimension_are_refused_before_any_block_is_sent(
    node: NodeDaemon, world: World, cfg: NodeConfig, federation: Federation
) -> None:
    async with await connect(world, federation) as fed:
        rid, _ = await kept(fed, "grid", ntime=4)
        with pytest.raises(ConfigError, match="tme"):
            await fed.open_result(rid, site="hereon", chunks={"tme": 2})
        with pytest.raises(ConfigError, match="positive"):
            await fed.open_result(rid, site="hereon", chunks={"time": 0})
    assert slices(cfg) == []


def test_without_dask_a_lazy_result_is_refused_naming_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ConfigError) as err:
        require_dask()
    assert "fedhub[lazy]" in err.value.diagnostics()
