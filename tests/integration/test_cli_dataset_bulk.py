"""A NetCDF file too large for one message, given to ``fedhub call`` as ``@file`` for a
parameter declared ``xarray.Dataset``, is streamed to the node (a bulk transfer) and opened
there as a Dataset, even when it holds one variable (which would otherwise open as a
DataArray and be refused).

The node's ``[calls] max_payload`` is lowered so that one MiB takes the path a GiB takes:
the caller's bulk threshold is half the smaller of the server's and the node's limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import xarray as xr
from support.bulk import CALLER, MiB
from support.hostile import LogView, wait_reachable
from support.world import World

from hub.argfiles import as_declared
from hub.bulk import NetCDFFile
from hub.canonical import b64d
from hub.client import Client
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

MODULE = '''
import xarray as xr


def variables(ds: xr.Dataset) -> dict[str, object]:
    """What arrived: its type, its data variables and its size."""
    return {"type": type(ds).__name__, "names": sorted(map(str, ds.data_vars)),
            "size": int(ds["t"].size)}
'''


@pytest.fixture(scope="module")
def federation(open_federation: Federation) -> Federation:
    """The transfer, not the login, is under test: the site servers' ports are open."""
    return open_federation


async def test_a_large_one_variable_netcdf_file_reaches_a_dataset_parameter_as_a_dataset(
    tmp_path: Path, federation: Federation, unique: Any
) -> None:
    world = World(tmp_path / "world")
    world.person(CALLER)
    module = tmp_path / "fields.py"
    module.write_text(MODULE)
    cfg = world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        nats_url=federation.site_url("hereon"),
        modules=[("fields", module)],
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "fields", "*")],
        calls={"max_payload": 256 * 1024},
    )
    source = tmp_path / "one.nc"
    values = np.arange(MiB // 8, dtype="float64")
    xr.Dataset({"t": ("x", values)}).to_netcdf(source, engine="scipy")
    assert source.stat().st_size > MiB  # four times the node's whole message limit
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env.update(
        FEDHUB_HOME=str(world.store.home),
        FEDHUB_URL=federation.site_url("geomar"),
        FEDHUB_IDENTITY=CALLER,
        FEDHUB_AGENT="off",
    )
    async with (
        NodeDaemon(cfg),
        await Client.connect(federation.site_url("geomar"), CALLER, home=world.store.home) as fed,
    ):
        await wait_reachable(fed, "hereon", "fields")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.cli", "call", "hereon.fields.variables",
            "ds=@one.nc", "--json", "--timeout", "60",
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"type": "Dataset", "names": ["t"], "size": values.size}
    (accepted,) = LogView(cfg.log_path).events("request.accepted")
    header = json.loads(b64d(accepted["data"]["header"]))  # the signed request header
    assert header["bulk"]["format"] == "netcdf" and header["bulk"]["arg"] == "ds"
    assert header["bulk"]["xarray"] == "Dataset"
    assert header["bulk"]["size"] == source.stat().st_size  # the file itself, as it is


def test_a_file_for_a_dataset_parameter_is_marked_not_read_whatever_its_size(
    tmp_path: Path,
) -> None:
    source = tmp_path / "one.nc"
    xr.Dataset({"t": ("x", np.arange(4.0))}).to_netcdf(source, engine="scipy")
    schema = {"properties": {"ds": {"x-fedhub-type": "xarray.Dataset"}, "n": {}}}
    got = as_declared({"ds": NetCDFFile(source), "n": NetCDFFile(source)}, schema)
    assert got == {"ds": NetCDFFile(source, kind="Dataset"), "n": NetCDFFile(source)}
