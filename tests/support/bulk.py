"""What the bulk-transfer call tests share: the caller, the module and the node's config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.config import NodeConfig
from support.world import World

if TYPE_CHECKING:
    from hub.nats import LocalFederation

CALLER = "klaus@geomar"
BULKDATA = Path(__file__).resolve().parents[1] / "fixtures" / "modules" / "bulkdata.py"
MiB = 1024 * 1024


def bulk_node_config(
    world: World, federation: LocalFederation, unique: Any, **calls: Any
) -> NodeConfig:
    """A hereon node serving the ``bulk`` fixture module to ``CALLER`` (``calls``: the
    node's ``[calls]`` settings)."""
    return world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        nats_url=federation.site_url("hereon"),
        modules=[("bulk", BULKDATA)],
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "bulk", "*")],
        calls=calls,
    )
