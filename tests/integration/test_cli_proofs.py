"""Proofs from the command line, end to end: ``fedhub-node log checkpoint`` and ``log prove``
write them from a node's log, ``fedhub audit --proof`` / ``--consistency`` check them
offline (exit 0 proven, 1 failed or a fork, 2 unreadable), with one line on error."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.logs import request_events
from support.world import World

from hub.canonical import b64e
from hub.events import NodeStarted, NodeStopped
from hub.keys import KeyPair
from node.config import NodeConfig
from node.eventlog import EventLog


def run(home: Path, *args: str, module: str = "hub.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FEDHUB_HOME": str(home)},
        timeout=120,
        check=False,
    )


def node_cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return run(world.store.home, "log", *args, module="node.cli")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "world")


@pytest.fixture
def cfg(world: World) -> NodeConfig:
    """A node whose log holds a few calls (appended as the node does), no checkpoint yet."""
    cfg = world.node_config("hereon")
    _append(world, cfg.log_path, cfg, "req00001", "req00002")
    return cfg


def _append(world: World, path: Path, cfg: NodeConfig, *rids: str) -> None:
    with EventLog(path, world.store.load(cfg.identity), checkpoint_every=1000) as log:
        log.append(NodeStarted(version="0.2.0", pid=1))
        for rid in rids:
            log.append_many(request_events(rid))
        log.append(NodeStopped())


def _one_line(text: str) -> bool:
    return text.count("\n") == 1


def test_an_event_is_proven_after_a_checkpoint_and_checked_offline(
    world: World, cfg: NodeConfig, tmp_path: Path
) -> None:
    home, conf = world.store.home, str(cfg.source)
    early = node_cli(world, "prove", "4", "--config", conf)
    assert early.returncode == 1
    assert _one_line(early.stderr) and "fedhub-node log checkpoint --config" in early.stderr
    made = node_cli(world, "checkpoint", "--config", conf)
    assert made.returncode == 0, made.stderr
    proof = tmp_path / "proof.json"
    proved = node_cli(world, "prove", "4", "--config", conf, "-o", str(proof))
    assert proved.returncode == 0, proved.stderr

    ok = run(home, "audit", "--proof", str(proof))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("proof OK  event 4 (")
    as_json = json.loads(run(home, "audit", "--proof", str(proof), "--json").stdout)
    assert as_json["ok"] and as_json["seq"] == 4

    stranger = b64e(KeyPair.generate("site:hereon").sign_public)
    unpinned = run(home, "audit", "--proof", str(proof), "--site-key", f"hereon={stranger}")
    assert unpinned.returncode == 1
    assert _one_line(unpinned.stdout) and "pinned key" in unpinned.stdout

    data = json.loads(proof.read_text())
    body = data["event"]["body"]
    data["event"]["body"] = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    failed = run(home, "audit", "--proof", str(tampered))
    assert failed.returncode == 1
    assert _one_line(failed.stdout) and failed.stdout.startswith("proof FAILED")

    garbage = tmp_path / "garbage.json"
    garbage.write_text("not a proof")
    unreadable = run(home, "audit", "--proof", str(garbage))
    assert unreadable.returncode == 2
    assert _one_line(unreadable.stderr) and unreadable.stdout == ""
    wrong_kind = run(home, "audit", "--consistency", str(proof))
    assert wrong_kind.returncode == 2 and _one_line(wrong_kind.stderr)
    with_a_log = run(home, "audit", str(cfg.log_path), "--proof", str(tampered))
    assert with_a_log.returncode != 0 and with_a_log.stdout == ""
    assert _one_line(with_a_log.stderr) and "a proof is checked on its own" in with_a_log.stderr


def test_checkpointing_a_log_held_by_a_running_node_is_refused(
    world: World, cfg: NodeConfig
) -> None:
    with (cfg.node.data_dir / "node.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = node_cli(world, "checkpoint", "--config", str(cfg.source))
    assert held.returncode == 1
    assert _one_line(held.stderr) and "is running" in held.stderr
    with EventLog.open_readonly(cfg.log_path) as log:
        assert log.head() is None


def test_a_log_that_grew_extends_its_earlier_checkpoint(
    world: World, cfg: NodeConfig, tmp_path: Path
) -> None:
    home, conf = world.store.home, str(cfg.source)
    assert node_cli(world, "checkpoint", "--config", conf).returncode == 0
    old = tmp_path / "old.json"
    old.write_text(node_cli(world, "head", "--db", str(cfg.log_path)).stdout)
    _append(world, cfg.log_path, cfg, "req00003")
    assert node_cli(world, "checkpoint", "--config", conf).returncode == 0
    proof = tmp_path / "consistency.json"
    made = node_cli(world, "prove", "--consistency", str(old), "--config", conf, "-o", str(proof))
    assert made.returncode == 0, made.stderr
    checked = run(home, "audit", "--consistency", str(proof))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("proof OK  checkpoint") and "extends" in checked.stdout


def test_a_forked_log_is_shown_as_a_fork_and_exits_1(
    world: World, cfg: NodeConfig, tmp_path: Path
) -> None:
    """The node's log is copied; each copy gets a different call at the same seq and a
    checkpoint signed by the same node key."""
    fork = tmp_path / "fork.db"
    shutil.copyfile(cfg.log_path, fork)
    _append(world, cfg.log_path, cfg, "req00003")
    _append(world, fork, cfg, "req00004")
    assert node_cli(world, "checkpoint", "--config", str(cfg.source)).returncode == 0
    with EventLog(fork, world.store.load(cfg.identity)) as log:
        log.checkpoint()
    old = tmp_path / "old.json"
    old.write_text(node_cli(world, "head", "--db", str(fork)).stdout)
    proof = tmp_path / "consistency.json"
    made = node_cli(
        world, "prove", "--consistency", str(old), "--db", str(cfg.log_path), "-o", str(proof)
    )
    assert made.returncode == 0, made.stderr
    checked = run(world.store.home, "audit", "--consistency", str(proof))
    assert checked.returncode == 1
    first, *evidence = checked.stdout.splitlines()
    assert first.startswith("proof FAILED  FORK of log node:hereon/n1")
    assert [line.split()[0] for line in evidence] == ["old", "new"]
    assert all('"signer"' in line for line in evidence)


def test_two_checkpoints_are_compared_in_either_order_and_a_fork_of_one_size_is_shown(
    world: World, cfg: NodeConfig, tmp_path: Path
) -> None:
    """The comparison of two checkpoints: given the wrong way round, the larger still extends
    the smaller; equal ones are shown equal; one of the same size from a copy of the log
    that went another way is a fork, whichever of the two the node's log holds; one of
    another log, or a larger one of another history, is refused in one line."""
    home, conf = world.store.home, str(cfg.source)
    fork = tmp_path / "fork.db"
    assert node_cli(world, "checkpoint", "--config", conf).returncode == 0
    small = tmp_path / "small.json"
    small.write_text(node_cli(world, "head", "--db", str(cfg.log_path)).stdout)
    shutil.copyfile(cfg.log_path, fork)
    _append(world, cfg.log_path, cfg, "req00003")
    _append(world, fork, cfg, "req00004")
    assert node_cli(world, "checkpoint", "--config", conf).returncode == 0
    with EventLog(fork, world.store.load(cfg.identity)) as log:
        log.checkpoint()
    large, forked = tmp_path / "large.json", tmp_path / "forked.json"
    large.write_text(node_cli(world, "head", "--db", str(cfg.log_path)).stdout)
    forked.write_text(node_cli(world, "head", "--db", str(fork)).stdout)
    other = world.node_config("hereon", name="n2")
    _append(world, other.log_path, other, "req00005")
    assert node_cli(world, "checkpoint", "--config", str(other.source)).returncode == 0
    stranger = tmp_path / "stranger.json"
    stranger.write_text(node_cli(world, "head", "--db", str(other.log_path)).stdout)

    def compare(*files: Path) -> subprocess.CompletedProcess[str]:
        proof = tmp_path / "c.json"
        proof.unlink(missing_ok=True)
        args = ["prove", "--consistency", *map(str, files), "--config", conf, "-o", str(proof)]
        made = node_cli(world, *args)
        if made.returncode != 0:
            return made
        return run(home, "audit", "--consistency", str(proof))

    for pair in ((small, large), (large, small)):
        checked = compare(*pair)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.startswith("proof OK  checkpoint 18 (")
        assert "extends checkpoint 11 (" in checked.stdout
    assert compare(large, large).returncode == 0
    for pair in ((forked, large), (large, forked)):
        shown = compare(*pair)
        assert shown.returncode == 1, shown.stdout + shown.stderr
        first_line, *evidence = shown.stdout.splitlines()
        assert "FORK" in first_line and "two signed checkpoints of size 18" in first_line
        assert [line.split()[0] for line in evidence] == ["old", "new"]
    another = compare(small, stranger)
    assert another.returncode == 1 and _one_line(another.stderr)
    assert "is of log node:hereon/n2, not node:hereon/n1" in another.stderr
    _append(world, fork, cfg, "req00006")
    with EventLog(fork, world.store.load(cfg.identity)) as log:
        log.checkpoint()
    longer = tmp_path / "longer.json"
    longer.write_text(node_cli(world, "head", "--db", str(fork)).stdout)
    beyond = compare(small, longer)
    assert beyond.returncode == 1 and _one_line(beyond.stderr)
    assert "checkpoint 25 covers 25 events; the log has 19" in beyond.stderr
    _append(world, cfg.log_path, cfg, "req00007", "req00008")
    history = compare(small, longer)
    assert history.returncode == 1 and _one_line(history.stderr)
    assert "is not of this log's history" in history.stderr
    assert "fedhub-node log prove --consistency CHECKPOINT.json" in history.stderr
