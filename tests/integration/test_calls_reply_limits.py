"""A reply never exceeds what the caller's own server carries.

A federation of the test's own (hub, hereon, geomar) in which geomar's leaf server carries
at most 1 MiB per message while hereon's carries 8 MiB. A reply above 1 MiB would be
refused by geomar's leaf, which then closes its link to the hub ("maximum payload
exceeded"): that reply is gone, and so is every other message crossing the link at that
moment, and a fetch of the kept result would break the link again. So the caller names its
limit in the request header (``reply_max``) and the node sends such a result as a bulk
transfer in chunks that fit.

Waits are bounded well below the call's deadline; nothing asserts on measured time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import node_nats
from support.hostile import LogView, wait_reachable
from support.world import World

from hub.client import Client
from hub.nats import LocalFederation
from node.daemon import NodeDaemon

CALLER = "klaus@geomar"
MiB = 1024 * 1024
#: What geomar's leaf server carries per message in this test.
SMALL = 1 * MiB
#: A result below the node's bulk threshold (half of its 8 MiB) but above SMALL.
RESULT = 2 * MiB
#: Far away: the test's own waits end well before it.
DEADLINE = 120.0
BOUND = 30.0

BLOBS = '''"""Results of any size."""


def blob(size: int) -> bytes:
    """``size`` zero bytes."""
    return bytes(size)
'''

FederationFactory = Callable[..., Coroutine[Any, Any, LocalFederation]]


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys: klaus at geomar, vouched by his site."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sized module's file (its own name: a module is imported once per process)."""
    path = tmp_path_factory.mktemp("modules") / "sized.py"
    path.write_text(BLOBS)
    return path


async def small_geomar(federation_factory: FederationFactory) -> LocalFederation:
    """A federation whose geomar leaf carries at most :data:`SMALL` bytes per message."""
    fed = await federation_factory()
    leaf = fed.leaves["geomar"]
    await leaf.stop()
    config = fed.generated.leaf_configs["geomar"]
    text, count = re.subn(r"max_payload: \d+", f"max_payload: {SMALL}", config.read_text())
    assert count == 1, "the generated leaf config names its max_payload once"
    config.write_text(text)
    await leaf.start()
    await fed.wait_connected(limit=20)
    return fed


async def test_a_result_above_what_the_callers_server_carries_arrives_whole_and_breaks_no_link(
    world: World, sized: Path, federation_factory: FederationFactory
) -> None:
    fed = await small_geomar(federation_factory)
    cfg = world.node_config(
        "hereon",
        **node_nats(fed, "hereon"),
        modules=[("sized", sized)],
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "sized", "*")],
    )
    async with (
        NodeDaemon(cfg, grace=2),
        await Client.connect(
            fed.site_url("geomar"), CALLER, home=world.store.home, **fed.caller_auth(CALLER)
        ) as client,
    ):
        assert client.nc.max_payload == SMALL
        await wait_reachable(client, "hereon", "sized")
        handle = await client.submit("hereon.sized.blob", size=RESULT, timeout=DEADLINE)
        assert await handle.result(timeout=BOUND) == bytes(RESULT)
        assert await client.fetch("hereon", handle.request_id) == bytes(RESULT)
        assert await client.call("hereon.sized.blob", size=10, timeout=BOUND) == bytes(10)
    kinds = [e["type"] for e in LogView(cfg.log_path).for_request(handle.request_id)]
    assert kinds[:2] == ["request.accepted", "request.completed"]
    broken = [
        line
        for server in (fed.leaves["geomar"], fed.hub)
        for line in server.log_path.read_text().splitlines()
        if "maximum payload exceeded" in line.lower()
    ]
    assert broken == [], "a message above a server's limit closed a link"
