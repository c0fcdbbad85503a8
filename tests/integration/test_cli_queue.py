"""``fedhub call --queue``: a call to a module whose node is down waits in the site's stream
and is answered once the node is back; the result is fetched later."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.hostile import LogView
from support.world import World

from hub import agent_client
from hub.nats import NatsServer

pytestmark = pytest.mark.slow

KLAUS = "klaus@geomar"


def fedhub(world: World, url: str, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env.update(FEDHUB_HOME=str(world.store.home), FEDHUB_IDENTITY=KLAUS, FEDHUB_URL=url, **more)
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_call_queued_while_the_node_is_down_is_answered_when_it_is_back(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    world = World(tmp_path / "world")
    world.person(KLAUS)
    url = fresh_nats_server.url
    cfg = world.node_config(
        "hereon", nats_url=url, trust=["geomar"], users=[KLAUS], grants=[(KLAUS, "climate", "*")]
    )
    node = world.spawn_node(cfg)
    try:  # while the node runs, its info is fetched once (and kept)
        assert fedhub(world, url, "ls", "hereon.climate").returncode == 0
    finally:
        assert node.stop() == 0
    # the node is down: without --queue the call fails at once; with it, it is queued
    run = fedhub(world, url, "call", "hereon.climate.scale", "values=[1, 2]", "--timeout", "5")
    assert run.returncode == 1 and "NotFoundError" in run.stderr, run.stderr
    run = fedhub(world, url, "call", "hereon.climate.scale", "values=[1, 2]", "--queue")
    assert run.returncode == 0, run.stderr
    assert "info kept at" in run.stderr and "queued" in run.stderr
    found = re.search(r"^request (\S+)$", run.stderr, re.MULTILINE)
    assert found, run.stderr
    request_id = found.group(1)
    node = world.spawn_node(cfg)
    try:
        for _ in range(100):  # until the node has taken and answered the queued call
            run = fedhub(world, url, "fetch", "--site", "hereon", request_id, "--json")
            if run.returncode == 0:
                break
            time.sleep(0.2)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["[", "2.0,", "4.0", "]"]
    finally:
        node.stop()


def test_queue_without_kept_info_says_how_to_get_it(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    world = World(tmp_path / "world")
    world.person(KLAUS)
    world.site("hereon")
    run = fedhub(
        world, fresh_nats_server.url, "call", "hereon.climate.scale", "values=[1]", "--queue"
    )
    assert run.returncode == 1
    assert "fedhub ls hereon.climate" in run.stderr and len(run.stderr.splitlines()) == 1


def test_a_warm_agent_fails_at_once_for_a_stopped_node_and_queues_nothing(
    fresh_nats_server: NatsServer, tmp_path: Path
) -> None:
    """The agent seals a call while it asks the node for the module's info; when no node
    answers, the sealed call is never sent: nothing is left in the stream for a node that
    comes back later."""
    world = World(tmp_path / "w")  # a short home: the agent's socket path must fit
    world.person(KLAUS)
    url = fresh_nats_server.url
    cfg = world.node_config(
        "hereon", nats_url=url, trust=["geomar"], users=[KLAUS], grants=[(KLAUS, "climate", "*")]
    )
    folder = agent_client.agent_dir({"FEDHUB_HOME": str(world.store.home)})
    assert folder is not None
    through_agent = {"FEDHUB_AGENT": "on"}
    call = ("call", "hereon.climate.scale", "values=[1, 2]", "--json", "--timeout", "20")
    node = world.spawn_node(cfg)
    try:
        assert fedhub(world, url, "agent", "start", **through_agent).returncode == 0
        for _ in range(2):  # the second call finds the module's info known to the agent
            run = fedhub(world, url, *call, **through_agent)
            assert run.returncode == 0 and run.stdout.split() == ["[", "2.0,", "4.0", "]"], run
        assert fedhub(world, url, "agent", "status", **through_agent).returncode == 0
    finally:
        assert node.stop() == 0
    try:
        started = time.monotonic()
        run = fedhub(world, url, *call, **through_agent)
        assert run.returncode == 1 and "NotFoundError" in run.stderr, run.stderr
        assert time.monotonic() - started < 15, "it waited instead of failing at once"
        node = world.spawn_node(cfg)
        try:  # a call made now is answered; nothing older ran before it
            run = fedhub(world, url, *call, **through_agent)
            assert run.returncode == 0, run.stderr
        finally:
            node.stop()
        view = LogView(cfg.log_path)
        assert len(view.events("request.accepted")) == 3
    finally:
        fedhub(world, url, "agent", "stop", **through_agent)
