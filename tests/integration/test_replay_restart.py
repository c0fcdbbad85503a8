"""Replay protection across a restart, on a real node (its own nats-server, its SQLite log):
a request the node took before it stopped is refused when sent again, by its id and -- as a
new request with the same nonce -- by the nonces it read back from its log; a request whose
time is outside the window is refused; and the node goes on serving."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from support.hostile import Crafted, LogView, craft_request
from support.world import CLIMATE, World

from hub.clock import format_time
from hub.envelopes import parse_request_header, split_request
from hub.lifecycle import RequestState
from node.config import NodeConfig
from node.daemon import NodeDaemon

CALLER = "klaus@geomar"
WINDOW = 300.0


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture
def cfg(world: World) -> NodeConfig:
    return world.node_config(
        "hereon",
        trust=["geomar"],
        users=[CALLER],
        modules=[("climate", CLIMATE)],
        grants=[(CALLER, "climate", "*")],
        calls={"replay_window": WINDOW},
    )


def _request(world: World, node: NodeDaemon, **overrides: str) -> Crafted:
    assert node.eventlog is not None
    key = node.eventlog.key
    return craft_request(
        world.store.load(CALLER),
        node_kid=key.kid,
        node_box_key=key.box_public,
        address="hereon.climate.scale",
        kwargs={"values": [1.0]},
        **overrides,
    )


async def test_a_request_taken_before_a_restart_is_refused_after_it_however_it_comes_back(
    world: World, cfg: NodeConfig
) -> None:
    async with NodeDaemon(cfg, grace=2) as node:
        assert node.pipeline is not None
        first = _request(world, node)
        assert (await node.pipeline.handle(first.data, first.subject)).state == (
            RequestState.COMPLETED
        )
    nonce = parse_request_header(split_request(first.data)[0]).nonce
    stale = format_time(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2 * WINDOW))

    async with NodeDaemon(cfg, grace=2) as node:
        assert node.pipeline is not None
        again = await node.pipeline.handle(first.data, first.subject)
        same_nonce = _request(world, node, nonce=nonce)  # a new id, signed by the caller
        reused = await node.pipeline.handle(same_nonce.data, same_nonce.subject)
        old = _request(world, node, sent=stale)
        outside = await node.pipeline.handle(old.data, old.subject)
        fresh = _request(world, node)
        served = await node.pipeline.handle(fresh.data, fresh.subject)

    for outcome in (again, reused, outside):
        assert (outcome.state, outcome.code) == (RequestState.REJECTED, "replay")
    assert served.state == RequestState.COMPLETED
    reasons = {r["request_id"]: r["reason"] for r in LogView(cfg.log_path).rejections()}
    assert "was received before" in reasons[first.request_id]
    assert f"nonce {nonce} was used before" in reasons[same_nonce.request_id]
    assert "outside the 300 s window" in reasons[old.request_id]
    kinds = [e["type"] for e in LogView(cfg.log_path).for_request(first.request_id)]
    assert kinds.count("request.accepted") == 1 and kinds.count("request.completed") == 1
