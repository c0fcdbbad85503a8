"""The bounded-memory NetCDF3 writer writes, byte for byte, what xarray's scipy engine writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hub import netcdf3
from hub.bulk import open_netcdf, write_netcdf
from hub.netcdf3 import prepare_netcdf3, write_netcdf3

VALUES = {
    "an unnamed DataArray": xr.DataArray(np.random.default_rng(1).random(1000), dims=("x",)),
    "a named DataArray with coordinates and attributes": xr.DataArray(
        np.arange(12.0).reshape(3, 4),
        dims=("y", "x"),
        name="t",
        coords={"x": [1, 2, 3, 4], "y": [0.5, 1.5, 2.5]},
        attrs={"units": "K", "scale": 2.5, "n": 3, "levels": [1, 2, 3]},
    ),
    "a Dataset of every NetCDF3 type, strings, NaN and times": xr.Dataset(
        {
            "a": (("t",), np.arange(5, dtype="int32")),
            "b": (("t",), np.array([1, 2, 3, 4, 5], dtype="int16")),
            "c": (("t",), np.linspace(0, 1, 5, dtype="float32")),
            "s": (("t",), np.array(["x", "yy", "zzz", "", "abcd"])),
            "i8": (("t",), np.arange(5, dtype="int8")),
            "nan": (("t",), np.array([1.0, np.nan, 3, 4, 5])),
        },
        coords={"t": pd.date_range("2020-01-01", periods=5)},
        attrs={"title": "test", "version": 1.5},
    ),
    "a scalar next to a 3-d array": xr.Dataset(
        {"z": ((), 3.0), "w": (("x", "y", "q"), np.random.default_rng(2).random((3, 70, 80)))}
    ),
    "int64 narrowed to int32": xr.DataArray(np.arange(10, dtype="int64"), dims=("x",), name="k"),
    "a DataArray named like its dimension": xr.DataArray(np.arange(3.0), dims=("x",), name="x"),
}


@pytest.mark.parametrize("block", [netcdf3.BLOCK_BYTES, 64, 8])
@pytest.mark.parametrize("case", list(VALUES))
def test_the_file_is_byte_for_byte_what_xarray_writes(
    case: str, block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netcdf3, "BLOCK_BYTES", block)  # blocks of rows, rows, elements
    value = VALUES[case]
    value.to_netcdf(tmp_path / "xarray.nc", engine="scipy")
    write_netcdf3(value, tmp_path / "ours.nc")
    assert (tmp_path / "ours.nc").read_bytes() == (tmp_path / "xarray.nc").read_bytes()


def test_a_lazily_opened_value_is_written_back_unchanged(tmp_path: Path) -> None:
    value = VALUES["a named DataArray with coordinates and attributes"]
    value.to_netcdf(tmp_path / "in.nc", engine="scipy")
    lazy = open_netcdf(tmp_path / "in.nc")
    write_netcdf3(lazy, tmp_path / "out.nc")
    assert (tmp_path / "out.nc").read_bytes() == (tmp_path / "in.nc").read_bytes()
    xr.testing.assert_identical(open_netcdf(tmp_path / "out.nc", load=True), value)


def test_an_unlimited_dimension_is_left_to_xarray(tmp_path: Path) -> None:
    value = xr.Dataset({"v": (("time",), np.arange(4.0))})
    value.encoding["unlimited_dims"] = {"time"}
    with pytest.raises(NotImplementedError, match="unlimited"):
        write_netcdf3(value, tmp_path / "ours.nc")
    assert write_netcdf(value, tmp_path / "theirs.nc") == "Dataset"
    back = open_netcdf(tmp_path / "theirs.nc", kind="Dataset", load=True)
    xr.testing.assert_identical(back, value)


def test_an_attribute_name_netcdf3_cannot_hold_is_refused_as_xarray_refuses_it(
    tmp_path: Path,
) -> None:
    value = xr.Dataset({"v": (("x",), np.arange(3.0), {"a/b": 1})})
    with pytest.raises(ValueError):
        write_netcdf3(value, tmp_path / "ours.nc")
    with pytest.raises(ValueError):
        write_netcdf(value, tmp_path / "theirs.nc")


def test_a_large_lazily_opened_variable_is_never_held_whole(tmp_path: Path) -> None:
    import tracemalloc

    size = 40 * 1024 * 1024
    value = xr.DataArray(np.random.default_rng(3).random(size // 8), dims=("x",), name="v")
    write_netcdf3(value, tmp_path / "in.nc")
    del value
    lazy = open_netcdf(tmp_path / "in.nc")
    tracemalloc.start()
    try:
        write_netcdf3(lazy, tmp_path / "out.nc")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * netcdf3.BLOCK_BYTES < size
    assert (tmp_path / "out.nc").read_bytes() == (tmp_path / "in.nc").read_bytes()


def test_a_lazily_opened_variable_with_a_numeric_fill_value_is_written_as_xarray_writes_it(
    tmp_path: Path,
) -> None:
    value = xr.Dataset({"v": (("x",), np.array([1.0, np.nan, 3.0]))})
    value.to_netcdf(tmp_path / "in.nc", engine="scipy", encoding={"v": {"_FillValue": -999.0}})
    lazy = xr.open_dataset(tmp_path / "in.nc", engine="scipy")
    lazy.to_netcdf(tmp_path / "xarray.nc", engine="scipy")
    write_netcdf3(lazy, tmp_path / "ours.nc")
    assert (tmp_path / "ours.nc").read_bytes() == (tmp_path / "xarray.nc").read_bytes()


@pytest.mark.parametrize("case", list(VALUES))
def test_the_prepared_size_is_the_files_and_exact_says_whether_dtypes_come_back(
    case: str, tmp_path: Path
) -> None:
    value = VALUES[case]
    prepared = prepare_netcdf3(value)
    write_netcdf3(value, tmp_path / "ours.nc")
    assert prepared.size == (tmp_path / "ours.nc").stat().st_size
    back = open_netcdf(tmp_path / "ours.nc", kind=prepared.kind, load=True)
    wanted = value.to_dataset(name="v") if isinstance(value, xr.DataArray) else value
    got = back.to_dataset(name="v") if isinstance(back, xr.DataArray) else back
    same = {k: v.dtype for k, v in got.variables.items()} == {
        k: v.dtype for k, v in wanted.variables.items()
    }
    assert same or not prepared.exact, "exact never claims dtypes that do not come back"
    if case in ("an unnamed DataArray", "a scalar next to a 3-d array"):
        assert prepared.exact
    if case in (
        "int64 narrowed to int32",
        "a Dataset of every NetCDF3 type, strings, NaN and times",
    ):
        assert not prepared.exact
