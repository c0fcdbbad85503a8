"""Tests for the binary argument codec (hub.codec) and CLI argument files (hub.argfiles)."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import math
import struct
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pydantic
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.argfiles import parse_cli_argument, read_argument_file, write_result
from hub.codec import MAGIC, MAX_DEPTH, decode, decode_many, describe, encode, encode_many
from hub.errors import CanonicalError, ConfigError

# --------------------------------------------------------------------------- helpers


def same(a: object, b: object) -> bool:
    """Structural equality that also compares types and float bit patterns."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex):
        assert isinstance(b, complex)
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return same_array(a, b)  # type: ignore[arg-type]
    return a == b


def same_array(original: np.ndarray[Any, Any], decoded: np.ndarray[Any, Any]) -> bool:
    """Same shape, the little-endian form of the dtype, and the same bits."""
    expected = original.dtype.newbyteorder("<")
    return (
        decoded.shape == original.shape
        and decoded.dtype == expected
        and decoded.dtype.str == expected.str
        and decoded.tobytes() == np.ascontiguousarray(original, dtype=expected).tobytes()
    )


def blob(header: object, *buffers: bytes, raw_header: bytes | None = None) -> bytes:
    """Build a blob by the documented format, independently of hub.codec."""
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-(12 + len(text)) % 8)
    out = MAGIC + struct.pack("<Q", len(text)) + text
    for buffer in buffers:
        out += struct.pack("<Q", len(buffer)) + buffer + bytes(-len(buffer) % 8)
    return out


def decodes_or_refuses(data: bytes) -> None:
    """Decoding hostile bytes gives a value or a CanonicalError, never anything else."""
    with contextlib.suppress(CanonicalError):
        decode(data)


# --------------------------------------------------------------------------- strategies

KEYS = st.text(max_size=8) | st.sampled_from(["$t", "$b", "items", "$", "dtype"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.text()
    | st.binary()
    | st.complex_numbers()
)
TREES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(KEYS, children, max_size=4)
        | st.dictionaries(st.integers() | st.tuples(st.integers()), children, max_size=3)
    ),
    max_leaves=20,
)

