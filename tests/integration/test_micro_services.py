"""Stock NATS tools see the services: each module a NATS micro service, each function an
endpoint with its schema in the endpoint's metadata (what ``nats micro ls`` and
``nats micro info`` print), at the serving site and, through the hub, at another site.
An unknown module at a live site answers ``not_found``, also across the hub.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import node_nats
from support.hostile import wait_reachable
from support.world import World

from hub.client import Client
from hub.errors import NotFoundError
from hub.nats import connect as nats_connect
from hub.subjects import DISCOVERY_SUBJECT
from node.config import NodeConfig
from node.daemon import NodeDaemon
from node.services import endpoint_name

if TYPE_CHECKING:
    from conftest import Federation

pytestmark = pytest.mark.slow

CALLER = "klaus@geomar"


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture
def hereon_cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    return world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        **node_nats(federation, "hereon"),
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )


async def micro_info(nc: Any, subject: str, window: float = 1.0) -> list[dict[str, Any]]:
    """Every answer to a ``$SRV.INFO``-style request within ``window`` s (as ``nats micro``)."""
    answers: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        answers.append(json.loads(msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    await nc.flush()
    await asyncio.sleep(window)
    await sub.unsubscribe()
    return answers


def climate_service(answers: list[dict[str, Any]]) -> dict[str, Any]:
    (svc,) = [a for a in answers if a.get("name") == "fedhub-hereon-climate"]
    return svc


async def test_every_function_is_a_micro_endpoint_with_its_schema_in_the_metadata(
    hereon_cfg: NodeConfig, federation: Federation
) -> None:
    async with NodeDaemon(hereon_cfg):
        nc = await nats_connect(
            federation.site_url("hereon"), **federation.client_options("hereon", "operator")
        )
        try:
            svc = climate_service(await micro_info(nc, "$SRV.INFO.fedhub-hereon-climate"))
            endpoints = {e["name"]: e for e in svc["endpoints"]}
            assert svc["metadata"]["fedhub.info_subject"] == "fh.info.hereon.climate"
            scale = endpoints["scale"]
            assert scale["subject"] == "fh.info.hereon.climate.scale"
            meta = scale["metadata"]
            assert meta["fedhub.call_subject"] == "fh.call.hereon.climate.scale"
            assert "values" in json.loads(meta["fedhub.arguments"])["properties"]
            assert json.loads(meta["fedhub.returns"])
            assert endpoints[endpoint_name("Station.describe")]["subject"].endswith(
                ".Station.describe"
            )
            # the endpoint answers with the function's own description
            answer = json.loads((await nc.request(scale["subject"], b"", timeout=5)).data)
            assert answer["name"] == "scale" and answer["arguments"] == json.loads(
                meta["fedhub.arguments"]
            )
        finally:
            await nc.close()


async def test_a_caller_at_another_site_sees_the_services_through_the_hub(
    world: World, hereon_cfg: NodeConfig, federation: Federation
) -> None:
    async with NodeDaemon(hereon_cfg):
        auth = federation.caller_auth(CALLER)
        async with await Client.connect(
            federation.site_url("geomar"), CALLER, home=world.store.home, **auth
        ) as fed:
            await wait_reachable(fed, "hereon", "climate")
            svc = climate_service(await micro_info(fed.nc, DISCOVERY_SUBJECT))
            assert svc["metadata"]["fedhub.site"] == "hereon"
            names = {e["name"] for e in svc["endpoints"]}
            assert {"scale", "compute_sum"} <= names
            with pytest.raises(NotFoundError, match=r"no node serves hereon\.nosuch"):
                await fed.module_info("hereon", "nosuch")
            with pytest.raises(NotFoundError, match=r"no node serves hereon\.nosuch"):
                await fed.call("hereon.nosuch.f", x=1, timeout=30)
