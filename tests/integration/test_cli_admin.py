"""Key records and revocations from the command line, applied live to a running node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import node_nats
from support.world import NodeProcess, World

from hub.client import Client
from hub.errors import UnauthorizedError

if TYPE_CHECKING:
    from conftest import Federation


def run(home: Path, *args: str, module: str = "hub.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FEDHUB_HOME": str(home)},
        timeout=60,
        check=False,
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "world")


@pytest.fixture
def node(world: World) -> Iterator[NodeProcess]:
    world.person("klaus@geomar")
    cfg = world.node_config(
        "hereon",
        trust=["geomar"],
        users=["klaus@geomar"],
        grants=[("klaus@geomar", "climate", "*")],
    )
    proc = world.spawn_node(cfg)
    yield proc
    proc.stop()


def test_vouch_and_import_make_a_record_another_key_store_can_check(
    world: World, tmp_path: Path
) -> None:
    home = world.store.home
    anna_home = tmp_path / "anna"
    assert run(anna_home, "keys", "new", "anna@geomar").returncode == 0
    pub = next((anna_home / "keys").glob("*.pub"))
    world.site("geomar")
    out = tmp_path / "anna.json"
    made = run(
        home,
        "keys",
        "vouch",
        "anna@geomar",
        "--site",
        "site:geomar",
        "--pub",
        str(pub),
        "--groups",
        "ocean",
        "-o",
        str(out),
    )
    assert made.returncode == 0, made.stderr
    record = json.loads(out.read_text())
    assert set(record) == {"record", "sig", "signer"}
    # a site cannot vouch for another site's people
    wrong = run(home, "keys", "vouch", "anna@geomar", "--site", "site:hereon", "--pub", str(pub))
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("error:")
    assert "Traceback" not in wrong.stderr
    # importing a public key pins it in another store
    site_pub = next(p for p in (home / "keys").glob("site%3Ageomar.pub"))
    assert run(anna_home, "keys", "import", str(site_pub)).returncode == 0
    listed = run(anna_home, "keys", "list", "--json")
    assert "site:geomar" in {k["identity"] for k in json.loads(listed.stdout)}


async def test_a_live_revocation_stops_the_key_at_once(world: World, node: NodeProcess) -> None:
    cfg = node.cfg
    url = (cfg.node.data_dir / "nats.url").read_text().strip()
    klaus = world.store.load("klaus@geomar")
    async with await Client.connect(url, "klaus@geomar", home=world.store.home) as fed:
        assert await fed.call("hereon.climate.scale", values=[1.0], factor=2.0) == [2.0]
        done = run(
            world.store.home,
            "admin",
            "revoke",
            "--config",
            str(cfg.source),
            klaus.kid,
            "--identity",
            "klaus@geomar",
            "--reason",
            "laptop stolen",
            module="node.cli",
        )
        assert done.returncode == 0, done.stderr
        assert "applied by the running node" in done.stdout
        with pytest.raises(UnauthorizedError, match="laptop stolen"):
            await fed.call("hereon.climate.scale", values=[1.0])


def test_a_revocation_file_applied_while_the_node_is_down_takes_effect_at_start(
    world: World, tmp_path: Path
) -> None:
    world.person("klaus@geomar")
    cfg = world.node_config("hereon", trust=["geomar"], users=["klaus@geomar"])
    klaus = world.store.load("klaus@geomar")
    rev = tmp_path / "rev.json"
    made = run(
        world.store.home,
        "keys",
        "revoke",
        klaus.kid,
        "--identity",
        "klaus@geomar",
        "--site",
        "site:geomar",
        "-o",
        str(rev),
    )
    assert made.returncode == 0, made.stderr
    applied = run(
        world.store.home, "admin", "apply", "--config", str(cfg.source), str(rev), module="node.cli"
    )
    assert applied.returncode == 0, applied.stderr
    assert "appended to the log" in applied.stdout
    again = run(
        world.store.home,
        "admin",
        "apply",
        "--config",
        str(cfg.source),
        str(tmp_path / "missing.json"),
        module="node.cli",
    )
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1
    audit = run(world.store.home, "audit", str(cfg.log_path), "--json")
    report = json.loads(audit.stdout)
    assert report["ok"], report["findings"]
    assert report["types"].get("key.revoked") == 1


async def test_a_grant_given_and_withdrawn_from_the_command_line_changes_calls_live(
    world: World, tmp_path: Path
) -> None:
    world.person("klaus@geomar")
    cfg = world.node_config("hereon", trust=["geomar"], users=["klaus@geomar"])
    proc = world.spawn_node(cfg)
    try:
        url = (cfg.node.data_dir / "nats.url").read_text().strip()
        async with await Client.connect(url, "klaus@geomar", home=world.store.home) as fed:
            with pytest.raises(UnauthorizedError, match="may not call"):
                await fed.call("hereon.climate.scale", values=[1.0])
            base = ("admin", "grant", "--config", str(cfg.source), "klaus@geomar", "climate")
            given = run(world.store.home, *base, "--function", "scale", module="node.cli")
            assert given.returncode == 0, given.stderr
            assert "applied by the running node" in given.stdout
            assert await fed.call("hereon.climate.scale", values=[1.0]) == [2.0]
            taken = run(
                world.store.home, *base, "--function", "scale", "--withdraw", module="node.cli"
            )
            assert taken.returncode == 0, taken.stderr
            with pytest.raises(UnauthorizedError, match="may not call"):
                await fed.call("hereon.climate.scale", values=[1.0])
    finally:
        proc.stop()
    audit = run(world.store.home, "audit", str(cfg.log_path), "--json")
    report = json.loads(audit.stdout)
    assert report["ok"], report["findings"]
    assert report["types"].get("grant.recorded") == 2


async def test_on_a_secured_site_the_operator_grants_live_and_nobody_else_can(
    world: World, federation: Federation, unique: Any
) -> None:
    world.person("klaus@geomar")
    cfg = world.node_config(
        "hereon",
        name=unique("adm").replace("_", "-"),
        **node_nats(federation, "hereon"),
        trust=["geomar"],
        users=["klaus@geomar"],
    )
    proc = world.spawn_node(cfg)
    ca = str(federation.generated.ca)
    base = ("admin", "grant", "--config", str(cfg.source), "klaus@geomar", "climate")
    try:
        async with await Client.connect(
            federation.site_url("geomar"), "klaus@geomar", home=world.store.home,
            **federation.caller_auth("klaus@geomar"),
        ) as fed:  # fmt: skip
            with pytest.raises(UnauthorizedError, match="may not call"):
                await fed.call("hereon.climate.scale", values=[1.0])
            # no credentials at all, and a caller's: refused by the server, one line each
            bare = run(world.store.home, *base, "--ca", ca, module="node.cli")
            caller = federation.credentials("hereon", "caller")
            posing = run(
                world.store.home, *base, "--creds", str(caller), "--ca", ca, module="node.cli"
            )
            for refused in (bare, posing):
                assert refused.returncode != 0
                assert "Traceback" not in refused.stderr
                assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            operator = federation.credentials("hereon", "operator")
            given = run(
                world.store.home, *base, "--creds", str(operator), "--ca", ca, module="node.cli"
            )
            assert given.returncode == 0, given.stderr
            assert "applied by the running node" in given.stdout
            assert await fed.call("hereon.climate.scale", values=[1.0]) == [2.0]
    finally:
        proc.stop()
