"""A reply lost on the way does not leave its caller waiting while the result sits stored.

A federation of the test's own (hub, hereon, geomar): the node at hereon, the caller at
geomar. A server on the way is stopped while the node finishes a call, so the node's reply
finds nobody to take it; once the server is back, the caller gets the outcome from the
node's record (status, then the stored result) instead of waiting out its deadline.

Waits are structural: the call's deadline is far away (120 s), the test's own wait for
the result is bounded well below it (40 s; the client asks about a silent call after 10 s
and 30 s); nothing asserts on measured time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import node_nats
from nats.aio.msg import Msg
from support.hostile import LogView, wait_reachable, wait_until
from support.world import World

from hub import call_recovery
from hub.call_handle import CallHandle
from hub.client import Client
from hub.errors import CallCancelledError, CallTimeoutError, IntegrityError, NotFoundError
from hub.nats import LocalFederation, NatsServer, get_object, put_object
from hub.subjects import RESULTS_BUCKET, status_subject
from node.config import NodeConfig
from node.daemon import NodeDaemon

CALLER = "klaus@geomar"
#: Far away: a caller that waited for it would fail the test's own bounded wait.
DEADLINE = 120.0
#: The test's own bound on waiting for the recovered outcome.
BOUND = 40.0

FederationFactory = Callable[..., Coroutine[Any, Any, LocalFederation]]


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys: klaus at geomar, vouched by his site."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


def hereon_config(world: World, fed: LocalFederation) -> NodeConfig:
    """A hereon node on hereon's leaf server; klaus may call the climate module."""
    return world.node_config(
        "hereon",
        **node_nats(fed, "hereon"),
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )


@contextlib.asynccontextmanager
async def hereon_and_caller(
    world: World, fed: LocalFederation
) -> AsyncIterator[tuple[NodeDaemon, Client, NodeConfig]]:
    """A hereon node and klaus's client at geomar, the node's climate module reachable."""
    cfg = hereon_config(world, fed)
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(
            fed.site_url("geomar"), CALLER, home=world.store.home, **fed.caller_auth(CALLER)
        ) as client,
    ):
        await wait_reachable(client, "hereon", "climate")
        yield node, client, cfg


async def running(client: Client, cfg: NodeConfig, *, seconds: float, timeout: float) -> CallHandle:
    """A call of ``climate.sleep`` submitted, once the node's log has it."""
    handle = await client.submit("hereon.climate.sleep", seconds=seconds, timeout=timeout)
    await wait_until(lambda: events_of(cfg, handle.request_id), limit=20)
    return handle


def events_of(cfg: NodeConfig, rid: str) -> list[str]:
    """The types of a request's events in the node's log."""
    return [e["type"] for e in LogView(cfg.log_path).for_request(rid)]


async def test_a_result_whose_reply_was_lost_while_the_callers_leaf_was_down_comes_on_reconnect(
    world: World, federation_factory: FederationFactory
) -> None:
    fed = await federation_factory()
    async with hereon_and_caller(world, fed) as (_, client, cfg):
        handle = await running(client, cfg, seconds=3.0, timeout=DEADLINE)
        rid = handle.request_id

        await fed.leaves["geomar"].stop()
        await wait_until(lambda: "request.completed" in events_of(cfg, rid), limit=30)
        assert not handle.done(), "the reply had nowhere to go while geomar was down"
        await fed.leaves["geomar"].start()

        assert await handle.result(timeout=BOUND) == 3.0
    assert "result.fetched" in events_of(cfg, rid), "delivered from the stored result"


async def test_a_result_whose_reply_was_lost_while_the_hub_was_down_arrives_before_the_deadline(
    world: World, federation_factory: FederationFactory
) -> None:
    # The caller's own connection never drops here, so no reconnect tells it to ask: the
    # last ask shortly before the deadline does. A short deadline keeps the test short.
    fed = await federation_factory()
    async with hereon_and_caller(world, fed) as (_, client, cfg):
        handle = await running(client, cfg, seconds=2.0, timeout=12.0)
        rid = handle.request_id

        await fed.hub.stop()
        await wait_until(lambda: "request.completed" in events_of(cfg, rid), limit=30)
        await fed.hub.start()
        await fed.wait_connected(limit=20)

        assert await handle.result() == 2.0
    assert "result.fetched" in events_of(cfg, rid)


