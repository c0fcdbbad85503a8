"""What a caller sees when a call goes wrong, and that the node keeps serving afterwards.

Each failure must reach the caller as a typed exception whose message says what happened,
be logged by the node (``request.failed`` or ``request.rejected`` with its code), and leave
the node serving: every test ends with a normal call that succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.hostile import LogView, audit_node, craft_request, publish_and_wait, wait_until
from support.world import World

from hub import client as client_module
from hub.client import Client
from hub.errors import (
    ArgumentError,
    CallCancelledError,
    CallTimeoutError,
    CanonicalError,
    FunctionFailedError,
    NotFoundError,
    ValidationError,
)
from hub.nats import connect as nats_connect
from node.config import NodeConfig
from node.daemon import NodeDaemon

CALLER = "klaus@geomar"


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys: klaus at geomar, vouched by his site."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


def node_config(world: World, *, executor: str = "thread", **calls: Any) -> NodeConfig:
    """A hereon node on its own embedded server; klaus may call all of climate."""
    return world.node_config(
        "hereon",
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
        executor=executor,
        calls=calls or None,
    )


@pytest.fixture
def cfg(world: World) -> NodeConfig:
    """The default node config."""
    return node_config(world)


@pytest.fixture
async def node(cfg: NodeConfig) -> AsyncIterator[NodeDaemon]:
    """The node, running in this test's loop."""
    async with NodeDaemon(cfg, grace=2) as node:
        yield node


@pytest.fixture
async def fed(node: NodeDaemon, world: World) -> AsyncIterator[Client]:
    """Klaus's client, connected to the node's server."""
    async with await Client.connect(node.url, CALLER, home=world.store.home) as client:
        yield client


async def still_serves(fed: Client) -> None:
    """A normal call succeeds."""
    assert await fed.call("hereon.climate.scale", values=[1.5, 2.0], factor=2.0, timeout=15) == [
        3.0,
        4.0,
    ]


def outcome(cfg: NodeConfig, rid: str) -> list[tuple[str, str | None]]:
    """(type, code) of a request's final or rejection events."""
    kinds = ("request.completed", "request.failed", "request.rejected")
    return [
        (e["type"], e.get("code"))
        for e in LogView(cfg.log_path).for_request(rid)
        if e["type"] in kinds
    ]


# --- unknown names ----------------------------------------------------------------------


async def test_an_unknown_function_is_refused_with_the_functions_the_module_serves(
    fed: Client,
) -> None:
    with pytest.raises(NotFoundError) as err:
        await fed.call("hereon.climate.no_such_function", timeout=5)
    assert "no_such_function" in err.value.message
    assert err.value.hint is not None and "compute_sum" in err.value.hint
    await still_serves(fed)


async def test_a_timeout_longer_than_a_header_may_give_is_refused_before_anything_is_sent(
    fed: Client, cfg: NodeConfig
) -> None:
    with pytest.raises(ArgumentError, match="timeout"):
        await fed.call("hereon.climate.scale", values=[1.0], timeout=8 * 86400)
    await still_serves(fed)
    assert LogView(cfg.log_path).count("request.accepted") == 1  # the refused one never left


async def test_an_info_answer_with_a_malformed_schema_hash_is_refused(fed: Client) -> None:
    info = await fed.module_info("hereon", "climate")
    forged = info.info.model_copy(
        update={
            "functions": {
                name: fn.model_copy(update={"schema_hash": "not-a-hash"})
                for name, fn in info.functions.items()
            }
        }
    )
    with pytest.raises(CanonicalError, match="schema hash"):
        fed.remember_info("hereon", "climate", forged.model_dump_json().encode())


async def test_a_request_for_an_unknown_function_that_reaches_the_node_is_rejected_and_logged(
    fed: Client, node: NodeDaemon, cfg: NodeConfig, world: World
) -> None:
    # Skip the client's own check: a hand-made request for a function the node lacks.
    key = node.eventlog.key  # type: ignore[union-attr]
    crafted = craft_request(
        world.store.load(CALLER),
        node_kid=key.kid,
        node_box_key=key.box_public,
        address="hereon.climate.no_such_function",
        kwargs={},
    )
    reply = await publish_and_wait(fed.nc, crafted)
    assert reply.header.kind == "error"
    assert reply.header.code == "not_found"
    assert "no_such_function" in (reply.header.message or "")
    assert outcome(cfg, crafted.request_id) == [("request.rejected", "not_found")]
    await still_serves(fed)


@pytest.mark.parametrize(
    ("address", "named"),
    [("hereon.no_such_module.f", "no_such_module"), ("nosite.climate.f", "nosite")],
)
async def test_an_unknown_module_or_site_is_refused_promptly(
    fed: Client, address: str, named: str
) -> None:
    async with asyncio.timeout(10):  # refused, not left waiting for its deadline
        with pytest.raises(NotFoundError) as err:
            await fed.call(address, timeout=60)
    assert named in err.value.message
    await still_serves(fed)


async def test_waiting_for_a_result_has_a_deadline_and_the_call_still_finishes(
    fed: Client,
) -> None:
    handle = await fed.submit("hereon.climate.sleep", seconds=1.0, timeout=30)
    with pytest.raises(CallTimeoutError) as err:
        await handle.result(timeout=0.2)
    assert handle.request_id in err.value.message
    assert err.value.hint is not None and "fedhub status" in err.value.hint
    assert await handle.result(timeout=15) == 1.0


# --- the function's side ------------------------------------------------------------------


async def test_arguments_that_break_the_schema_raise_validation_error_naming_the_field(
    fed: Client, cfg: NodeConfig
) -> None:
    handle = await fed.submit("hereon.climate.scale", values="not a list", timeout=15)
    with pytest.raises(ValidationError) as err:
        await handle.result()
    assert "values" in err.value.message
    assert outcome(cfg, handle.request_id) == [("request.failed", "invalid_arguments")]
    await still_serves(fed)


