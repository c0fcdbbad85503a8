"""The README's quick start, run literally: its commands are read from README.md itself.

The commands run in one fresh shell (``env -i``: no variables of this test run) in a fresh
folder laid out like a clone. Only the install step is not repeated: its venv creation and
``pip install`` are what ``scripts/test`` did for this run, so ``.venv`` there is this run's
virtual environment and the step's activation (``. .venv/bin/activate``) is run as written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def quickstart_commands(readme: str) -> list[str]:
    """The ``$ `` lines of the first console block under "## Quick start"."""
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```console\n", 1)[1].split("```", 1)[0]
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def split_install(command: str) -> tuple[list[str], str]:
    """The install line's parts: (venv creation and pip install, the activation)."""
    parts = [part.strip() for part in command.split("&&")]
    activation = [part for part in parts if part.startswith(". ") and "activate" in part]
    assert len(activation) == 1, f"the install line activates the venv: {command}"
    others = [part for part in parts if part not in activation]
    assert others[0].startswith("python3 -m venv .venv"), command
    assert any(part.startswith("pip install") and " -e ." in part for part in others), command
    return others, activation[0]


def test_readme_quick_start_lists_the_commands_a_new_user_needs() -> None:
    commands = quickstart_commands((ROOT / "README.md").read_text())
    split_install(commands[0])
    text = "\n".join(commands)
    for needed in ("fedhub-node run", "fedhub ls", "fedhub call", "fedhub fetch", "fedhub audit"):
        assert needed in text
    # nothing to edit and no URL to copy: no placeholder, no --url
    assert "<" not in text.replace("2>&1", "")
    assert "--url" not in text and "FEDHUB_URL" not in text


def test_readme_quick_start_runs_as_written_in_a_fresh_shell(tmp_path: Path) -> None:
    commands = quickstart_commands((ROOT / "README.md").read_text())
    _, activation = split_install(commands[0])
    clone = tmp_path / "clone"
    for folder in ("configs/quickstart", "configs/modules"):
        shutil.copytree(ROOT / folder, clone / folder)
    (clone / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    script = "\n".join(["set -euo pipefail", activation, *commands[1:]]) + "\n"
    (tmp_path / "quickstart.sh").write_text(script)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    env["FEDHUB_AGENT"] = "off"  # no agent left behind (tests/integration/test_agent.py)
    proc = subprocess.Popen(
        ["bash", str(tmp_path / "quickstart.sh")],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # stop the shell and the node it started, then collect
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    qs = clone / "qs"
    assert "hereon.climate.compute_sum" in out  # fedhub ls listed it
    assert "wrote out.nc" in out
    assert "audit OK  node:hereon/n1" in out and "completed 1" in out, out
    with xr.open_dataarray(qs / "in.nc") as given, xr.open_dataarray(qs / "out.nc") as summed:
        np.testing.assert_allclose(summed.values, given.sum("time").values)
    with xr.open_dataarray(qs / "again.nc") as again, xr.open_dataarray(qs / "out.nc") as summed:
        np.testing.assert_array_equal(again.values, summed.values)
    assert not list((qs / "keys" / "run").glob("*.json")), "the stopped node unregistered"
