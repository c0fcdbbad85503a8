"""Results in the formats people use: CSV for tables and small arrays, NetCDF for xarray,
JSON for anything printable; a value that does not fit is refused, naming what fits."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hub.errors import ConfigError, ValidationError
from hub.result_formats import fits, render


def _rows(text: str | None) -> list[list[str]]:
    assert text is not None
    return list(csv.reader(io.StringIO(text)))


def test_a_data_array_becomes_a_long_csv_table_with_its_coordinates() -> None:
    da = xr.DataArray(
        [[1.0, 2.0], [3.0, 4.0]],
        dims=("time", "x"),
        coords={"time": [0, 1], "x": [10, 20]},
        name="t",
    )
    rows = _rows(render(da, "csv", None))
    assert rows[0] == ["time", "x", "t"]
    assert rows[1:] == [
        ["0", "10", "1.0"],
        ["0", "20", "2.0"],
        ["1", "10", "3.0"],
        ["1", "20", "4.0"],
    ]


def test_arrays_lists_and_column_mappings_become_csv() -> None:
    assert _rows(render(np.array([[1, 2], [3, 4]]), "csv", None)) == [["1", "2"], ["3", "4"]]
    assert _rows(render(np.array([1.5, 2.5]), "csv", None)) == [["1.5"], ["2.5"]]
    assert _rows(render([1, 2], "csv", None)) == [["1"], ["2"]]
    assert _rows(render({"a": [1, 2], "b": ["x", "y"]}, "csv", None)) == [
        ["a", "b"],
        ["1", "x"],
        ["2", "y"],
    ]


@pytest.mark.parametrize(
    "value",
    [np.zeros((2, 2, 2)), {"a": [1], "b": [1, 2]}, [[1, 2], [3]], "text", {"a": {"b": 1}}],
)
def test_what_is_no_table_is_refused_as_csv_with_the_formats_that_fit(value: object) -> None:
    with pytest.raises(ValidationError) as err:
        render(value, "csv", None)
    assert err.value.hint is not None and "json" in err.value.hint


def test_netcdf_is_for_xarray_and_needs_a_path(tmp_path: Path) -> None:
    da = xr.DataArray([1.0, 2.0], dims="time", name="t")
    with pytest.raises(ConfigError, match="--out"):
        render(da, "nc", None)
    assert render(da, "nc", tmp_path / "t.nc") is None
    with xr.open_dataarray(tmp_path / "t.nc") as back:
        xr.testing.assert_identical(back.load(), da)
    with pytest.raises(ValidationError, match="xarray"):
        render([1, 2], "nc", tmp_path / "x.nc")
    assert fits(da) == ["json", "csv", "nc", "zarr"]
    assert fits("text") == ["json"]


def test_json_writes_numpy_as_lists(tmp_path: Path) -> None:
    assert render(np.array([1, 2]), "json", None) == "[\n  1,\n  2\n]\n"
    with pytest.raises(ConfigError):
        render([1], "yaml", None)


def test_zarr_never_removes_what_is_at_the_output_path(tmp_path: Path) -> None:
    keep = tmp_path / "my-data"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    value = xr.DataArray(np.arange(3.0), dims="x", name="v")
    with pytest.raises(ConfigError, match="exists already"):
        render(value, "zarr", keep)
    assert (keep / "notes.txt").read_text() == "precious"


def test_an_xarray_result_round_trips_through_a_zarr_store(tmp_path: Path) -> None:
    value = xr.DataArray(
        np.arange(6.0).reshape(2, 3), dims=("t", "x"), coords={"t": [0, 1]}, name="v"
    )
    render(value, "zarr", tmp_path / "v.zarr")
    with xr.open_zarr(tmp_path / "v.zarr") as back:
        xr.testing.assert_identical(back["v"].load(), value)