async def test_a_reply_lost_while_the_hub_was_down_is_asked_for_long_before_a_far_deadline(
    world: World, federation_factory: FederationFactory
) -> None:
    # The caller's own connection never drops and its deadline is far away: the client
    # asks on its own, because the call has heard nothing from its node for a while.
    fed = await federation_factory()
    async with hereon_and_caller(world, fed) as (_, client, cfg):
        handle = await running(client, cfg, seconds=2.0, timeout=DEADLINE)
        rid = handle.request_id

        await fed.hub.stop()
        await wait_until(lambda: "request.completed" in events_of(cfg, rid), limit=30)
        await fed.hub.start()
        await fed.wait_connected(limit=20)
        assert not handle.done(), "the reply had nowhere to go while the hub was down"

        assert await handle.result(timeout=BOUND) == 2.0
    assert "result.fetched" in events_of(cfg, rid), "delivered from the stored result"


async def _remove_kept(node: NodeDaemon, rid: str) -> None:
    assert node.nc is not None
    await (await node.nc.jetstream().object_store(RESULTS_BUCKET)).delete(rid)


async def _alter_kept(node: NodeDaemon, rid: str) -> None:
    assert node.nc is not None
    js = node.nc.jetstream()
    kept = await get_object(js, RESULTS_BUCKET, rid)
    await put_object(js, RESULTS_BUCKET, rid, kept[:-1] + bytes([kept[-1] ^ 1]))


@pytest.mark.parametrize(
    ("spoil", "error", "says"),
    [
        (_remove_kept, NotFoundError, "reply was lost"),
        (_alter_kept, IntegrityError, "not the one the log recorded"),
    ],
    ids=["gone", "altered"],
)
async def test_a_lost_reply_whose_kept_copy_is_gone_or_altered_fails_with_that_not_a_timeout(
    world: World,
    federation_factory: FederationFactory,
    spoil: Callable[[NodeDaemon, str], Coroutine[Any, Any, None]],
    error: type[Exception],
    says: str,
) -> None:
    # the node died between its reply and storing the result, the copy was removed, or it
    # was altered: status says completed, fetch finds nothing or the wrong bytes; the last
    # ask says so instead of leaving the caller to its deadline's CallTimeoutError
    fed = await federation_factory()
    async with hereon_and_caller(world, fed) as (node, client, cfg):
        handle = await running(client, cfg, seconds=2.0, timeout=12.0)
        rid = handle.request_id

        await fed.hub.stop()
        await wait_until(lambda: "request.completed" in events_of(cfg, rid), limit=30)
        await wait_until(lambda: node.pipeline is not None and not node.pipeline.in_flight)
        await spoil(node, rid)
        await fed.hub.start()
        await fed.wait_connected(limit=20)

        with pytest.raises(error, match=says) as raised:
            await handle.result()
    assert not isinstance(raised.value, CallTimeoutError)
    assert "result.fetched" not in events_of(cfg, rid)


async def test_every_reply_lost_while_the_hub_was_down_under_load_is_recovered_from_the_store(
    world: World, federation_factory: FederationFactory
) -> None:
    # as an operator saw it: several calls in flight complete at the node while the hub is
    # down; each reply is dropped (not delayed: the node's side of the way is gone), and
    # each caller gets its result from the node's store, long before its deadline
    fed = await federation_factory()
    async with hereon_and_caller(world, fed) as (_, client, cfg):
        handles = [
            await client.submit("hereon.climate.sleep", seconds=1.0 + i / 10, timeout=DEADLINE)
            for i in range(6)
        ]
        rids = [h.request_id for h in handles]
        await wait_until(lambda: all(events_of(cfg, rid) for rid in rids), limit=20)

        await fed.hub.stop()
        await wait_until(
            lambda: all("request.completed" in events_of(cfg, rid) for rid in rids), limit=30
        )
        await fed.hub.start()
        await fed.wait_connected(limit=20)
        assert not any(h.done() for h in handles), "every reply had nowhere to go"

        results = await asyncio.wait_for(asyncio.gather(*handles), BOUND)
    assert results == [1.0 + i / 10 for i in range(6)]
    assert all("result.fetched" in events_of(cfg, rid) for rid in rids)


