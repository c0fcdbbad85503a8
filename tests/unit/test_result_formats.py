"""Result files as CSV and Zarr (``--out result.csv``, ``--out result.zarr``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hub.argfiles import write_result
from hub.errors import ConfigError


def _field() -> xr.DataArray:
    return xr.DataArray(
        np.arange(6.0).reshape(2, 3),
        dims=("time", "lat"),
        coords={"time": [0, 1], "lat": [53.5, 54.0, 54.5]},
        name="t2m",
        attrs={"units": "K"},
    )


def test_records_and_columns_become_a_csv_table_with_a_header(tmp_path: Path) -> None:
    records = [{"station": "a", "t": 1.5}, {"station": "b", "t": 2.5}]
    write_result(records, tmp_path / "records.csv")
    assert pd.read_csv(tmp_path / "records.csv").to_dict("records") == records
    write_result({"x": [1, 2], "y": [3, 4]}, tmp_path / "columns.csv")
    assert pd.read_csv(tmp_path / "columns.csv").to_dict("list") == {"x": [1, 2], "y": [3, 4]}
    write_result([1.0, 2.0, 3.0], tmp_path / "list.csv")
    assert pd.read_csv(tmp_path / "list.csv")["value"].tolist() == [1.0, 2.0, 3.0]


def test_a_data_array_becomes_one_row_per_point_with_its_coordinates(tmp_path: Path) -> None:
    write_result(_field(), tmp_path / "field.csv")
    table = pd.read_csv(tmp_path / "field.csv")
    assert list(table.columns) == ["time", "lat", "t2m"]
    assert len(table) == 6
    assert table.loc[(table.time == 1) & (table.lat == 54.5), "t2m"].item() == 5.0


def test_arrays_of_one_and_two_dimensions_are_tables_and_three_are_refused(
    tmp_path: Path,
) -> None:
    write_result(np.arange(3), tmp_path / "one.csv")
    assert pd.read_csv(tmp_path / "one.csv")["value"].tolist() == [0, 1, 2]
    write_result(np.eye(2), tmp_path / "two.csv")
    assert pd.read_csv(tmp_path / "two.csv").to_numpy().tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ConfigError, match="3-D array is not a table"):
        write_result(np.zeros((2, 2, 2)), tmp_path / "three.csv")
    assert not (tmp_path / "three.csv").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": [1, 2], "y": [3]}, "different lengths"),
        ("just text", "str is not a table"),
        ([[1, 2], [3]], "list is not a table"),
        (42, "int is not a table"),
    ],
)
def test_values_that_are_no_table_are_refused_as_csv(
    tmp_path: Path, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        write_result(value, tmp_path / "bad.csv")


def test_xarray_values_round_trip_through_zarr(tmp_path: Path) -> None:
    field = _field()
    write_result(field, tmp_path / "field.zarr")
    with xr.open_zarr(tmp_path / "field.zarr") as back:
        xr.testing.assert_identical(back["t2m"].load(), field)
    dataset = xr.Dataset({"t2m": field, "mask": field > 2})
    write_result(dataset, tmp_path / "both.zarr")
    with xr.open_zarr(tmp_path / "both.zarr") as back:
        xr.testing.assert_identical(back.load(), dataset)


def test_zarr_refuses_plain_values_and_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="list cannot be saved as Zarr"):
        write_result([1, 2], tmp_path / "list.zarr")
    write_result(_field(), tmp_path / "field.zarr")
    with pytest.raises(ConfigError, match="exists already"):
        write_result(_field() * 2, tmp_path / "field.zarr")
    with xr.open_zarr(tmp_path / "field.zarr") as back:  # the first store is intact
        assert float(back["t2m"].sum()) == 15.0