async def test_a_function_that_raises_gives_function_failed_with_type_and_message(
    fed: Client, cfg: NodeConfig
) -> None:
    secret = "reactor-7 overheated"
    handle = await fed.submit("hereon.climate.fail", message=secret, timeout=15)
    with pytest.raises(FunctionFailedError) as err:
        await handle.result()
    assert "RuntimeError" in err.value.message
    assert secret in err.value.message
    assert outcome(cfg, handle.request_id) == [("request.failed", "function_failed")]
    # The message may carry data: the caller sees it (encrypted), the log does not.
    assert secret.encode() not in LogView(cfg.log_path).raw_bytes()
    await still_serves(fed)


async def test_a_call_whose_answer_never_comes_fails_at_its_deadline_naming_the_request(
    fed: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "_GRACE", 1.0)
    await fed._sub.unsubscribe()  # every answer to this client is lost from now on
    with pytest.raises(CallTimeoutError) as err:
        await fed.call("hereon.climate.sleep", seconds=5.0, timeout=1.0)
    assert "in time" in err.value.message  # the client's own deadline, not the node's
    assert err.value.hint is not None and "fedhub status" in err.value.hint
    assert not fed._pending and not fed._recovery.tasks


async def test_a_call_past_its_timeout_fails_with_a_timeout_and_is_logged_as_one(
    fed: Client, cfg: NodeConfig
) -> None:
    handle = await fed.submit("hereon.climate.sleep", seconds=5.0, timeout=0.5)
    async with asyncio.timeout(4):
        with pytest.raises(CallTimeoutError) as err:
            await handle.result()
    # The node enforces the deadline and answers at once (well before the client's own
    # wait, which allows a few seconds of grace); the caller gets a typed timeout.
    assert isinstance(err.value, TimeoutError)
    assert "timed out" in err.value.message
    assert outcome(cfg, handle.request_id) == [("request.failed", "timeout")]
    await still_serves(fed)


async def test_cancelling_a_running_call_raises_call_cancelled(
    fed: Client, cfg: NodeConfig
) -> None:
    handle = await fed.submit("hereon.climate.sleep", seconds=3.0, timeout=30)
    view = LogView(cfg.log_path)
    await wait_until(
        lambda: any(e["type"] == "request.accepted" for e in view.for_request(handle.request_id))
    )
    await handle.cancel()
    async with asyncio.timeout(10):
        with pytest.raises(CallCancelledError) as err:
            await handle.result()
    assert "cancel" in err.value.message
    assert outcome(cfg, handle.request_id) == [("request.failed", "cancelled")]
    await still_serves(fed)


async def test_a_crashing_worker_process_fails_the_call_and_the_next_call_works(
    world: World,
) -> None:
    cfg = node_config(world, executor="process")
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(node.url, CALLER, home=world.store.home) as fed,
    ):
        handle = await fed.submit("hereon.climate.crash", timeout=30)
        with pytest.raises(FunctionFailedError) as err:
            await handle.result()
        assert "worker" in err.value.message
        assert outcome(cfg, handle.request_id) == [("request.failed", "function_failed")]
        await still_serves(fed)
        await still_serves(fed)
    report = audit_node(cfg, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


# --- size -------------------------------------------------------------------------------


SMALL = 64 * 1024  # the node's [calls] max_payload in these tests


async def test_arguments_too_large_for_one_message_travel_as_a_bulk_transfer(
    world: World,
) -> None:
    cfg = node_config(world, max_payload=SMALL)
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(node.url, CALLER, home=world.store.home) as fed,
    ):
        stream = await fed.js.stream_info("FH_CALLS")
        data = b"\x01" * (4 * SMALL)
        assert await fed.call("hereon.climate.checksum", data=data, timeout=10) == sum(data) % 65536
        after = await fed.js.stream_info("FH_CALLS")
        assert after.state.last_seq == stream.state.last_seq + 1, "one small call message"
        assert after.state.bytes - stream.state.bytes < SMALL, "the data went beside it"
        await still_serves(fed)


async def test_the_node_rejects_a_message_above_its_own_limit_unread(world: World) -> None:
    cfg = node_config(world, max_payload=SMALL)
    async with NodeDaemon(cfg, grace=2) as node:
        key = node.eventlog.key  # type: ignore[union-attr]
        big = craft_request(
            world.store.load(CALLER),
            node_kid=key.kid,
            node_box_key=key.box_public,
            address="hereon.climate.checksum",
            kwargs={"data": b"\x02" * (SMALL + 8 * 1024)},
        )
        assert SMALL < len(big.data) < node.server.max_payload  # type: ignore[union-attr]
        nc = await nats_connect(node.url)
        try:
            await nc.jetstream().publish(
                big.subject, big.data, headers={"Nats-Msg-Id": big.request_id}
            )
            view = LogView(cfg.log_path)
            await wait_until(lambda: any(r["code"] == "oversize" for r in view.rejections()))
        finally:
            await nc.close()
        assert view.counts()["request.accepted"] == 0
        async with await Client.connect(node.url, CALLER, home=world.store.home) as fed:
            await still_serves(fed)
    report = audit_node(cfg, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def test_arguments_above_the_nodes_limit_go_beside_the_call_message(
    world: World,
) -> None:
    """The node publishes its limit in the module info; the client stays below it."""
    cfg = node_config(world, max_payload=SMALL)
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(node.url, CALLER, home=world.store.home) as fed,
    ):
        data = b"\x03" * (SMALL + 8 * 1024)
        assert await fed.call("hereon.climate.checksum", data=data) == sum(data) % 65536
        await still_serves(fed)
