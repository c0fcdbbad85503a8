"""Generated stubs, sync and async, pass ``mypy --strict`` where their users keep them:
outside this repository, with fedhub seen as an installed package (its ``py.typed``), and
importing only fedhub's public API (``hub.__all__``)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

import hub
from hub.stub import generate_stub
from node.modules import load_module

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIMATE = ROOT / "tests" / "fixtures" / "modules" / "climate.py"

SYNC_USE = """
import numpy
import xarray

import climate_client as climate
from hub import SyncClient

client: SyncClient = climate.connect()
total: float = climate.slow_mean(xarray.DataArray(numpy.arange(3.0)), steps=2)
scaled: list[float] = climate.scale([1.0, 2.0], factor=3.0, timeout=5.0, client=client)
"""

ASYNC_USE = """
import asyncio

import climate_aio as climate
from hub import Client


async def main() -> list[float]:
    client: Client = await climate.connect()
    slept: float = await climate.sleep(0.1)
    return await climate.scale([slept], client=client)


scaled: list[float] = asyncio.run(main())
"""

WRONG_USE = """
import climate_client as climate

scaled: str = climate.scale("not a list")
"""


@pytest.fixture(scope="module")
def climate_info() -> dict[str, Any]:
    return load_module(str(CLIMATE), name="climate").info()


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder outside the repository, and a Python whose site-packages holds fedhub as
    an installed package (the ``hub`` folder itself, py.typed included) and, through a
    .pth file, this run's dependencies (numpy, xarray, pydantic ...)."""
    root = tmp_path_factory.mktemp("stub-users")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    site = Path(found.stdout.strip())
    (site / "hub").symlink_to(Path(hub.__file__).parent, target_is_directory=True)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "project"
    work.mkdir()
    return work, python


def mypy(work: Path, python: Path, *files: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            str(python),
            *files,
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=600,
        check=False,
    )


def test_stubs_import_only_the_public_api(climate_info: dict[str, Any]) -> None:
    for flavour in ("sync", "async"):
        tree = ast.parse(generate_stub(climate_info, site="hereon", flavour=flavour))
        fedhub_imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            and (getattr(node, "module", None) or node.names[0].name).startswith("hub")
        ]
        for node in fedhub_imports:
            if isinstance(node, ast.ImportFrom):
                assert node.module == "hub", ast.unparse(node)
                assert all(alias.name in hub.__all__ for alias in node.names)
            else:
                assert [alias.name for alias in node.names] == ["hub"]
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "hub"
        }
        assert used <= set(hub.__all__), used


def test_sync_and_async_stubs_pass_mypy_strict_outside_the_repository(
    climate_info: dict[str, Any], outside: tuple[Path, Path]
) -> None:
    work, python = outside
    assert ROOT not in work.parents
    (work / "climate_client.py").write_text(generate_stub(climate_info, site="hereon"))
    (work / "climate_aio.py").write_text(
        generate_stub(climate_info, site="hereon", flavour="async")
    )
    (work / "use_sync.py").write_text(SYNC_USE)
    (work / "use_async.py").write_text(ASYNC_USE)
    run = mypy(work, python, "climate_client.py", "climate_aio.py", "use_sync.py", "use_async.py")
    assert run.returncode == 0, run.stdout + run.stderr
    # and mypy does check the calls against the remote signature
    (work / "use_wrong.py").write_text(WRONG_USE)
    run = mypy(work, python, "use_wrong.py")
    assert run.returncode == 1
    assert "use_wrong.py:4" in run.stdout and "list[float]" in run.stdout, run.stdout
