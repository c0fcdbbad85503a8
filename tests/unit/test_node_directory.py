"""The node's directory state as rebuilt from its log (what module info serves)."""

from __future__ import annotations

import json
from pathlib import Path

from hub.canonical import b64d
from hub.keys import KeyStore
from node.admin import load_directory
from node.bootstrap import open_log
from tests.support.world import World


def test_after_a_key_rotation_the_node_serves_the_new_key_record(tmp_path: Path) -> None:
    world = World(tmp_path / "world")
    cfg = world.node_config("hereon")
    spare = KeyStore(tmp_path / "spare").create("node:hereon/n1")
    with open_log(cfg) as log:
        before = json.loads(b64d(load_directory(cfg, log).node_key.record))["kid"]
        log.rotate_key(spare, world.record(spare))
        after = json.loads(b64d(load_directory(cfg, log).node_key.record))["kid"]
    assert before == world.store.load("node:hereon/n1").kid
    assert after == spare.kid
