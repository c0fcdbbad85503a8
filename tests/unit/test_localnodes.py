"""Finding the embedded server of a node on this machine through the key store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hub.defaults import DEFAULT_URL, default_url
from hub.errors import ConfigError
from hub.keys import KeyStore
from hub.localnodes import local_nodes, local_url, register, unregister


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


@pytest.fixture(autouse=True)
def no_url_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDHUB_URL", raising=False)


def test_a_registered_running_node_is_found_and_gone_once_unregistered(tmp_path: Path) -> None:
    path = register(tmp_path, "node:hereon/n1", "nats://127.0.0.1:4321", os.getpid())
    assert [n.url for n in local_nodes(tmp_path)] == ["nats://127.0.0.1:4321"]
    assert local_url(tmp_path) == "nats://127.0.0.1:4321"
    unregister(path)
    unregister(path)  # harmless twice
    assert local_url(tmp_path) is None


def test_a_node_whose_server_process_is_gone_is_ignored(tmp_path: Path) -> None:
    register(tmp_path, "node:hereon/n1", "nats://127.0.0.1:4321", dead_pid())
    assert local_nodes(tmp_path) == []
    assert default_url(None, KeyStore(tmp_path)) == DEFAULT_URL


def test_unreadable_files_in_the_run_folder_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "junk.json").write_text("{not json")
    (tmp_path / "run" / "partial.json").write_text('{"url": "nats://x:1"}')
    assert local_nodes(tmp_path) == []


def test_two_running_nodes_are_ambiguous_and_named(tmp_path: Path) -> None:
    register(tmp_path, "node:hereon/n1", "nats://127.0.0.1:4321", os.getpid())
    register(tmp_path, "node:geomar/n1", "nats://127.0.0.1:4322", os.getpid())
    with pytest.raises(ConfigError, match=re.escape("node:geomar/n1 at nats://127.0.0.1:4322")):
        local_url(tmp_path)


def test_an_explicit_url_or_fedhub_url_wins_over_the_local_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(tmp_path, "node:hereon/n1", "nats://127.0.0.1:4321", os.getpid())
    store = KeyStore(tmp_path)
    assert default_url(None, store) == "nats://127.0.0.1:4321"
    monkeypatch.setenv("FEDHUB_URL", "nats://elsewhere:4222")
    assert default_url(None, store) == "nats://elsewhere:4222"
    assert default_url("nats://given:1", store) == "nats://given:1"


def test_the_run_folder_is_private_to_its_owner(tmp_path: Path) -> None:
    register(tmp_path / "home", "node:hereon/n1", "nats://127.0.0.1:4321", os.getpid())
    assert (tmp_path / "home" / "run").stat().st_mode & 0o077 == 0
