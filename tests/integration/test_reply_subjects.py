"""A node sends a call's replies only to an inbox of the caller who signed it.

The signed header names the reply subject. Were any subject taken, a registered caller
could make the node publish its frames wherever the node's connection may publish: into
its site's streams (the event copies, the result store's objects), the JetStream API,
another service, another person's inbox. So a request whose reply subject is not an inbox
of its caller (``fh.inbox.<site>.<name>.<token>``) is rejected as malformed, runs nothing,
and nothing is sent to the subject it named.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from support.hostile import LogView, craft_request, wait_until
from support.world import World

from hub.client import Client
from hub.nats import connect as nats_connect
from hub.subjects import CALLS_STREAM, RESULTS_BUCKET
from node.config import NodeConfig
from node.daemon import NodeDaemon

CALLER = "klaus@geomar"

HOSTILE_REPLIES = [
    f"$JS.API.STREAM.DELETE.{CALLS_STREAM}",
    f"$O.{RESULTS_BUCKET}.M.c29tZW9uZS1lbHNlcy1yZXN1bHQ",
    "fh.events.hereon.n1",
    "fh.admin.hereon",
    "fh.inbox.geomar.eve.x1",  # another person's inbox
    "fh.inbox.geomar.klaus.a.b",  # more than one token after the prefix
    "fh.inbox.geomar.klaus",  # the prefix alone
    "fh.inbox.geomar.klausx.t1",  # a prefix of the name
]


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys: klaus at geomar, vouched by his site."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture
def cfg(world: World) -> NodeConfig:
    """A hereon node on its own embedded server; klaus may call all of climate."""
    return world.node_config(
        "hereon", trust=["geomar"], users=[CALLER], grants=[(CALLER, "climate", "*")]
    )


@pytest.fixture
async def node(cfg: NodeConfig) -> AsyncIterator[NodeDaemon]:
    """The node, running in this test's loop."""
    async with NodeDaemon(cfg, grace=2) as node:
        yield node


@pytest.mark.parametrize("reply", HOSTILE_REPLIES)
async def test_a_request_naming_a_reply_subject_not_its_callers_inbox_is_rejected_unanswered(
    node: NodeDaemon, world: World, cfg: NodeConfig, reply: str
) -> None:
    assert node.eventlog is not None
    key = node.eventlog.key
    crafted = craft_request(
        world.store.load(CALLER),
        node_kid=key.kid,
        node_box_key=key.box_public,
        address="hereon.climate.scale",
        kwargs={"values": [1.0]},
        reply=reply,
    )
    spied: list[str] = []

    async def spy(msg: Msg) -> None:
        if msg.data[:4] == b"FHP1":  # a reply frame of the node
            spied.append(msg.subject)

    nc = await nats_connect(node.url)
    try:
        sub = await nc.subscribe(reply, cb=spy)
        await nc.flush()
        js = nc.jetstream()
        await js.publish(crafted.subject, crafted.data, headers={"Nats-Msg-Id": crafted.request_id})
        view = LogView(cfg.log_path)
        await wait_until(lambda: view.rejections(), limit=10)
        # a valid call after it: once it is answered, the node dealt with the one before
        assert await _valid_call(node, world) == [2.0]
        await nc.flush()
        await sub.unsubscribe()
    finally:
        await nc.close()
    (rejection,) = view.rejections()
    assert rejection["code"] == "malformed"
    assert "is not an inbox of klaus@geomar" in rejection["reason"]
    kinds = [e["type"] for e in view.for_request(crafted.request_id)]
    assert kinds == ["request.rejected"], "nothing was accepted"
    assert spied == [], "the node published to the subject the request named"
    assert await _stream_alive(node), "the call stream is still there"


async def _valid_call(node: NodeDaemon, world: World) -> object:
    async with await Client.connect(node.url, CALLER, home=world.store.home) as fed:
        return await fed.call("hereon.climate.scale", values=[1.0], timeout=15)


async def _stream_alive(node: NodeDaemon) -> bool:
    assert node.nc is not None
    info = await node.nc.jetstream().stream_info(CALLS_STREAM)
    return info.config.name == CALLS_STREAM
