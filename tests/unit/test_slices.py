"""Slices without servers: the CLI's ``--isel`` text, the node's selection and its checks,
and the layout a lazy copy is built from (which must survive the codec)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hub import codec
from hub.errors import ConfigError, SelectionError
from hub.results_wire import SliceArgs
from hub.slices import parse_isel
from node.slicing import layout_of, select

RID = "r" * 22


def grid() -> xr.Dataset:
    t2m = np.arange(24 * 4 * 5, dtype="float64").reshape(24, 4, 5)
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m, {"units": "K"}), "n": ("time", np.arange(24))},
        coords={"time": np.arange(24) * 6.0, "lat": np.arange(4.0), "lon": np.arange(5.0)},
        attrs={"title": "grid"},
    )


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["time=0:10"], {"time": slice(0, 10)}),
        (["time=3", "lat=-1"], {"time": 3, "lat": -1}),
        (["x=::4"], {"x": slice(None, None, 4)}),
        (["x=100:"], {"x": slice(100, None)}),
        (["x=:-2:3"], {"x": slice(None, -2, 3)}),
    ],
)
def test_isel_text_reads_as_xarray_isel_would_take_it(
    texts: list[str], expected: dict[str, object]
) -> None:
    assert parse_isel(texts) == expected


@pytest.mark.parametrize("text", ["time", "time=", "=3", "time=a:b", "time=1:2:3:4", "time=1.5"])
def test_isel_text_that_is_no_index_or_slice_is_refused_with_the_form_to_write(text: str) -> None:
    with pytest.raises(ConfigError, match="DIM=INDEX or DIM=START:STOP"):
        parse_isel([text])


def test_a_selection_is_what_xarray_gives_for_the_same_variables_and_positions() -> None:
    ds = grid()
    got = select(ds, RID, {"time": (2, 20, 3), "lon": -1}, ("t2m",))
    xr.testing.assert_identical(got, ds[["t2m"]].isel(time=slice(2, 20, 3), lon=-1))
    xr.testing.assert_identical(select(ds.t2m, RID, {"lat": 0}, ("t2m",)), ds.t2m.isel(lat=0))
    xr.testing.assert_identical(select(ds, RID, {}, None), ds)


@pytest.mark.parametrize(
    ("isel", "variables", "phrase"),
    [
        ({"depth": 0}, None, "no dimension 'depth' in the result of rrrr"),
        ({}, ("t2m", "sst"), "no variable 'sst'"),
        ({"time": -25}, None, "index -25 is out of range for time (size 24)"),
        ({"lat": (0, 5, None)}, None, "5 is out of range for lat (size 4)"),
        ({"lat": (-5, None, None)}, None, "-5 is out of range for lat (size 4)"),
        ({"lat": (2, 2, None)}, None, "2:2 selects nothing of lat (size 4)"),
        ({"lat": (None, None, 0)}, None, "the step of lat must be at least 1, not 0"),
    ],
)
def test_a_selection_that_cannot_be_taken_says_why(
    isel: dict[str, object], variables: tuple[str, ...] | None, phrase: str
) -> None:
    with pytest.raises(SelectionError) as err:
        select(grid(), RID, isel, variables)  # type: ignore[arg-type]
    assert phrase in err.value.message
    assert err.value.code == "bad_selection"


@pytest.mark.parametrize(
    ("value", "kind"),
    [([1.0, 2.0], "a list"), (np.arange(3), "a numpy array"), (b"abc", "a bytes")],
)
def test_only_xarray_results_are_sliced(value: object, kind: str) -> None:
    with pytest.raises(SelectionError, match=f"is {kind}.*, not an xarray value"):
        select(value, RID, {}, None)


def test_a_dataarray_is_chosen_only_by_its_own_name() -> None:
    with pytest.raises(SelectionError, match="one DataArray"):
        select(grid().t2m, RID, {}, ("n",))


def test_the_layout_names_each_variable_with_its_shape_and_keeps_coordinates_via_the_codec() -> (
    None
):
    ds = grid()
    layout = codec.decode(codec.encode(layout_of(ds, RID)))
    assert layout["kind"] == "Dataset" and layout["attrs"] == {"title": "grid"}
    xr.testing.assert_identical(layout["coords"], ds.coords.to_dataset())
    assert layout["variables"] == [
        ["t2m", {"dims": ["time", "lat", "lon"], "shape": [24, 4, 5], "dtype": "<f8",
                 "attrs": {"units": "K"}}],
        ["n", {"dims": ["time"], "shape": [24], "dtype": ds.n.dtype.str, "attrs": {}}],
    ]  # fmt: skip
    one = layout_of(ds.t2m, RID)
    assert one["kind"] == "DataArray" and [n for n, _ in one["variables"]] == ["t2m"]


def test_the_selection_hash_names_the_selection_and_not_the_grant() -> None:
    def digest(grant: str, isel: dict[str, object], variables: tuple[str, ...] | None) -> str:
        return SliceArgs(grant=grant, isel=isel, variables=variables).selection_hash()  # type: ignore[arg-type]

    a = digest("Zmlyc3Q", {"time": (0, 10, None)}, ("t2m",))
    assert a == digest("c2Vjb25k", {"time": (0, 10, None)}, ("t2m",))
    assert a != digest("Zmlyc3Q", {"time": (0, 11, None)}, ("t2m",))
    assert a != digest("Zmlyc3Q", {"time": (0, 10, None)}, None)
    assert len(bytes.fromhex(a)) == 32
