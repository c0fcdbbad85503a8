"""Arguments as users pass them from the command line: NetCDF files reach a parameter as the
type it declares, and a file that is not what its suffix says gives one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hub.argfiles import declared_kind
from hub.serve import DevNode, start_dev_node

pytestmark = pytest.mark.slow

MODULE = '''
import xarray as xr


def describe_dataset(ds: xr.Dataset) -> list[str]:
    """The names of a Dataset's data variables."""
    return sorted(str(name) for name in ds.data_vars)


def maybe_dataset(ds: xr.Dataset | None = None) -> str:
    """What arrived."""
    return type(ds).__name__


def total(da: xr.DataArray) -> float:
    """The sum of a field."""
    return float(da.sum())
'''


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNode]:
    folder = tmp_path_factory.mktemp("arguments")
    (folder / "fields.py").write_text(MODULE)
    node = start_dev_node(folder / "fields.py")
    try:
        yield node
    finally:
        node.stop()


def fedhub(dev: DevNode, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env["FEDHUB_HOME"] = str(dev.home)
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.fixture
def one_variable(tmp_path: Path) -> Path:
    path = tmp_path / "one.nc"
    xr.Dataset({"t": ("x", np.arange(4.0))}).to_netcdf(path)
    return path


def test_a_one_variable_dataset_file_reaches_a_dataset_parameter_as_a_dataset(
    dev: DevNode, one_variable: Path
) -> None:
    where = one_variable.parent
    run = fedhub(dev, "call", "dev.fields.describe_dataset", "ds=@one.nc", "--json", cwd=where)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["t"]
    run = fedhub(dev, "call", "dev.fields.maybe_dataset", "ds=@one.nc", cwd=where)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Dataset"
    # and the same file still reaches a DataArray parameter as a DataArray
    run = fedhub(dev, "call", "dev.fields.total", "da=@one.nc", cwd=where)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) == 6.0


def test_a_file_that_is_not_netcdf_gives_one_line_before_anything_is_sent(
    dev: DevNode, tmp_path: Path
) -> None:
    (tmp_path / "notes.nc").write_text("these are my notes, not NetCDF\n")
    run = fedhub(dev, "call", "dev.fields.total", "da=@notes.nc", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "error: ArgumentError: argument 'da': 'notes.nc' is not a NetCDF file (a .nc argument "
        "must be NetCDF 3 or 4; use another suffix to send raw bytes)"
    ]
    assert "request" not in run.stderr


def test_declared_kind_reads_plain_and_optional_xarray_parameters() -> None:
    dataset = {"x-fedhub-type": "xarray.Dataset", "type": "string"}
    assert declared_kind(dataset) == "Dataset"
    assert declared_kind({"anyOf": [dataset, {"type": "null"}]}) == "Dataset"
    assert declared_kind({"x-fedhub-type": "xarray.DataArray"}) == "DataArray"
    assert declared_kind({"type": "integer"}) is None