async def test_while_the_hub_stays_down_a_silent_call_is_asked_about_often_not_ever_later(
    world: World, federation_factory: FederationFactory
) -> None:
    # The first ask (10 s of silence) finds no way to the node. Doubling would ask next 30 s
    # after the submit; while the way is down the client asks every 5 s instead, so the
    # outcome comes soon after the hub returns.
    fed = await federation_factory()
    async with hereon_and_caller(world, fed) as (_, client, cfg):
        handle = await running(client, cfg, seconds=1.0, timeout=DEADLINE)
        rid = handle.request_id
        await fed.hub.stop()
        await wait_until(lambda: "request.completed" in events_of(cfg, rid), limit=30)
        await wait_until(lambda: handle._unreachable, limit=call_recovery.FIRST_ASK + 10)
        await fed.hub.start()
        await fed.wait_connected(limit=20)
        # well before the doubling schedule's next ask (30 s after the submit)
        wait = 2 * call_recovery.UNREACHABLE_ASK + call_recovery.CONTROL_TIMEOUT
        assert await handle.result(timeout=wait) == 1.0
        assert not handle._unreachable


async def test_a_call_that_failed_while_its_reply_could_not_travel_raises_its_typed_error(
    world: World, federation_factory: FederationFactory
) -> None:
    fed = await federation_factory()
    cfg = hereon_config(world, fed)
    async with await Client.connect(
        fed.site_url("geomar"), CALLER, home=world.store.home, **fed.caller_auth(CALLER)
    ) as client:
        async with NodeDaemon(cfg, grace=0.5):
            await wait_reachable(client, "hereon", "climate")
            handle = await client.submit("hereon.climate.sleep", seconds=60.0, timeout=DEADLINE)
            rid = handle.request_id
            await wait_until(lambda: events_of(cfg, rid), limit=20)
            await fed.leaves["geomar"].stop()
        # the node stopped with the call running and handed it back; started again, it
        # fails the call as "interrupted", and the error reply finds nobody at geomar
        async with NodeDaemon(cfg, grace=2):
            await wait_until(lambda: "request.failed" in events_of(cfg, rid), limit=30)
            assert not handle.done()
            await fed.leaves["geomar"].start()
            with pytest.raises(CallCancelledError) as err:
                await handle.result(timeout=BOUND)
    assert err.value.code == "interrupted"


async def test_closing_a_client_while_it_tries_to_reconnect_stops_the_attempts(
    world: World, fresh_nats_server: NatsServer
) -> None:
    client = await Client.connect(fresh_nats_server.client_url, CALLER, home=world.store.home)
    await fresh_nats_server.stop()
    await wait_until(lambda: client.nc.is_reconnecting, limit=10)
    await client.aclose()
    assert client.nc.is_closed


async def test_asks_about_silent_calls_leave_a_client_no_faster_than_its_pace(
    world: World, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty calls fall silent at once; their asks are spread at the client's pace, not
    sent together (a node with a client of many long calls is not flooded)."""
    monkeypatch.setattr(call_recovery, "FIRST_ASK", 0.3)
    monkeypatch.setattr(call_recovery, "ASKS_PER_SECOND", 10.0)
    asked: list[float] = []

    async def node(msg: Msg) -> None:  # a node that answers every status request at once
        asked.append(time.monotonic())
        await msg.respond(b"{}")  # (not a status: the ask ends there)

    client = await Client.connect(nats_server.client_url, CALLER, home=world.store.home)
    spy = await client.nc.subscribe(status_subject("hereon"), cb=node)
    loop = asyncio.get_running_loop()
    try:
        start = time.monotonic()
        for i in range(40):
            rid = f"silent{i:02d}" + "x" * 16  # a valid request id
            handle = CallHandle(rid, "hereon.climate.sleep", client, b"", b"",
                                loop.time() + DEADLINE, loop.create_future())  # fmt: skip
            client._pending[rid] = handle
            client._recovery.watch(handle)
        await wait_until(lambda: len(asked) >= 12, limit=BOUND)
        elapsed = time.monotonic() - start
    finally:
        await spy.unsubscribe()
        await client.aclose()
    # at most one ask per 1/10 s after the first (an upper bound: a slow machine asks less)
    assert len(asked) <= 10 * (elapsed - 0.3) + 2
    assert asked == sorted(asked)
