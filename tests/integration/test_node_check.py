"""``fedhub-node check`` and ``init`` against real key stores, logs, modules and nats-servers.

Every problem is one ``FAIL`` line naming what to fix, the exit code is 1 when there is
any, and ``init`` refuses a config that ``check`` would fail (creating nothing).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.world import CLIMATE, World

from hub.nats import NatsServer
from node.config import NodeConfig

CALLER = "klaus@geomar"


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


def run(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FEDHUB_HOME": str(world.store.home)},
    )


def check(world: World, cfg: NodeConfig) -> tuple[int, list[str]]:
    """Exit code and the FAIL lines of ``fedhub-node check``."""
    done = run(world, "check", "--config", str(cfg.source))
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, [line for line in done.stdout.splitlines() if line.startswith("FAIL")]


def good_config(world: World, url: str, **extra: object) -> NodeConfig:
    return world.node_config(
        "hereon",
        nats_url=url,
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "scale"), (CALLER, "climate", "Station.*")],
        **extra,  # type: ignore[arg-type]
    )


def rewrite(cfg: NodeConfig, old: str, new: str) -> None:
    assert cfg.source is not None
    text = cfg.source.read_text()
    assert old in text
    cfg.source.write_text(text.replace(old, new))


def test_a_good_config_passes_every_check_with_an_authorized_nats_user(
    world: World, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats", client_user=("hereon-node", "secret"))
    asyncio.run(server.start())
    try:
        cfg = good_config(world, server.url)
        done = run(world, "check", "--config", str(cfg.source), "--json")
    finally:
        asyncio.run(server.stop())
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    checks = {c["check"] for c in report["checks"]}
    assert checks == {"data_dir", "keys", "log", "trust", "users", "modules", "grants", "nats"}
    assert all(c["ok"] for c in report["checks"])
    nats_lines = [c["message"] for c in report["checks"] if c["check"] == "nats"]
    assert any("connected and authorized" in m for m in nats_lines)
    assert any("JetStream answers" in m for m in nats_lines)
    assert "secret" not in done.stdout, "the password is never printed"


def test_each_broken_item_is_one_line_saying_what_to_fix(
    world: World, nats_server: NatsServer, tmp_path: Path
) -> None:
    cfg = world.node_config(
        "hereon",
        nats_url=nats_server.url,
        modules=[("climate", CLIMATE), ("ghost", tmp_path / "missing.py")],
        trust=["geomar"],
        users=[CALLER],
        grants=[
            (CALLER, "climate", "no_such_function"),
            (CALLER, "weather", "*"),
            ("anna@awi", "climate", "scale"),
        ],
    )
    rewrite(cfg, '"]\n[node]', '", "nobody.json"]\n[node]')
    code, fails = check(world, cfg)
    assert code == 1
    assert len(fails) == 5, fails
    joined = "\n".join(fails)
    assert "missing.py" in joined  # the module that cannot be imported
    assert "climate has no function no_such_function -> it has:" in joined
    assert "no module weather in [[modules]] -> use one of: climate, ghost" in joined
    assert "site awi is not pinned" in joined and "add a [[trust]] entry for site awi" in joined
    assert "nobody.json" in joined and "fix the path in users" in joined


def test_unreachable_and_unauthorized_nats_are_told_apart(world: World, tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", client_user=("hereon-node", "right"))
    asyncio.run(server.start())
    try:
        cfg = good_config(world, server.url.replace(":right@", ":wrong@"))
        code, fails = check(world, cfg)
        assert code == 1
        assert len(fails) == 1, fails
        assert "authorization violation" in fails[0]
        assert "check [nats] credentials" in fails[0]
        assert "hereon-node:***@" in fails[0], "the password is never printed"
        url = server.url
    finally:
        asyncio.run(server.stop())
    rewrite(cfg, url.replace(":right@", ":wrong@"), url)  # the right password, server gone
    code, fails = check(world, cfg)
    assert code == 1
    assert len(fails) == 1 and "connection refused" in fails[0], fails
    assert "start the site's NATS server" in fails[0]
    offline = run(world, "check", "--config", str(cfg.source), "--offline")
    assert offline.returncode == 0, offline.stdout
    assert not [line for line in offline.stdout.splitlines() if line[6:].startswith("nats ")]


def test_a_server_without_jetstream_is_a_problem(world: World, tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", jetstream=False)
    asyncio.run(server.start())
    try:
        code, fails = check(world, good_config(world, server.url))
    finally:
        asyncio.run(server.stop())
    assert code == 1
    assert len(fails) == 1 and "JetStream does not answer" in fails[0], fails


def test_a_node_key_the_site_did_not_vouch_for_is_refused(
    world: World, nats_server: NatsServer
) -> None:
    cfg = good_config(world, nats_server.url)
    world.store.create(cfg.identity, overwrite=True)  # someone swapped the node's key file
    code, fails = check(world, cfg)
    assert code == 1
    assert len(fails) == 1 and "is not the one the site vouched for" in fails[0], fails


def test_a_log_whose_site_key_is_not_the_pinned_one_is_refused(
    world: World, nats_server: NatsServer
) -> None:
    cfg = good_config(world, nats_server.url)
    impostor = world.store.create("site:impostor")
    pub = world.store.dir / "site%3Ahereon.pub"
    pinned = json.loads(pub.read_text())
    fake = json.loads((world.store.dir / "site%3Aimpostor.pub").read_text())
    pub.write_text(json.dumps({**fake, "identity": pinned["identity"]}))
    assert impostor.kid != world.site("hereon").kid
    code, fails = check(world, cfg)
    assert code == 1
    assert any("other than the pinned site:hereon" in f for f in fails), fails


def test_init_refuses_a_broken_config_and_creates_nothing(world: World, tmp_path: Path) -> None:
    cfg = world.node_config(
        "hereon",
        modules=[("climate", CLIMATE)],
        grants=[(CALLER, "climate", "no_such_function")],
        trust=["geomar"],
        init=False,
    )
    done = run(world, "init", "--config", str(cfg.source))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: grants:"), done.stderr
    assert "no_such_function" in lines[0]
    assert not cfg.log_path.exists()
    assert not world.store.exists(cfg.identity)

    rewrite(cfg, '"no_such_function"', '"scale"')
    done = run(world, "init", "--config", str(cfg.source))
    assert done.returncode == 0, done.stderr
    assert cfg.log_path.exists()
    code, fails = check(world, cfg)
    assert (code, fails) == (0, [])


def test_a_server_of_another_domain_or_with_smaller_messages_is_a_problem(
    world: World, tmp_path: Path
) -> None:
    server = NatsServer(tmp_path / "nats", jetstream_domain="geomar", max_payload=1024 * 1024)
    asyncio.run(server.start())
    try:
        code, fails = check(world, good_config(world, server.url))
    finally:
        asyncio.run(server.stop())
    assert code == 1
    assert len(fails) == 2, fails
    assert "JetStream domain is 'geomar'" in fails[0]
    assert "jetstream { domain: hereon }" in fails[0]
    assert "max_payload (1048576) is below [calls] max_payload (8388608)" in fails[1]