WIRE_DTYPES = (
    hnp.scalar_dtypes()
    | hnp.byte_string_dtypes(min_len=1, max_len=5)
    | hnp.unicode_string_dtypes(min_len=1, max_len=5)
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    """Arrays of every wire dtype and shape, sometimes sliced or in Fortran order."""
    array = draw(
        hnp.arrays(WIRE_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    )
    how = draw(st.sampled_from(["as is", "fortran", "strided", "transposed"]))
    if how == "fortran":
        return np.asfortranarray(array)
    if how == "strided" and array.ndim:
        return array[:: draw(st.integers(1, 3))]
    if how == "transposed":
        return array.T
    return array


DIMS = ("time", "lat", "lon")


@st.composite
def data_arrays(draw: st.DrawFn) -> xr.DataArray:
    """DataArrays with dimension, scalar, non-dimension and 2-d coordinates and attrs."""
    ndim = draw(st.integers(1, 3))
    dims = DIMS[:ndim]
    shape = tuple(draw(st.integers(0, 3)) for _ in dims)
    dtype = draw(st.sampled_from(["<f8", ">f4", "<i8", "|b1", "<c16"]))
    data = draw(hnp.arrays(dtype, shape))
    coords: dict[str, Any] = {}
    if draw(st.booleans()):
        coords[dims[0]] = np.arange(shape[0], dtype="<f8") * 1.5
    if draw(st.booleans()):
        coords["label"] = ((dims[0],), np.array([f"s{i}" for i in range(shape[0])]))
    if ndim >= 2 and draw(st.booleans()):
        coords["area"] = (dims[:2], np.ones(shape[:2]), {"units": "m2"})
    if draw(st.booleans()):
        coords["height"] = ((), 2.0)
    attrs = draw(
        st.dictionaries(
            st.text(min_size=1, max_size=5),
            st.integers(-100, 100)
            | st.floats(allow_nan=False)
            | st.text(max_size=5)
            | st.builds(np.float32, st.floats(-1e3, 1e3, width=32))
            | hnp.arrays("<i4", st.integers(0, 3)),
            max_size=3,
        )
    )
    name = draw(st.none() | st.text(max_size=5))
    return xr.DataArray(data, dims=dims, coords=coords, attrs=attrs, name=name)


# --------------------------------------------------------------------------- round trips


@given(TREES)
def test_json_like_trees_round_trip_exactly(value: object) -> None:
    assert same(decode(encode(value)), value)


@given(TREES)
def test_encoding_is_deterministic(value: object) -> None:
    assert encode(value) == encode(value)


@given(st.floats())
def test_floats_keep_their_bit_pattern(value: float) -> None:
    decoded = decode(encode(value))
    assert isinstance(decoded, float)
    assert struct.pack("<d", decoded) == struct.pack("<d", value)


def test_nan_payload_and_negative_zero_survive() -> None:
    (odd_nan,) = struct.unpack("<d", bytes.fromhex("0100000000f8ff7f"))
    decoded = decode(encode([odd_nan, -0.0, math.inf, -math.inf]))
    assert isinstance(decoded, list)
    assert struct.pack("<d", decoded[0]).hex() == "0100000000f8ff7f"
    assert math.copysign(1.0, decoded[1]) == -1.0
    assert decoded[2:] == [math.inf, -math.inf]


@given(arrays())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_numpy_arrays_round_trip_in_little_endian_c_order(array: np.ndarray[Any, Any]) -> None:
    decoded = decode(encode(array))
    assert isinstance(decoded, np.ndarray)
    assert same_array(array, decoded)
    assert decoded.flags.writeable
    assert decoded.flags.c_contiguous


@given(WIRE_DTYPES.flatmap(hnp.from_dtype))
def test_numpy_scalars_keep_their_type(scalar: np.generic) -> None:
    decoded = decode(encode(scalar))
    assert type(decoded) is type(scalar)
    assert np.asarray(decoded).tobytes() == np.asarray(scalar, dtype=decoded.dtype).tobytes()


@given(data_arrays())
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_data_arrays_round_trip_with_coords_and_attrs(array: xr.DataArray) -> None:
    decoded = decode(encode(array))
    assert isinstance(decoded, xr.DataArray)
    xr.testing.assert_identical(decoded, array)


@given(data_arrays(), st.booleans())
@settings(deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow])
def test_datasets_round_trip_with_coords_and_attrs(array: xr.DataArray, second: bool) -> None:
    dataset = array.to_dataset(name="main")
    if second:
        dataset["other"] = (array.dims, np.ones(array.shape, dtype="<i2"), {"note": "x"})
    dataset = dataset.assign_coords(station=("site", np.array(["a", "b"])))
    dataset.attrs = {"title": "test", "version": np.int16(3)}
    decoded = decode(encode(dataset))
    assert isinstance(decoded, xr.Dataset)
    xr.testing.assert_identical(decoded, dataset)
    assert list(decoded.data_vars) == list(dataset.data_vars)


def test_time_coordinates_and_string_object_coords_round_trip() -> None:
    times = np.arange("2020-01-01", "2020-01-04", dtype="datetime64[D]").astype("M8[ns]")
    array = xr.DataArray(
        np.arange(6.0).reshape(3, 2),
        dims=("time", "site"),
        coords={"time": times, "site": np.array(["kiel", "geesthacht"], dtype=object)},
        name="tas",
    )
    decoded = decode(encode(array))
    assert isinstance(decoded, xr.DataArray)
    xr.testing.assert_identical(decoded, array)
    assert decoded["site"].dtype.kind == "U"


def test_xarray_encoding_is_dropped() -> None:
    array = xr.DataArray(np.zeros(3), dims=("x",))
    array.encoding = {"zlib": True}
    decoded = decode(encode(array))
    assert isinstance(decoded, xr.DataArray)
    assert decoded.encoding == {}


def test_dicts_with_tag_keys_round_trip_as_dicts() -> None:
    values = [
        {"$t": "ndarray", "dtype": "<f8", "shape": [1], "data": {"$b": 0}},
        {"$b": 0},
        {"$t": "dict", "items": []},
        {"nested": {"$b": 1, "$t": 2}},
    ]
    assert same(decode(encode(values)), values)


def test_tuples_stay_tuples_and_lists_stay_lists() -> None:
    value = ([1, (2, [3])], ())
    assert same(decode(encode(value)), value)


def test_huge_integers_round_trip() -> None:
    value = [2**63, -(2**63) - 1, 2**63 - 1, -(2**63), 10**5000, -(10**5000)]
    assert decode(encode(value)) == value


@given(
    st.datetimes(
        timezones=st.none()
        | st.builds(dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23)))
    ),
    st.dates(),
    st.timedeltas(),
    st.times(),
)
def test_dates_times_and_durations_round_trip(
    when: dt.datetime, day: dt.date, delta: dt.timedelta, clock: dt.time
) -> None:
    decoded = decode(encode([when, day, delta, clock]))
    assert isinstance(decoded, list)
    assert decoded == [when, day, delta, clock]
    assert decoded[0].utcoffset() == when.utcoffset()
    assert decoded[0].fold == when.fold
    assert type(decoded[1]) is dt.date


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Point(pydantic.BaseModel):
    x: float
    tags: tuple[str, ...] = ()


