"""A node's NATS connection as an operator sees it: in its JSON log, and by its exit code.

Real ``fedhub-node run`` processes against real nats-servers that are down at start, stop
and come back, or refuse the node's credentials. What must hold: one line per failed
attempt or per outage (never one per retry), no library traceback anywhere, SIGTERM ends
the wait at once with exit code 0, and the node serves as soon as its server is there.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.hostile import wait_until
from support.world import World

from hub.client import Client
from hub.nats import NatsServer
from node.config import NodeConfig

CALLER = "klaus@geomar"


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_config(world: World, url: str) -> NodeConfig:
    return world.node_config(
        "hereon",
        nats_url=url,
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
        log={"format": "json", "level": "info"},
    )


class Node:
    """``fedhub-node run`` in its own process, its stderr (JSON lines) in a file."""

    def __init__(self, world: World, cfg: NodeConfig) -> None:
        assert cfg.source is not None
        self.cfg = cfg
        self.out = cfg.node.data_dir / "node.out"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "run", "--config", str(cfg.source)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
            )

    def text(self) -> str:
        return self.out.read_text()

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (other lines: the "serving" banner only)."""
        found = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
            else:
                assert line.startswith("node node:hereon/n1 serving"), line
        return found

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == event]

    def serving(self) -> bool:
        return (self.cfg.node.data_dir / "status.json").exists()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def assert_no_traceback(self) -> None:
        text = self.text()
        assert "Traceback" not in text, text
        assert all("exception" not in e for e in self.events()), text


async def test_a_node_started_before_its_server_logs_one_line_per_attempt_then_serves(
    world: World, tmp_path: Path
) -> None:
    port = free_port()
    cfg = node_config(world, f"nats://127.0.0.1:{port}")
    node = Node(world, cfg)
    server = NatsServer(tmp_path / "nats", port=port)
    try:
        await wait_until(lambda: len(node.named("nats.unreachable")) >= 2, limit=20)
        first, second = node.named("nats.unreachable")[:2]
        assert first["reason"] == "connection refused (no server listening)"
        assert (first["attempt"], second["attempt"]) == (1, 2)
        assert first["retry_in"] <= 0.5 and second["retry_in"] <= 1.0
        assert not node.serving()

        await server.start()
        await wait_until(node.serving, limit=40)
        async with await Client.connect(server.url, CALLER, home=world.store.home) as fed:
            assert await fed.call("hereon.climate.scale", values=[2.0], factor=3.0) == [6.0]
        connected = node.named("nats.connected")
        assert len(connected) == 1 and connected[0]["attempts"] >= 3
        assert node.stop() == 0
    finally:
        node.kill()
        await server.stop()
    node.assert_no_traceback()


async def test_sigterm_while_waiting_for_nats_stops_the_node_at_once_with_code_0(
    world: World,
) -> None:
    cfg = node_config(world, f"nats://127.0.0.1:{free_port()}")
    node = Node(world, cfg)
    try:
        await wait_until(lambda: len(node.named("nats.unreachable")) >= 1, limit=20)
        assert node.stop() == 0
    finally:
        node.kill()
    stopped = node.named("node.stopped")
    assert [e["reason"] for e in stopped] == ["signal"]
    node.assert_no_traceback()


async def test_a_server_outage_is_one_disconnected_and_one_reconnected_line_with_its_length(
    world: World, fresh_nats_server: NatsServer
) -> None:
    cfg = node_config(world, fresh_nats_server.url)
    node = Node(world, cfg)
    try:
        await wait_until(node.serving, limit=30)
        await fresh_nats_server.stop()
        await wait_until(lambda: node.named("nats.disconnected"), limit=20)
        # stay down over several retries (nats-py tries every 0.5 s): still one line
        await asyncio.sleep(2.5)
        await fresh_nats_server.start()
        await wait_until(lambda: node.named("nats.reconnected"), limit=30)
        async with await Client.connect(
            fresh_nats_server.url, CALLER, home=world.store.home
        ) as fed:
            assert await fed.call("hereon.climate.scale", values=[1.0], factor=5.0) == [5.0]
        assert node.stop() == 0
    finally:
        node.kill()
    down, back = node.named("nats.disconnected"), node.named("nats.reconnected")
    assert len(down) == 1 and len(back) == 1, node.text()
    assert back[0]["seconds"] > 0 and back[0]["tries"] >= 1
    assert node.named("nats.closed") == []
    node.assert_no_traceback()


async def test_wrong_credentials_are_named_as_an_authorization_failure(
    world: World, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats", client_user=("hereon-node", "right-password"))
    await server.start()
    try:
        url = server.url.replace("right-password", "wrong-password")
        node = Node(world, node_config(world, url))
        try:
            await wait_until(lambda: node.named("nats.unauthorized"), limit=20)
            assert node.stop() == 0
        finally:
            node.kill()
    finally:
        await server.stop()
    line = node.named("nats.unauthorized")[0]
    assert line["level"] == "error"
    assert "authorization" in line["reason"]
    assert "wrong-password" not in node.text(), "the password is never logged"
    assert node.named("nats.unreachable") == []
    node.assert_no_traceback()


async def test_credentials_refused_after_an_outage_are_one_line_until_they_work_again(
    world: World, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats", client_user=("hereon-node", "old-password"))
    await server.start()
    try:
        node = Node(world, node_config(world, server.url))
        try:
            await wait_until(node.serving, limit=30)
            server.client_user = ("hereon-node", "new-password")  # changed on the server
            await server.restart()
            await wait_until(lambda: node.named("nats.unauthorized"), limit=30)
            await asyncio.sleep(2.0)  # several refused tries (nats-py: every 0.5 s)
            server.client_user = ("hereon-node", "old-password")  # the operator's fix
            await server.restart()
            await wait_until(lambda: node.named("nats.reconnected"), limit=30)
            assert node.stop() == 0
        finally:
            node.kill()
    finally:
        await server.stop()
    assert len(node.named("nats.disconnected")) == 1, node.text()  # one outage throughout
    refused = node.named("nats.unauthorized")
    assert len(refused) == 1 and "authorization" in refused[0]["reason"], node.text()
    assert len(node.named("nats.reconnected")) == 1
    assert node.named("nats.closed") == []
    assert "old-password" not in node.text() and "new-password" not in node.text()
    node.assert_no_traceback()


async def test_sigterm_during_an_outage_stops_the_node_cleanly_with_code_0(
    world: World, fresh_nats_server: NatsServer
) -> None:
    cfg = node_config(world, fresh_nats_server.url)
    node = Node(world, cfg)
    try:
        await wait_until(node.serving, limit=30)
        await fresh_nats_server.stop()
        await wait_until(lambda: node.named("nats.disconnected"), limit=20)
        assert node.stop() == 0
    finally:
        node.kill()
    assert [e["reason"] for e in node.named("node.stopped")] == ["signal"]
    node.assert_no_traceback()
