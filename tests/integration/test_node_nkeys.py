"""A node that logs in to its NATS server with an NKey (no password), checked and run.

The server knows only the node user's public NKey; the node holds the seed file named by
``[nats] credentials``. Another seed is refused by the server, and both ``check`` and the
running node name that as an authorization failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
from support.hostile import wait_until
from support.world import World

from hub.nats import NatsServer, connect, wait_jetstream_ready
from node.config import NodeConfig, load_config


def user_seed(path: Path) -> str:
    """Write a new NKey user seed to ``path`` (0600); return its public key."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


class NKeyServer(NatsServer):
    """A JetStream server whose only user is one NKey."""

    def __init__(self, store: Path, seed: Path, public: str) -> None:
        super().__init__(store)
        self.seed, self.public = seed, public

    def config_text(self) -> str:
        users = f'authorization {{ users = [ {{ nkey: "{self.public}" }} ] }}\n'
        return super().config_text() + users

    async def _wait_jetstream(self) -> None:
        nc = await connect(self.client_url, nkeys_seed=str(self.seed))
        try:
            await wait_jetstream_ready(nc, None, timeout=10)
        finally:
            await nc.close()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "world")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NKeyServer]:
    seed = tmp_path / "hereon-node.nk"
    srv = NKeyServer(tmp_path / "nats", seed, user_seed(seed))
    asyncio.run(srv.start())
    yield srv
    asyncio.run(srv.stop())


def config_with_seed(world: World, url: str, seed: Path) -> NodeConfig:
    cfg = world.node_config("hereon", nats_url=url, log={"format": "json", "level": "info"})
    assert cfg.source is not None
    text = cfg.source.read_text().replace("[nats]\n", f'[nats]\ncredentials = "{seed}"\n', 1)
    cfg.source.write_text(text)
    return load_config(cfg.source)


def run(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
    )


def start_node(world: World, cfg: NodeConfig) -> subprocess.Popen[bytes]:
    assert cfg.source is not None
    with (cfg.node.data_dir / "node.out").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "node.cli", "run", "--config", str(cfg.source)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
        )


async def test_a_node_with_its_nkey_seed_passes_check_and_serves(
    world: World, server: NKeyServer
) -> None:
    cfg = config_with_seed(world, server.url, server.seed)
    checked = await asyncio.to_thread(run, world, "check", "--config", str(cfg.source))
    assert checked.returncode == 0, checked.stdout
    assert "connected and authorized" in checked.stdout
    proc = start_node(world, cfg)
    try:
        await wait_until((cfg.node.data_dir / "status.json").exists, limit=30)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = (cfg.node.data_dir / "node.out").read_text()
    assert "nats.unauthorized" not in text and "Traceback" not in text, text


def test_another_nkey_is_refused_and_named_as_an_authorization_failure(
    world: World, server: NKeyServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.nk"
    user_seed(stranger)
    cfg = config_with_seed(world, server.url, stranger)
    checked = run(world, "check", "--config", str(cfg.source))
    assert checked.returncode == 1
    fails = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "authorization violation" in fails[0], checked.stdout
    assert stranger.read_text().strip() not in checked.stdout + checked.stderr
