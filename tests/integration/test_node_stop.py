"""A node that fails while it stops still lets go of its embedded nats-server.

Whatever goes wrong on the way down (here: its log's database is closed under it, so the
last ``node.stopped`` event cannot be written), the node's server process, log and locks
are released: a failing stop never leaves a nats-server running after the node is gone.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from support.world import World

from node.daemon import NodeDaemon


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def run_and_break_its_log(node: NodeDaemon) -> None:
    """Run ``node``, close its log's database under it, stop it."""
    async with node:
        assert node.server is not None and node.eventlog is not None
        pid = node.server.pid
        assert pid is not None and running(pid)
        node.eventlog.db.close()


async def test_a_node_whose_log_fails_at_its_stop_still_stops_its_embedded_server(
    tmp_path: Path,
) -> None:
    cfg = World(tmp_path / "world").node_config("hereon")
    node = NodeDaemon(cfg, grace=1)
    with pytest.raises(sqlite3.ProgrammingError):  # node.stopped cannot be logged
        await run_and_break_its_log(node)
    assert node.server is not None and node.server.pid is None, "the server outlived its node"
    async with NodeDaemon(cfg, grace=1) as again:  # nothing is left holding the data dir
        assert again.server is not None and again.server.running
