"""Slices and lazy blocks on the secured federation (TLS and NKeys everywhere, the hub's
per-site accounts): the slice messages and a large slice's bulk transfer take only the
subjects a caller and a node may use."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import xarray as xr
from support.grids import OWNER, KiB, grids_node_config, grids_world, kept, sliced
from support.world import World

from hub.client import Client
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation


@pytest.fixture
def cfg(tmp_path: Path, federation: Federation, unique: Any) -> NodeConfig:
    return grids_node_config(grids_world(tmp_path / "world"), federation, unique)


async def test_a_bulk_slice_and_a_lazy_block_cross_a_secured_federation(
    node: NodeDaemon, cfg: NodeConfig, federation: Federation, tmp_path: Path
) -> None:
    world = World(tmp_path / "world")
    async with await Client.connect(
        federation.site_url("geomar"),
        OWNER,
        home=world.store.home,
        **federation.caller_auth(OWNER),
    ) as fed:
        rid, whole = await kept(fed, "line", n=40_000)
        big = await fed.result_slice(rid, site="hereon", isel={"x": slice(0, 20_000)})
        lazy = await fed.open_result(rid, site="hereon", chunks={"x": 10_000})
        block = await asyncio.to_thread(lazy.isel(x=slice(30_000, 40_000)).compute)
    xr.testing.assert_identical(big, whole.isel(x=slice(0, 20_000)))
    xr.testing.assert_identical(block, whole.isel(x=slice(30_000, 40_000)))
    assert [(e["part"], e["size"] > 64 * KiB) for e in sliced(cfg)] == [
        ("slice", True),
        ("layout", True),  # its coordinate x has 40,000 values: the layout goes bulk too
        ("slice", True),
    ]