class Shape(pydantic.BaseModel):
    corners: list[Point]
    colour: Colour


def test_aware_times_keep_odd_offsets_and_fold() -> None:
    odd = dt.timezone(-dt.timedelta(hours=3, seconds=7, microseconds=1))
    values: list[dt.datetime | dt.time] = [
        dt.datetime(2021, 10, 31, 2, 30, tzinfo=odd, fold=1),
        dt.datetime(2021, 10, 31, 2, 30, fold=1),
        dt.time(23, 59, 59, 999999, tzinfo=odd, fold=1),
    ]
    decoded = decode(encode(values))
    assert isinstance(decoded, list)
    assert all(isinstance(v, dt.datetime | dt.time) for v in decoded)
    assert [(v, v.utcoffset(), v.fold) for v in decoded] == [
        (v, v.utcoffset(), v.fold) for v in values
    ]


def test_enums_travel_as_their_values() -> None:
    decoded = decode(encode({"c": Colour.RED, "l": Level.HIGH}))
    assert same(decoded, {"c": "red", "l": 3})


def test_pydantic_models_travel_as_dicts_the_receiver_validates() -> None:
    shape = Shape(corners=[Point(x=1.5, tags=("a",))], colour=Colour.RED)
    decoded = decode(encode(shape))
    assert decoded == {"corners": [{"x": 1.5, "tags": ("a",)}], "colour": "red"}
    assert Shape.model_validate(decoded) == shape


def test_bytearray_and_memoryview_come_back_as_bytes() -> None:
    assert same(decode(encode([bytearray(b"ab"), memoryview(b"cd")])), [b"ab", b"cd"])


def test_decoding_a_writeable_buffer_shares_its_memory_without_copying() -> None:
    array = np.arange(1000.0)
    data = bytearray(encode(array))
    decoded = decode(data)
    assert isinstance(decoded, np.ndarray)
    assert decoded.flags.writeable
    assert np.shares_memory(decoded, np.frombuffer(data, dtype=np.uint8))
    np.testing.assert_array_equal(decoded, array)


def test_decoding_immutable_bytes_gives_writeable_arrays() -> None:
    decoded = decode(encode({"a": np.arange(4), "s": np.int8(1)}))
    assert isinstance(decoded, dict)
    decoded["a"][0] = 9
    assert decoded["a"][0] == 9


def test_buffers_are_aligned_to_eight_bytes() -> None:
    data = encode([b"x", np.arange(3.0)])
    header_end = 12 + struct.unpack_from("<Q", data, 4)[0]
    assert header_end % 8 == 0
    second = header_end + 8 + 8  # one byte buffer, padded to eight
    assert struct.unpack_from("<Q", data, second)[0] == 24
    assert data[second + 8 : second + 32] == np.arange(3.0).tobytes()


def test_encode_many_and_decode_many_carry_keyword_arguments() -> None:
    kwargs: dict[str, object] = {"n": 3, "data": np.ones(2), "$t": "kept"}
    decoded = decode_many(encode_many(kwargs))
    assert same(decoded, kwargs)


def test_decode_many_refuses_a_blob_that_is_not_a_dict() -> None:
    with pytest.raises(CanonicalError, match="dict"):
        decode_many(encode([1, 2]))


# --------------------------------------------------------------------------- refusing to encode


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([object()]), "object-dtype"),
        (np.zeros(2, dtype=[("a", "<i4")]), "cannot be encoded"),
        (np.zeros(2, dtype=np.longdouble), "not portable"),
        (np.ma.masked_array([1, 2], mask=[False, True]), "masked"),
        ({1, 2}, "set"),
        (object(), "object"),
        (xr.DataArray(np.array([object()]), dims="x"), "object-dtype"),
    ],
)
def test_unsupported_values_are_refused_with_a_clear_error(value: object, message: str) -> None:
    with pytest.raises(CanonicalError, match=message):
        encode(value)


