"""The node's continuous pull consumer, against a real nats-server.

It must never hold more calls than it has free slots, take more as slots free up, leave
nothing behind when it stops, and keep taking calls after the server restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from support.hostile import wait_until
from support.world import World

from hub import subjects
from hub.client import Client
from hub.errors import FederationError
from hub.nats import NatsServer, ensure_calls_consumer, ensure_site_streams
from hub.nats import connect as nats_connect
from node.consumer import CallConsumer
from node.daemon import NodeDaemon

SITE = "hereon"
CALLER = "klaus@geomar"


@pytest.fixture
async def nc(fresh_nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A client of a fresh server with hereon's streams and the durable call consumer."""
    client = await nats_connect(fresh_nats_server.url)
    js = client.jetstream()
    await ensure_site_streams(js, SITE)
    await ensure_calls_consumer(js, SITE, ack_wait=30)
    yield client
    await client.close()


async def publish_calls(nc: NatsClient, count: int) -> None:
    js = nc.jetstream()
    for i in range(count):
        await js.publish(f"fh.call.{SITE}.climate.scale", b"call %d" % i)


async def pending(nc: NatsClient) -> tuple[int, int]:
    """(calls waiting in the stream, calls handed out and not acked)."""
    info = await nc.jetstream().consumer_info(subjects.CALLS_STREAM, subjects.CALLS_CONSUMER)
    return int(info.num_pending or 0), int(info.num_ack_pending or 0)


async def test_the_consumer_never_holds_more_calls_than_its_window(nc: NatsClient) -> None:
    held: list[Msg] = []
    consumer = CallConsumer(
        nc, subjects.CALLS_STREAM, subjects.CALLS_CONSUMER, held.append, window=4, refill=2
    )
    await consumer.start()
    try:
        await publish_calls(nc, 10)
        await wait_until(lambda: len(held) == 4)
        await asyncio.sleep(0.3)  # nothing more may arrive while all four slots are busy
        assert len(held) == 4
        assert await pending(nc) == (6, 4)

        # one slot free is below the refill mark (2): no new request yet
        await held[0].ack()
        consumer.release()
        await asyncio.sleep(0.3)
        assert len(held) == 4

        # a second free slot reaches it: exactly two more calls come
        await held[1].ack()
        consumer.release()
        await wait_until(lambda: len(held) == 6)
        await asyncio.sleep(0.3)
        assert len(held) == 6
        assert consumer.busy == 4
        assert [m.data for m in held] == [b"call %d" % i for i in range(6)]
    finally:
        await consumer.close()


async def test_calls_beyond_the_window_are_handed_back_even_if_it_asked_for_too_many(
    nc: NatsClient,
) -> None:
    held: list[Msg] = []
    consumer = CallConsumer(
        nc, subjects.CALLS_STREAM, subjects.CALLS_CONSUMER, held.append, window=2, refill=1
    )
    await consumer.start()
    try:
        consumer.reset()  # as after a silence: its first request is taken for lost, but is not
        await nc.flush()
        await publish_calls(nc, 4)
        await wait_until(lambda: consumer.refused >= 2)
        assert len(held) == 2 and consumer.busy == 2
        for msg in held:
            await msg.ack()
            consumer.release()
        # the two handed back come again once there is room for them
        await wait_until(lambda: len(held) == 4)
        assert sorted(m.data for m in held) == [b"call %d" % i for i in range(4)]
    finally:
        await consumer.close()


async def test_calls_after_a_consumer_stopped_go_to_the_next_one_at_once(
    nc: NatsClient,
) -> None:
    held: list[Msg] = []
    consumer = CallConsumer(
        nc, subjects.CALLS_STREAM, subjects.CALLS_CONSUMER, held.append, window=8
    )
    await consumer.start()
    # its pull request may still stand on the server: whatever reaches it now is handed
    # back (-NAK), and the inbox is gone, so the server drops the request
    await consumer.close()
    await publish_calls(nc, 3)
    other: list[Msg] = []
    second = CallConsumer(
        nc, subjects.CALLS_STREAM, subjects.CALLS_CONSUMER, other.append, window=8
    )
    await second.start()
    try:
        # none of the three waits for ack_wait (30 s): each reaches the second consumer
        await wait_until(lambda: len(other) == 3)
        assert held == []
    finally:
        await second.close()


async def test_a_node_keeps_taking_calls_after_its_nats_server_restarts(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    world = World(tmp_path / "world")
    world.person(CALLER)
    cfg = world.node_config(
        SITE,
        nats_url=fresh_nats_server.url,
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )
    async with (
        NodeDaemon(cfg, grace=2),
        await Client.connect(fresh_nats_server.url, CALLER, home=world.store.home) as klaus,
    ):
        assert await klaus.call("hereon.climate.scale", values=[1.0], timeout=15) == [2.0]
        await fresh_nats_server.restart()
        answer = None
        for _ in range(30):  # both clients reconnect; the node asks for calls again
            try:
                answer = await klaus.call("hereon.climate.scale", values=[2.0], timeout=3)
                break
            except FederationError:  # not reconnected yet: timeout, no responders...
                await asyncio.sleep(0.3)
        assert answer == [4.0]
