"""What the tests of slices and lazy results share: the people, the ``grids`` module and a
hereon node serving it (results above 64 KiB go the bulk way)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from conftest import node_nats

from hub.results_wire import SliceArgs
from node.config import NodeConfig
from support.hostile import LogView, wait_reachable
from support.world import World

if TYPE_CHECKING:
    from hub.nats import LocalFederation

OWNER = "klaus@geomar"
COLLEAGUE = "anna@geomar"
THIRD = "mallory@geomar"
GRIDS = Path(__file__).resolve().parents[1] / "fixtures" / "modules" / "grids.py"
KiB = 1024


def grids_world(root: Path) -> World:
    """A world with the owner, a colleague and a third person, all of geomar."""
    w = World(root)
    for who in (OWNER, COLLEAGUE, THIRD):
        w.person(who)
    return w


def grids_node_config(world: World, federation: LocalFederation, unique: Any) -> NodeConfig:
    """A hereon node serving ``grids`` to the owner only; results above 64 KiB are bulk."""
    return world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        **node_nats(federation, "hereon"),
        modules=[("grids", GRIDS)],
        trust=["geomar"],
        users=[OWNER, COLLEAGUE, THIRD],
        grants=[(OWNER, "grids", "*")],
        calls={"bulk_threshold": 64 * KiB},
    )


async def kept(fed: Any, function: str, **kwargs: Any) -> tuple[str, Any]:
    """Call ``hereon.grids.FUNCTION`` with an async client: its request id and result."""
    await wait_reachable(fed, "hereon", "grids")
    handle = await fed.submit(f"hereon.grids.{function}", timeout=30, **kwargs)
    return handle.request_id, await handle.result()


def sliced(cfg: NodeConfig) -> list[dict[str, Any]]:
    """The data of every ``result.sliced`` the node logged, in order."""
    return [e["data"] for e in LogView(cfg.log_path).events("result.sliced")]


def selection_hash(isel: dict[str, Any], variables: tuple[str, ...] | None) -> str:
    """The selection hash ``result.sliced`` logs for ``isel`` and ``variables``."""
    return SliceArgs(grant="", isel=isel, variables=variables).selection_hash()