def test_values_nested_too_deep_are_refused() -> None:
    value: list[object] = []
    for _ in range(MAX_DEPTH + 5):
        value = [value]
    with pytest.raises(CanonicalError, match="nests deeper"):
        encode(value)


def test_cyclic_values_are_refused() -> None:
    value: list[object] = []
    value.append(value)
    with pytest.raises(CanonicalError):
        encode(value)


# --------------------------------------------------------------------------- refusing to decode

GOOD_ARRAY = {"$t": "ndarray", "dtype": "<f8", "shape": [2], "data": {"$b": 0}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "magic"),
        (b"FHC2" + bytes(8), "magic"),
        (MAGIC + struct.pack("<Q", 1 << 60), "longer than the data"),
        (blob(None, raw_header=b"{bad json"), "not valid JSON"),
        (blob(None, raw_header=b'{"a":1,"a":2}'), "duplicate"),
        (blob(None, raw_header=b"[NaN]"), "NaN"),
        (blob(None, raw_header=b"[1e999]"), "non-finite"),
        (blob(None, raw_header='["\u00e9"]'.encode()), "ASCII"),
        (blob({"$t": "pickle"}), "unknown tag"),
        (blob({"$t": 5}), "unknown tag"),
        (blob({"$b": 0}), "does not exist"),
        (blob({"$b": 0, "x": 1}, b"a"), "exactly"),
        (blob([{"$b": 0}, {"$b": 0}], b"a"), "twice"),
        (blob(None, b"a"), "never referenced"),
        (blob(GOOD_ARRAY, bytes(8)), "needs 16 bytes"),
        (blob({**GOOD_ARRAY, "shape": [2**61, 2**61]}, bytes(16)), "needs"),
        (blob({**GOOD_ARRAY, "shape": [-2]}, bytes(16)), "non-negative"),
        (blob({**GOOD_ARRAY, "dtype": "|O"}, bytes(16)), "object"),
        (blob({**GOOD_ARRAY, "dtype": ">f8"}, bytes(16)), "wire form"),
        (blob({**GOOD_ARRAY, "dtype": "f8"}, bytes(16)), "wire form"),
        (blob({**GOOD_ARRAY, "dtype": "<f8,<i4"}, bytes(16)), "dtype"),
        (blob({**GOOD_ARRAY, "dtype": "no such"}, bytes(16)), "not understood"),
        (blob({**GOOD_ARRAY, "extra": 1}, bytes(16)), "fields"),
        (blob({**GOOD_ARRAY, "dtype": "|b1", "shape": [3]}, bytes(2)), "needs 3 bytes"),
        (blob({**GOOD_ARRAY, "dtype": "|b1"}, b"\x00\x02"), "bool"),
        (blob({**GOOD_ARRAY, "dtype": "<U1"}, b"\xff" * 8), "code points"),
        (blob({"$t": "tuple"}), "fields"),
        (blob({"$t": "int", "hex": "0x10"}), "hex"),
        (blob({"$t": "float", "bits": "zz"}), "bits"),
        (blob({"$t": "datetime", "v": "yesterday"}), "malformed"),
        (blob({"$t": "timedelta", "v": [10**12, 0, 0]}), "malformed"),
        (blob({"$t": "dict", "items": [[1, 2], [1, 3]]}), "duplicate"),
        (blob({"$t": "dict", "items": [[[1], 2]]}), "hashable"),
        (
            blob(
                {"$t": "Variable", "dims": ["x", "y"], "data": GOOD_ARRAY, "attrs": {}}, bytes(16)
            ),
            "inconsistent",
        ),
        (encode(np.arange(2.0)) + bytes(3), "truncated"),
        (encode(np.arange(2.0)) + bytes(8), "never referenced"),
        (encode(b"a")[:-1] + b"\x01", "padding"),
    ],
)
def test_malformed_blobs_are_refused_with_canonical_error(data: bytes, message: str) -> None:
    with pytest.raises(CanonicalError, match=message):
        decode(data)


def test_blobs_over_max_size_are_refused_before_parsing() -> None:
    data = encode(np.zeros(100))
    assert isinstance(decode(data, max_size=len(data)), np.ndarray)
    with pytest.raises(CanonicalError, match="exceeds"):
        decode(data, max_size=len(data) - 1)


