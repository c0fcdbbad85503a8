"""A replicated hub and a hub per region, run from generated configs on loopback.

- A hub of three servers (JetStream R3 for the hub's copies of the sites' event logs):
  one server killed, the site leaves move to another, calls across go on, and the copies
  keep every event.
- Two hub clusters joined by gateways (a supercluster, one server each): a call from a
  site of one cluster to a site of the other.

Each test starts its own federation (a few seconds for the supercluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
from conftest import node_nats
from support.chaos import hub_server_of
from support.hostile import wait_reachable
from support.world import World

from hub.client import Client
from hub.errors import TransportError
from hub.nats import connect
from hub.subjects import EVENTS_STREAM, hub_events_stream
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

FederationFactory = Callable[..., Coroutine[Any, Any, "Federation"]]
CALLER = "klaus@geomar"


def _world(tmp_path: Path, fed: Federation) -> tuple[World, Any]:
    world = World(tmp_path / "world")
    world.person(CALLER)
    cfg = world.node_config(
        "hereon",
        **node_nats(fed, "hereon"),
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )
    return world, cfg


async def _copied(fed: Federation, site: str) -> tuple[int, int]:
    """(events in the site's FH_EVENTS, events in the hub's copy).

    The copy is counted first: the node may publish more events meanwhile, so a copy
    counted after the site's stream could hold one more than was counted there, and the
    copy holding more than the site would no longer mean an event copied twice."""
    site_nc = await connect(fed.site_url(site), **fed.client_options(site, "operator"))
    hub_nc = await connect(fed.hub_url, **fed.hub_options())
    try:
        copy = await hub_nc.jetstream(domain="hub").stream_info(hub_events_stream(site))
        here = (await site_nc.jetstream().stream_info(EVENTS_STREAM)).state.messages
        return here, copy.state.messages
    finally:
        await site_nc.close()
        await hub_nc.close()


async def _copy_leader(fed: Federation, site: str) -> str:
    hub_nc = await connect(fed.hub_url, **fed.hub_options())
    try:
        info = await hub_nc.jetstream(domain="hub").stream_info(hub_events_stream(site))
        assert info.cluster is not None and info.cluster.leader is not None
        return info.cluster.leader
    finally:
        await hub_nc.close()


async def _wait_copied(fed: Federation, site: str, limit: float) -> tuple[int, int]:
    """Wait until the hub's copy holds every event of ``site``'s stream."""
    async with asyncio.timeout(limit):
        while True:
            try:
                here, copy = await _copied(fed, site)
            except (TransportError, nats.errors.Error):  # a stream leader being elected
                here, copy = 1, 0
            if copy >= here:
                return here, copy
            await asyncio.sleep(0.2)


async def test_calls_across_go_on_and_no_event_copy_is_lost_when_one_of_three_hub_servers_dies(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation_factory(hub_servers=3)
    world, cfg = _world(tmp_path, fed)
    async with NodeDaemon(cfg):
        await fed.copy_events()  # R3: every hub server holds a replica of the copies
        async with await Client.connect(
            fed.site_url("geomar"), CALLER, home=world.store.home, **fed.caller_auth(CALLER)
        ) as client:
            await wait_reachable(client, "hereon", "climate")
            before = [await client.call("hereon.climate.scale", values=[i], factor=2.0)
                      for i in range(3)]  # fmt: skip
            await _wait_copied(fed, "hereon", limit=20)
            # The caller's hub server dies: geomar's leaf moves to a survivor. (When it
            # also led the copy's replicas, electing a new leader takes about 10 s.)
            victim = hub_server_of(fed, "geomar")
            leader = await _copy_leader(fed, "hereon")
            await victim.kill()
            await fed.wait_connected(limit=20)
            assert hub_server_of(fed, "geomar") is not victim
            after = [await client.call("hereon.climate.scale", values=[i], factor=3.0)
                     for i in range(3)]  # fmt: skip
        counts = await _wait_copied(fed, "hereon", limit=40)
    assert before == [[0.0], [2.0], [4.0]]
    assert after == [[0.0], [3.0], [6.0]]
    assert counts[0] == counts[1] > 0, f"copy of hereon's log (leader was {leader})"


async def test_a_site_on_one_hub_cluster_calls_a_site_on_another_through_a_gateway(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation_factory(regions={"europe": ["hereon"], "pacific": ["geomar"]})
    assert hub_server_of(fed, "hereon") is fed.hubs["europe"]
    assert hub_server_of(fed, "geomar") is fed.hubs["pacific"]
    world, cfg = _world(tmp_path, fed)
    async with (
        NodeDaemon(cfg),
        await Client.connect(
            fed.site_url("geomar"), CALLER, home=world.store.home, **fed.caller_auth(CALLER)
        ) as client,
    ):
        await wait_reachable(client, "hereon", "climate", limit=20)
        assert await client.call("hereon.climate.scale", values=[1.5], factor=2.0) == [3.0]
