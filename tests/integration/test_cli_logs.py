"""Logs people can read and machines can parse: ``--log-json`` streams hold JSON lines only,
failed calls are warnings, and ``node.started`` says what the node serves and trusts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.world import NodeProcess, World

pytestmark = pytest.mark.slow

KLAUS = "klaus@geomar"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, NodeProcess]]:
    world = World(tmp_path_factory.mktemp("logs"))
    world.person(KLAUS)
    cfg = world.node_config(
        "hereon",
        trust=["geomar"],
        users=[KLAUS],
        grants=[(KLAUS, "climate", "*")],
        log={"format": "json", "level": "info"},
    )
    process = world.spawn_node(cfg)
    try:
        yield world, process
    finally:
        process.stop()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON (a plain-text line fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fedhub(world: World, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env.update(FEDHUB_HOME=str(world.store.home), FEDHUB_IDENTITY=KLAUS)
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_cli_log_stream_is_json_only_for_results_notices_and_errors(
    node: tuple[World, NodeProcess], tmp_path: Path
) -> None:
    world, _ = node
    run = fedhub(
        world,
        "call",
        "hereon.climate.scale",
        "values=[1]",
        "--out",
        "r.json",
        "--log-json",
        "--log-level",
        "info",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    events = {line["event"]: line for line in json_lines(run.stderr)}
    assert events["call.submitted"]["request_id"]
    assert events["result.written"]["path"] == "r.json"
    run = fedhub(world, "--log-json", "call", "hereon.climate.fail", "message=boom")
    assert run.returncode == 1
    (failed,) = [e for e in json_lines(run.stderr) if e["event"] == "command.failed"]
    assert failed["level"] == "error" and failed["error"] == "FunctionFailedError"
    run = fedhub(world, "call", "hereon.climate.scale", "values=@missing.nc", "--log-json")
    assert run.returncode == 2
    assert json_lines(run.stderr)[-1]["error"] == "ArgumentError"


def test_node_logs_json_only_names_what_it_serves_and_warns_of_failed_calls(
    node: tuple[World, NodeProcess],
) -> None:
    world, process = node
    assert fedhub(world, "call", "hereon.climate.fail", "message=boom").returncode == 1
    lines = json_lines((process.cfg.node.data_dir / "node.out").read_text())
    (started,) = [e for e in lines if e["event"] == "node.started"]
    assert started["modules"] == ["climate"]
    assert started["grants"] == [f"{KLAUS}: climate.*"]
    assert started["trusted_sites"] == ["geomar"]
    failed = [e for e in lines if e["event"] == "call.failed"]
    assert failed and all(e["level"] == "warning" for e in failed)