def test_deeply_nested_headers_are_refused() -> None:
    with pytest.raises(CanonicalError):
        decode(blob(None, raw_header=b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(CanonicalError, match="nests deeper"):
        decode(blob(None, raw_header=b"[" * 900 + b"]" * 900))


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(CanonicalError, match="must be bytes"):
        decode("FHC1")  # type: ignore[arg-type]


SAMPLE = encode(
    {
        "n": 1,
        "x": [1.5, None, "s", b"raw", (1, 2)],
        "a": np.arange(6, dtype="<i2").reshape(2, 3),
        "da": xr.DataArray(np.ones(2), dims="x", coords={"x": [1, 2]}, attrs={"u": "K"}),
        "when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    }
)


def test_every_truncation_of_a_valid_blob_is_refused() -> None:
    for end in range(len(SAMPLE)):
        with pytest.raises(CanonicalError):
            decode(SAMPLE[:end])


@given(st.integers(0, len(SAMPLE) - 1), st.integers(1, 255))
def test_single_byte_flips_decode_or_raise_canonical_error(position: int, xor: int) -> None:
    data = bytearray(SAMPLE)
    data[position] ^= xor
    decodes_or_refuses(bytes(data))


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_canonical_error(data: bytes) -> None:
    decodes_or_refuses(data)
    decodes_or_refuses(MAGIC + data)
    decodes_or_refuses(MAGIC + struct.pack("<Q", len(data)) + data)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=3),
        lambda c: (
            st.lists(c)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "$t",
                        "$b",
                        "dtype",
                        "shape",
                        "data",
                        "items",
                        "v",
                        "hex",
                        "bits",
                        "dims",
                        "attrs",
                        "name",
                        "variable",
                        "coords",
                        "data_vars",
                    ]
                )
                | st.text(max_size=3),
                c,
            )
        ),
        max_leaves=12,
    ),
    st.lists(st.binary(max_size=24), max_size=3),
)
def test_random_headers_decode_or_raise_canonical_error(
    header: object, buffers: list[bytes]
) -> None:
    decodes_or_refuses(blob(header, *buffers))


@given(
    st.sampled_from(
        [
            "tuple",
            "dict",
            "int",
            "float",
            "complex",
            "datetime",
            "date",
            "time",
            "timedelta",
            "ndarray",
            "npscalar",
            "Variable",
            "DataArray",
            "Dataset",
        ]
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "items",
                "hex",
                "bits",
                "v",
                "fold",
                "dtype",
                "shape",
                "data",
                "dims",
                "attrs",
                "name",
                "variable",
                "coords",
                "data_vars",
            ]
        ),
        st.none()
        | st.integers(-3, 3)
        | st.text(max_size=4)
        | st.lists(st.integers(0, 2))
        | st.just({"$b": 0})
        | st.just(GOOD_ARRAY)
        | st.just([["x", {"$t": "Variable"}]]),
        max_size=5,
    ),
)
def test_random_tagged_objects_decode_or_raise_canonical_error(
    tag: str, fields: dict[str, object]
) -> None:
    decodes_or_refuses(blob({"$t": tag, **fields}, bytes(16)))


# --------------------------------------------------------------------------- describing


def test_describe_names_type_dtype_dims_and_size_but_no_values() -> None:
    array = xr.DataArray(np.zeros((365, 90)), dims=("time", "lat"))
    assert describe(array) == "DataArray float64 (time: 365, lat: 90) 256 KiB"
    assert describe(array.rename("tas")) == "DataArray 'tas' float64 (time: 365, lat: 90) 256 KiB"
    assert describe(array.to_dataset(name="tas")) == (
        "Dataset (time: 365, lat: 90) 1 data variable 256 KiB"
    )
    assert describe(np.zeros(3, dtype="<i4")) == "ndarray int32 (3,) 12 B"
    assert describe(b"x" * 3 * 1024 * 1024) == "bytes 3.0 MiB"
    assert describe("secret") == "str 6 chars"
    assert describe({"a": 1}) == "dict 1 key"
    assert describe([1, 2]) == "list 2 items"
    assert describe(3.5) == "float"


