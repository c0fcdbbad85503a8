"""Calls across institutions: a caller at geomar, a node at hereon, the hub in between.

The node connects to hereon's leaf server, the caller to geomar's; the only path between
them is the hub's leaf connections. The call lands in hereon's own JetStream (``FH_CALLS``
in domain ``hereon``), and the arguments and the result are xarray objects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.js.errors
import numpy as np
import pytest
import xarray as xr
from conftest import node_nats
from nats.aio.client import Client as NatsClient
from support.hostile import LogView, NodeThread, audit_node, wait_reachable
from support.world import World

from hub.canonical import b64d, parse_canonical
from hub.client import Client, connect
from hub.errors import NotFoundError
from hub.nats import connect as nats_connect
from hub.subjects import CALLS_STREAM
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

CALLER = "klaus@geomar"


def _field() -> xr.DataArray:
    """A small climate field with coordinates, attributes, a name and a missing value."""
    rng = np.random.default_rng(7)
    da = xr.DataArray(
        rng.normal(280.0, 5.0, size=(5, 3, 2)).astype("float32"),
        dims=("time", "lat", "lon"),
        coords={
            "time": np.arange("2026-01-01", "2026-01-06", dtype="datetime64[D]").astype(
                "datetime64[ns]"
            ),
            "lat": [53.5, 54.0, 54.5],
            "lon": [8.0, 8.5],
        },
        name="tas",
        attrs={"units": "K", "source": "test"},
    )
    da[1, 0, 0] = np.nan
    return da


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys of the federation: klaus at geomar, vouched by his site."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture
def hereon_cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    """A hereon node on hereon's leaf server; klaus may call the climate module."""
    return world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        **node_nats(federation, "hereon"),
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )


@pytest.fixture
async def hereon_js(federation: Federation) -> AsyncIterator[NatsClient]:
    """hereon's operator on hereon's leaf server (to look at its JetStream)."""
    nc = await nats_connect(
        federation.site_url("hereon"), **federation.client_options("hereon", "operator")
    )
    yield nc
    await nc.close()


async def test_a_caller_at_geomar_gets_an_xarray_back_from_a_function_at_hereon_through_the_hub(
    world: World, hereon_cfg: NodeConfig, federation: Federation, hereon_js: NatsClient
) -> None:
    da = _field()
    js = hereon_js.jetstream()
    async with NodeDaemon(hereon_cfg):
        before = (await js.stream_info(CALLS_STREAM)).state.last_seq
        async with await Client.connect(
            federation.site_url("geomar"),
            CALLER,
            home=world.store.home,
            **federation.caller_auth(CALLER),
        ) as fed:
            await wait_reachable(fed, "hereon", "climate")
            result = await fed.call("hereon.climate.compute_sum", da=da, timeout=30)
            # geomar's own JetStream holds no stream for hereon's calls: the call crossed
            # the hub into hereon's domain (asked by geomar's operator: a caller has no
            # JetStream API).
            geomar = await nats_connect(
                federation.site_url("geomar"), **federation.client_options("geomar", "operator")
            )
            try:
                with pytest.raises(nats.js.errors.NotFoundError):
                    await geomar.jetstream().find_stream_name_by_subject(
                        "fh.call.hereon.climate.compute_sum"
                    )
            finally:
                await geomar.close()
        after = (await js.stream_info(CALLS_STREAM)).state.last_seq

    assert isinstance(result, xr.DataArray)
    xr.testing.assert_identical(result, da.sum(dim="time"))
    assert after == before + 1, "the call was stored once in hereon's FH_CALLS"
    view = LogView(hereon_cfg.log_path)
    received = view.events("request.accepted")
    headers = [parse_canonical(b64d(e["data"]["header"])) for e in received]
    assert [(h["caller"], f"{h['site']}.{h['module']}.{h['function']}") for h in headers] == [
        (CALLER, "hereon.climate.compute_sum")
    ]
    assert [e["data"]["request_id"] for e in view.events("request.completed")] == [
        received[0]["data"]["request_id"]
    ]
    report = audit_node(hereon_cfg, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def test_the_caller_fetches_its_stored_xarray_result_again_across_the_hub(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    da = _field()
    async with (
        NodeDaemon(hereon_cfg),
        await Client.connect(
            federation.site_url("geomar"),
            CALLER,
            home=world.store.home,
            **federation.caller_auth(CALLER),
        ) as fed,
    ):
        await wait_reachable(fed, "hereon", "climate")
        handle = await fed.submit("hereon.climate.compute_sum", da=da, timeout=30)
        first = await handle.result()
        again = await fed.fetch("hereon", handle.request_id)
        with pytest.raises(NotFoundError, match="no request"):
            await fed.fetch("hereon", "A" * 22)
    xr.testing.assert_identical(again, first)
    view = LogView(hereon_cfg.log_path)
    fetched = view.events("result.fetched")
    assert [(e["data"]["request_id"], e["data"]["by"]) for e in fetched] == [
        (handle.request_id, CALLER)
    ]
    report = audit_node(hereon_cfg, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def test_progress_reports_arrive_in_order_and_end_at_one(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    da = _field()
    seen: list[tuple[float | None, str]] = []
    async with (
        NodeDaemon(hereon_cfg),
        await Client.connect(
            federation.site_url("geomar"),
            CALLER,
            home=world.store.home,
            **federation.caller_auth(CALLER),
        ) as fed,
    ):
        await wait_reachable(fed, "hereon", "climate")
        mean = await fed.call(
            "hereon.climate.slow_mean",
            da=da,
            steps=8,
            timeout=30,
            on_progress=lambda fraction, message: seen.append((fraction, message)),
        )

    assert mean == pytest.approx(float(da.mean()))
    assert len(seen) >= 2, seen
    assert all(f is not None for f, _ in seen), seen
    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions), f"progress went backwards: {fractions}"
    assert fractions[-1] == 1.0
    steps = [int(m.split()[1]) for _, m in seen]
    assert steps == sorted(steps) and steps[-1] == 8, seen


async def test_the_sync_client_works_while_an_event_loop_runs_in_the_calling_thread(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    da = _field()
    url = federation.site_url("geomar")

    def notebook_cell() -> Any:
        """What a Jupyter cell does: plain blocking code on a thread whose loop runs."""
        asyncio.get_running_loop()  # raises unless a loop is running here, as in Jupyter
        with connect(url, CALLER, home=world.store.home, **federation.caller_auth(CALLER)) as fed:
            deadline = time.monotonic() + 10
            while True:
                try:
                    fed.module_info("hereon", "climate")
                    break
                except NotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            return fed.call("hereon.climate.compute_sum", da=da, timeout=30)

    node = NodeThread(hereon_cfg)  # the node must not share the loop this test blocks
    try:
        result = notebook_cell()
    finally:
        node.stop()
    xr.testing.assert_identical(result, da.sum(dim="time"))
