"""``fedhub-node``'s help teaches too: an example per command, and the log actions take the
node's ``--config`` as well as a ``--db`` path (the same choice everywhere)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from support.world import World

from node.cli import EXAMPLES, build_parser, main


def commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= commands(child, f"{path} {name}".strip())
    return found


def test_every_node_command_has_an_example_in_its_help() -> None:
    everything = commands(build_parser())
    assert set(everything) == set(EXAMPLES)
    for path, parser in everything.items():
        text = parser.format_help()
        assert "example" in text and "  fedhub-node" in text, path


@pytest.mark.parametrize("action", ["export", "head", "request", "prove"])
def test_log_actions_take_config_or_db(action: str) -> None:
    parser = build_parser()
    extra = {"export": ["-o", "x"], "request": ["rid"], "prove": ["1"]}.get(action, [])
    by_config = parser.parse_args(["log", action, "--config", "site.toml", *extra])
    by_db = parser.parse_args(["log", action, "--db", "events.db", *extra])
    assert (by_config.config, by_config.db) == (Path("site.toml"), None)
    assert (by_db.config, by_db.db) == (None, Path("events.db"))
    with pytest.raises(SystemExit):
        parser.parse_args(["log", action, "--config", "a", "--db", "b", *extra])


def test_log_export_by_config_writes_the_same_as_by_db(tmp_path: Path) -> None:
    cfg = World(tmp_path / "world").node_config("hereon")
    assert cfg.source is not None
    by_config, by_db = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["log", "export", "--config", str(cfg.source), "-o", str(by_config)]) == 0
    assert main(["log", "export", "--db", str(cfg.log_path), "-o", str(by_db)]) == 0
    assert by_config.read_text() == by_db.read_text()
    assert json.loads(by_config.read_text().splitlines()[0])