# --------------------------------------------------------------------------- argfiles


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=3", ("n", 3)),
        ("xs=[1, 2.5]", ("xs", [1, 2.5])),
        ("flag=true", ("flag", True)),
        ('obj={"a": null}', ("obj", {"a": None})),
        ("name=klaus", ("name", "klaus")),
        ('name="3"', ("name", "3")),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
        ("at=@@home", ("at", "@home")),
    ],
)
def test_cli_values_are_json_when_valid_else_strings(
    text: str, expected: tuple[str, object]
) -> None:
    assert parse_cli_argument(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("novalue", "key=value"), ("=3", "empty key"), ("1x=3", "identifier"), ("f=@", "no file")],
)
def test_bad_cli_argument_syntax_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cli_argument(text)


def test_netcdf_file_with_one_variable_is_read_as_a_data_array(tmp_path: Path) -> None:
    array = xr.DataArray(
        np.arange(6.0).reshape(2, 3),
        dims=("time", "lat"),
        coords={"lat": [10.0, 20.0, 30.0]},
        name="tas",
        attrs={"units": "K"},
    )
    path = tmp_path / "in.nc"
    array.to_netcdf(path, engine="scipy")
    key, value = parse_cli_argument(f"da=@{path}")
    assert key == "da"
    assert isinstance(value, xr.DataArray)
    xr.testing.assert_identical(value, array)
    assert same(decode(encode(value)).values, array.values)  # type: ignore[attr-defined]


def test_netcdf_file_with_several_variables_is_read_as_a_dataset(tmp_path: Path) -> None:
    dataset = xr.Dataset({"a": ("x", np.zeros(2)), "b": ("x", np.ones(2, dtype="<i4"))})
    path = tmp_path / "in.nc4"
    dataset.to_netcdf(path, engine="scipy")
    _, value = parse_cli_argument(f"ds=@{path}")
    assert isinstance(value, xr.Dataset)
    xr.testing.assert_identical(value, dataset)


def test_npy_json_and_other_files_are_read_by_suffix(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(4, dtype="<i2"))
    (tmp_path / "c.json").write_text('{"k": [1, 2]}', encoding="utf-8")
    (tmp_path / "d.bin").write_bytes(b"\x00\x01")
    array = parse_cli_argument(f"a=@{tmp_path / 'a.npy'}")[1]
    assert same(array, np.arange(4, dtype="<i2"))
    assert parse_cli_argument(f"c=@{tmp_path / 'c.json'}") == ("c", {"k": [1, 2]})
    assert parse_cli_argument(f"d=@{tmp_path / 'd.bin'}") == ("d", b"\x00\x01")


def test_missing_file_is_a_config_error_naming_argument_and_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.nc"
    with pytest.raises(ConfigError, match=r"argument 'da'.*missing\.nc"):
        parse_cli_argument(f"da=@{path}")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", b"{nope", "not valid JSON"),
        ("bad.nc", b"not a netcdf file", "is not a NetCDF file"),
        ("bad.npy", b"\x93NUMPY garbage", "cannot be read"),
    ],
)
def test_unreadable_files_are_config_errors(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"argument 'x'.*{name}.*{message}"):
        read_argument_file(path, key="x")


def test_pickled_npy_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match=r"obj\.npy"):
        parse_cli_argument(f"o=@{path}")


def test_results_are_written_by_suffix_and_read_back(tmp_path: Path) -> None:
    array = xr.DataArray(np.arange(3.0), dims="x", name="v", attrs={"units": "m"})
    write_result(array, tmp_path / "out.nc")
    read_back = read_argument_file(tmp_path / "out.nc")
    assert isinstance(read_back, xr.DataArray)
    xr.testing.assert_identical(read_back, array)
    write_result(np.arange(3), tmp_path / "out.npy")
    assert same(np.load(tmp_path / "out.npy"), np.arange(3))
    write_result({"a": np.float32(1.5), "t": dt.date(2024, 1, 2)}, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": 1.5, "t": "2024-01-02"}
    write_result(b"\x00raw", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"\x00raw"
    write_result("text", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "text"


@pytest.mark.parametrize(
    ("value", "name"),
    [({"a": 1}, "out.nc"), (42, "out.bin"), ({"a": object()}, "out.json"), ([{}], "out.npy")],
)
def test_results_that_do_not_fit_the_suffix_are_config_errors(
    tmp_path: Path, value: object, name: str
) -> None:
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        write_result(value, tmp_path / name)


def test_writing_into_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be written"):
        write_result(b"x", tmp_path / "no" / "such" / "out.bin")
