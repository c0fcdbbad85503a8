"""A caller that read a module's info before the function changed: the node runs nothing
and says so with its own error (``interface_changed``); reading the info again mends it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import pytest
from support.hostile import LogView, wait_reachable
from support.world import World

from hub.client import Client
from hub.errors import InterfaceChangedError, ValidationError, error_from_code
from hub.subjects import info_subject

if TYPE_CHECKING:
    from conftest import Federation

KLAUS = "klaus@geomar"
BEFORE = "def shift(x: int) -> int:\n    return x + 1\n"
AFTER = "def shift(x: int, by: int = 1) -> int:\n    return x + by\n"


async def wait_served(fed: Client, module: str) -> None:
    """Wait until hereon's node answers for ``module`` again, leaving the client's info."""
    async with asyncio.timeout(10):
        while True:
            try:
                await fed.nc.request(info_subject("hereon", module), b"", timeout=0.3)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)
            else:
                return


def test_the_interface_changed_code_is_a_validation_error_of_its_own() -> None:
    error = error_from_code("interface_changed", "changed")
    assert isinstance(error, InterfaceChangedError) and isinstance(error, ValidationError)


async def test_a_call_with_the_info_of_a_changed_function_runs_nothing_until_read_again(
    world: World, open_federation: Federation, unique: Any, tmp_path: Path
) -> None:
    module = unique("iface")
    source = tmp_path / f"{module}.py"
    source.write_text(BEFORE)
    world.person(KLAUS)

    def config(name: str, init: bool) -> Any:
        return world.node_config(
            "hereon",
            name=name,
            nats_url=open_federation.site_url("hereon"),
            modules=[(module, source)],
            trust=["geomar"],
            users=[KLAUS],
            grants=[(KLAUS, module, "*")],
            init=init,
        )

    name = unique("n").replace("_", "-")
    cfg = config(name, True)
    async with await Client.connect(
        open_federation.site_url("geomar"), KLAUS, home=world.store.home
    ) as fed:
        node = world.spawn_node(cfg)
        try:
            await wait_reachable(fed, "hereon", module)
            assert await fed.call(f"hereon.{module}.shift", x=1, timeout=15) == 2
        finally:
            node.stop()
        source.write_text(AFTER)  # the same node, restarted with the function changed
        node = world.spawn_node(config(name, False))
        try:
            await wait_served(fed, module)  # without reading the info again
            with pytest.raises(InterfaceChangedError, match="changed its interface"):
                await fed.call(f"hereon.{module}.shift", x=1, timeout=15)  # info read before
            await fed.module_info("hereon", module, refresh=True)
            assert await fed.call(f"hereon.{module}.shift", x=1, by=5, timeout=15) == 6
        finally:
            node.stop()
    counts = LogView(cfg.log_path).counts()
    assert counts["request.completed"] == 2  # the refused call never ran
