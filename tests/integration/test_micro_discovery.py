"""Stock NATS tools see the services: each module is a NATS micro service and each
function one of its endpoints, with its schemas in the endpoint metadata.

What ``nats micro ls`` and ``nats micro info`` do is a ``$SRV.PING`` / ``$SRV.INFO.<name>``
request; these tests make the same requests over the wire (the operator at the serving
site), then ask a function's endpoint from another site, through the hub, as a caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import node_nats
from nats.aio.client import Client as NatsClient
from support.world import World

from hub.answers import FunctionInfo, ModuleDescription
from hub.client import Client
from hub.nats import connect as nats_connect
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

CALLER = "klaus@geomar"


@pytest.fixture
def hereon(tmp_path: Path, federation: Federation, unique: Any) -> tuple[World, NodeConfig]:
    world = World(tmp_path / "world")
    world.person(CALLER)
    cfg = world.node_config(
        "hereon",
        name=unique("micro").replace("_", "-"),
        **node_nats(federation, "hereon"),
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )
    return world, cfg


@pytest.fixture
async def operator(federation: Federation) -> AsyncIterator[NatsClient]:
    nc = await nats_connect(
        federation.site_url("hereon"), **federation.client_options("hereon", "operator")
    )
    yield nc
    await nc.close()


async def _gather(nc: NatsClient, subject: str, window: float = 1.0) -> list[dict[str, Any]]:
    """Every answer to one request within ``window`` seconds (as ``nats micro ls`` waits)."""
    answers: list[dict[str, Any]] = []
    inbox = nc.new_inbox()

    async def collect(msg: Any) -> None:
        answers.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    await asyncio.sleep(window)
    await sub.unsubscribe()
    return answers


async def test_nats_micro_ls_and_info_list_each_function_with_its_schemas(
    hereon: tuple[World, NodeConfig], operator: NatsClient
) -> None:
    _, cfg = hereon
    async with NodeDaemon(cfg) as node:
        assert node.eventlog is not None
        log_id = node.eventlog.log_id
        pings = await _gather(operator, "$SRV.PING.fedhub-hereon-climate", 2.0)
        ours = [p for p in pings if p.get("metadata", {}).get("fedhub.node") == log_id]
        assert len(ours) == 1 and ours[0]["type"] == "io.nats.micro.v1.ping_response"

        infos = await _gather(operator, "$SRV.INFO.fedhub-hereon-climate", 2.0)
        [info] = [i for i in infos if i["id"] == ours[0]["id"]]
    endpoints = {e["name"]: e for e in info["endpoints"]}
    assert endpoints["_module"]["subject"] == "fh.info.hereon.climate"
    scale = endpoints["scale"]
    assert scale["subject"] == "fh.info.hereon.climate.scale"
    meta = scale["metadata"]
    assert meta["fedhub.call_subject"] == "fh.call.hereon.climate.scale"
    arguments = json.loads(meta["fedhub.arguments"])
    assert set(arguments["properties"]) == {"values", "factor"}
    assert arguments["required"] == ["values"]
    assert json.loads(meta["fedhub.returns"])["type"] == "array"
    assert meta["fedhub.progress"] == "false"
    # a method: the endpoint name has no dot (micro names do not take one), the subject does
    method = endpoints["Station-describe"]
    assert method["subject"] == "fh.info.hereon.climate.Station.describe"
    assert method["metadata"]["fedhub.function"] == "Station.describe"
    # every served function is an endpoint, private helpers are not
    served = {e["metadata"]["fedhub.function"] for e in info["endpoints"] if e["metadata"]}
    assert served == set(info["metadata"]["fedhub.functions"].split(","))
    assert "_helper" not in served


async def test_a_caller_at_another_site_reads_a_functions_description_through_the_hub(
    hereon: tuple[World, NodeConfig], federation: Federation
) -> None:
    world, cfg = hereon
    async with (
        NodeDaemon(cfg),
        await Client.connect(
            federation.site_url("geomar"), CALLER, home=world.store.home,
            **federation.caller_auth(CALLER),
        ) as fed,
    ):  # fmt: skip
        info = await fed.module_info("hereon", "climate")  # waits for interest to cross
        msg = await fed.nc.request("fh.info.hereon.climate.slow_mean", b"", timeout=5)
        described = FunctionInfo.model_validate_json(msg.data)
        assert described == info.functions["slow_mean"]
        assert described.progress is True
        module = await fed.nc.request("fh.info.hereon.climate", b"", timeout=5)
        assert ModuleDescription.model_validate_json(module.data).functions["slow_mean"] == (
            described
        )
