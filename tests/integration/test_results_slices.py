"""Slices of kept results: the owner grants the storing node the content key for one
request, the node sends only the part asked for, sealed for the owner, and logs
``result.sliced``; it keeps no key, so a later slice needs a new grant. Bad selections get
a typed error; nobody but the owner may slice. Real servers, keys and crypto; the bulk
threshold is lowered so that a few hundred KB take the bulk way.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import xarray as xr
from support.grids import (
    COLLEAGUE,
    OWNER,
    THIRD,
    KiB,
    grids_node_config,
    grids_world,
    kept,
    selection_hash,
    sliced,
)
from support.hostile import LogView, Spy, audit_node
from support.results import stored_result
from support.world import World

from hub.answers import ask_service
from hub.bulk import SavedTo, open_netcdf
from hub.canonical import b64e
from hub.client import Client
from hub.clock import now
from hub.crypto import new_content_key, wrap_key
from hub.envelopes import REPLY_MAGIC
from hub.errors import (
    IntegrityError,
    NotFoundError,
    ReplayError,
    SelectionError,
    UnauthorizedError,
    ValidationError,
)
from hub.nats import connect as nats_connect
from hub.nats import put_object
from hub.results_client import catalog
from hub.results_wire import CatalogHeader, pack_catalog
from hub.slices import grantor
from hub.subjects import RESULTS_BUCKET, status_subject
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation


@pytest.fixture(scope="module")
def federation(open_federation: Federation) -> Federation:
    """Slices, not logins, are what these tests are about (the hub is secured as always)."""
    return open_federation


@pytest.fixture
def world(tmp_path: Path) -> World:
    return grids_world(tmp_path / "world")


@pytest.fixture
def cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    return grids_node_config(world, federation, unique)


def connect(world: World, federation: Federation, who: str = OWNER) -> Any:
    return Client.connect(federation.site_url("geomar"), who, home=world.store.home)


async def test_the_owner_gets_a_slice_of_a_kept_dataset_and_only_that_part_travels(
    node: NodeDaemon, world: World, cfg: NodeConfig, federation: Federation
) -> None:
    async with await connect(world, federation) as fed:
        rid, whole = await kept(fed, "grid")
        part = await fed.result_slice(
            rid, site="hereon", isel={"time": slice(0, 10)}, variables=["t2m"]
        )
        point = await fed.result_slice(rid, site="hereon", isel={"time": 3, "lat": -1})
        lineage = await fed.provenance("hereon", rid)
    assert [st.type for st in lineage.steps].count("result.sliced") == 2, "proven steps"
    xr.testing.assert_identical(part, whole[["t2m"]].isel(time=slice(0, 10)))
    xr.testing.assert_identical(point, whole.isel(time=3, lat=-1))
    first, second = sliced(cfg)
    assert first["by"] == OWNER and first["part"] == "slice" and first["request_id"] == rid
    assert first["selection_hash"] == selection_hash({"time": (0, 10, None)}, ("t2m",))
    assert second["selection_hash"] == selection_hash({"time": 3, "lat": -1}, None)
    (completed,) = LogView(cfg.log_path).events("request.completed")
    assert first["size"] < completed["data"]["result_size"] / 2, "only the part was sent"
    report = audit_node(cfg, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def test_a_large_slice_of_a_bulk_result_comes_as_a_bulk_transfer_a_small_one_in_the_answer(
    node: NodeDaemon, world: World, cfg: NodeConfig, federation: Federation, tmp_path: Path
) -> None:
    spy_nc = await nats_connect(federation.site_url("geomar"))
    try:
        spy = await Spy(spy_nc).start()
        async with await connect(world, federation) as fed:
            rid, whole = await kept(fed, "line", n=40_000)  # 320 KB: kept as a bulk result
            before = len(spy.on("fh.inbox.geomar."))
            big = await fed.result_slice(rid, site="hereon", isel={"x": slice(0, 20_000)})
            streamed = spy.on("fh.inbox.geomar.")[before:]
            small = await fed.result_slice(rid, site="hereon", isel={"x": slice(5, 10)})
            assert len(spy.on("fh.inbox.geomar.")) == before + len(streamed), "in the answer"
            out = tmp_path / "part.nc"
            saved = await fed.result_slice(
                rid, site="hereon", isel={"x": slice(10_000, 30_000, 2)}, result_path=out
            )
    finally:
        await spy_nc.close()
    moved = sum(len(m.data) for m in streamed)
    plain = whole.values[1000:1100].tobytes()
    assert not spy.leaks([plain]), "slices cross the hub sealed"
    xr.testing.assert_identical(big, whole.isel(x=slice(0, 20_000)))
    xr.testing.assert_identical(small, whole.isel(x=slice(5, 10)))
    assert saved == SavedTo(out)
    xr.testing.assert_identical(open_netcdf(out, load=True), whole.isel(x=slice(10_000, 30_000, 2)))
    (completed,) = LogView(cfg.log_path).events("request.completed")
    assert completed["data"]["result_size"] > 64 * KiB
    sizes = [e["size"] for e in sliced(cfg)]
    assert sizes[0] > 64 * KiB and sizes[1] < 4 * KiB and sizes[2] > 64 * KiB
    assert all(sizes[i] < completed["data"]["result_size"] for i in range(3))
    assert sizes[0] <= moved < sizes[0] + 16 * KiB, "the big slice alone crossed, as a transfer"
    spool = cfg.node.data_dir
    assert not [p for p in spool.rglob("*") if p.name.endswith(".plain")], "no plaintext left"


async def test_bad_selections_get_a_typed_error_that_says_what_is_wrong(
    node: NodeDaemon, world: World, federation: Federation
) -> None:
    cases: list[tuple[dict[str, Any], list[str] | None, str]] = [
        ({"tme": slice(0, 2)}, None, "no dimension 'tme'"),
        ({}, ["t2", "sst"], "no variable 't2'"),
        ({"time": 24}, None, "index 24 is out of range for time (size 24)"),
        ({"lat": slice(0, 9)}, None, "9 is out of range for lat (size 4)"),
        ({"lat": slice(3, 1)}, None, "selects nothing of lat"),
        ({"lat": slice(0, 4, -1)}, None, "step of lat must be at least 1"),
    ]
    async with await connect(world, federation) as fed:
        rid, _ = await kept(fed, "grid")
        for isel, variables, phrase in cases:
            with pytest.raises(SelectionError, match=re.escape(phrase)):
                await fed.result_slice(rid, site="hereon", isel=isel, variables=variables)
        table, _ = await kept(fed, "table")
        with pytest.raises(SelectionError, match="a list, not an xarray value"):
            await fed.result_slice(table, site="hereon", isel={"x": 0})
        line, _ = await kept(fed, "line", n=10)
        with pytest.raises(SelectionError, match="one DataArray"):
            await fed.result_slice(line, site="hereon", variables=["w"])


async def test_nobody_but_the_owner_may_slice_not_even_a_colleague_holding_the_key(
    node: NodeDaemon, world: World, cfg: NodeConfig, federation: Federation
) -> None:
    async with await connect(world, federation) as fed:
        rid, _ = await kept(fed, "grid")
        await fed.share("hereon", rid, COLLEAGUE)
        content_key = (await grantor(fed, "hereon", rid)).content_key
        node_box = (await fed.module_info("hereon", "grids")).node_box_key
    for who, told in ((COLLEAGUE, "only its owner"), (THIRD, f"no request {rid}")):
        async with await connect(world, federation, who) as other:
            with pytest.raises(NotFoundError, match=told):
                await other.result_slice(rid, site="hereon", isel={"time": 0})
            keys = other.keys  # a hand-made slice with the real content key, granted by them
            grant = wrap_key(keys.box_secret, keys.box_public, node_box, content_key)
            with pytest.raises(NotFoundError):
                await catalog(other, "slice", "hereon", rid, {"grant": b64e(grant)})
    assert sliced(cfg) == []


async def test_the_node_keeps_no_key_so_a_later_slice_without_a_new_grant_is_refused(
    node: NodeDaemon, world: World, cfg: NodeConfig, federation: Federation
) -> None:
    async with await connect(world, federation) as fed:
        rid, whole = await kept(fed, "grid")
        owner = await grantor(fed, "hereon", rid)
        args = owner.args({"time": slice(0, 2)}, None)
        header = CatalogHeader(
            op="slice",
            id=rid,
            caller=OWNER,
            kid=fed.keys.kid,
            time=now(),
            nonce=b64e(secrets.token_bytes(12)),
            args=args,
        )
        message = pack_catalog(header, fed.keys.signing_key)

        async def send(data: bytes) -> bytes:
            return await ask_service(
                fed.nc, status_subject("hereon"), data, timeout=10, unreachable="-", silent="-"
            )

        assert (await send(message))[:4] == REPLY_MAGIC
        with pytest.raises(ValidationError, match="grant"):  # no grant at all
            await catalog(fed, "slice", "hereon", rid, {"isel": {"time": [0, 2, None]}})
        stranger = wrap_key(
            fed.keys.box_secret, fed.keys.box_public, owner.node_box_key, new_content_key()
        )
        with pytest.raises(UnauthorizedError, match="does not open the result"):
            await catalog(fed, "slice", "hereon", rid, {"grant": b64e(stranger)})
        mallory = world.store.load(THIRD)
        by_other = wrap_key(
            mallory.box_secret, mallory.box_public, owner.node_box_key, owner.content_key
        )
        with pytest.raises(UnauthorizedError, match="not granted by key"):
            await catalog(fed, "slice", "hereon", rid, {"grant": b64e(by_other)})
        with pytest.raises(ReplayError):  # the same message, grant and all, again
            await send(message)
        again = await fed.result_slice(rid, site="hereon", isel={"time": slice(0, 2)})
    xr.testing.assert_identical(again, whole.isel(time=slice(0, 2)))
    assert len(sliced(cfg)) == 2, "the first message and the fresh grant, nothing else"
    raw = LogView(cfg.log_path).raw_bytes()
    assert args["grant"].encode() not in raw, "the grant is not logged"


async def test_result_get_with_isel_and_var_writes_the_part_and_refuses_a_bad_one_in_one_line(
    node: NodeDaemon, world: World, federation: Federation, tmp_path: Path
) -> None:
    async with await connect(world, federation) as fed:
        rid, whole = await kept(fed, "grid")
    out = tmp_path / "part.nc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
    env.update(
        FEDHUB_HOME=str(world.store.home),
        FEDHUB_URL=federation.site_url("geomar"),
        FEDHUB_IDENTITY=OWNER,
    )

    def fedhub(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hub.cli", "result", "get", rid, "--site", "hereon", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    done = await asyncio.to_thread(fedhub, "--isel", "time=0:10", "--var", "t2m", "--out", str(out))
    assert done.returncode == 0, done.stderr
    xr.testing.assert_identical(
        open_netcdf(out, kind="Dataset", load=True), whole[["t2m"]].isel(time=slice(0, 10))
    )
    shown = await asyncio.to_thread(fedhub, "--isel", "time=2", "--isel", "lat=0:1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert str(float(whole.t2m.isel(time=2, lat=0, lon=4))) in shown.stdout
    bad = await asyncio.to_thread(fedhub, "--isel", "time=99")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1, bad.stderr
    assert lines[0].startswith("error: SelectionError") and "out of range" in lines[0]
    unparsable = await asyncio.to_thread(fedhub, "--isel", "time")
    assert unparsable.returncode != 0 and "DIM=INDEX" in unparsable.stderr


async def _tamper(node: NodeDaemon, rid: str) -> None:
    """Flip one bit of the last byte of the stored result (its ciphertext or sealed form)."""
    assert node.nc is not None
    js = node.nc.jetstream()
    stored = await stored_result(js, rid)
    await put_object(js, RESULTS_BUCKET, rid, stored[:-1] + bytes([stored[-1] ^ 1]))


@pytest.mark.parametrize(
    ("function", "kwargs", "phrase"),
    [
        ("grid", {}, "is not the one the log recorded"),
        ("line", {"n": 40_000}, "does not match its logged hash"),  # bulk: checked keyless
    ],
)
async def test_a_tampered_stored_result_is_refused_as_such_small_or_bulk(
    node: NodeDaemon,
    world: World,
    cfg: NodeConfig,
    federation: Federation,
    function: str,
    kwargs: dict[str, Any],
    phrase: str,
) -> None:
    async with await connect(world, federation) as fed:
        rid, whole = await kept(fed, function, **kwargs)
        dim = next(iter(whole.dims))
        await _tamper(node, rid)
        with pytest.raises(IntegrityError, match=phrase):
            await fed.result_slice(rid, site="hereon", isel={dim: 0})
    assert sliced(cfg) == []
