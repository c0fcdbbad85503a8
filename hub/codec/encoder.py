"""Encoding: a tree of Python values (numpy and xarray included) into one blob.

:func:`encode` walks the value, writes JSON where JSON suffices and tagged objects for the
rest (see :mod:`hub.codec` for the table), and collects every binary buffer; the frame is
:mod:`hub.codec.frame`'s, the array rules :mod:`hub.codec.arrays`'.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import struct
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from hub.codec.arrays import array_buffer, object_strings
from hub.codec.frame import MAX_DEPTH, join_frame
from hub.errors import CanonicalError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["encode", "encode_many"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
#: The header's JSON writer (one, not one per blob as ``json.dumps`` with options makes).
_HEADER_JSON = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def encode(value: object) -> bytes:
    """Encode a tree of values into one blob; raise CanonicalError for unsupported values."""
    encoder = _Encoder()
    try:
        tree = encoder.value(value, 0)
        header = _HEADER_JSON.encode(tree).encode("ascii")
    except RecursionError as exc:
        raise CanonicalError("value nests too deep to encode") from exc
    return join_frame(header, encoder.buffers)


def encode_many(kwargs: dict[str, object]) -> bytes:
    """Encode keyword arguments (a dict with str keys) into one blob."""
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise CanonicalError("encode_many takes a dict with str keys")
    return encode(kwargs)


class _Encoder:
    """Walks a value, collecting binary buffers and returning the JSON header tree."""

    def __init__(self) -> None:
        self.buffers: list[bytes | bytearray | memoryview] = []

    def buffer(self, data: bytes | bytearray | memoryview) -> dict[str, int]:
        self.buffers.append(data)
        return {"$b": len(self.buffers) - 1}

    def value(self, value: object, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise CanonicalError(f"value nests deeper than {MAX_DEPTH} levels")
        if value is None or value is True or value is False:
            return value
        if isinstance(value, np.generic):
            return self.array(np.asarray(value), tag="npscalar")
        if isinstance(value, enum.Enum):
            return self.value(value.value, depth + 1)
        if isinstance(value, int):
            number = int(value)
            if _INT64_MIN <= number <= _INT64_MAX:
                return number
            return {"$t": "int", "hex": format(number, "x")}
        if isinstance(value, float):
            real = float(value)
            if math.isfinite(real):
                return real
            return {"$t": "float", "bits": struct.pack("<d", real).hex()}
        if isinstance(value, complex):
            return {
                "$t": "complex",
                "v": [self.value(value.real, depth + 1), self.value(value.imag, depth + 1)],
            }
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, bytes | bytearray):
            return self.buffer(value)
        if isinstance(value, memoryview):
            return self.buffer(value.tobytes())
        if isinstance(value, list):
            return [self.value(item, depth + 1) for item in value]
        if isinstance(value, tuple):
            return {"$t": "tuple", "items": [self.value(item, depth + 1) for item in value]}
        if isinstance(value, dict):
            return self.mapping(value, depth)
        if isinstance(value, dt.datetime):
            wall = dt.datetime(  # naive on purpose: the offset travels separately
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )
            return _tagged_time("datetime", wall.isoformat(), value)
        if isinstance(value, dt.date):
            return {"$t": "date", "v": dt.date(value.year, value.month, value.day).isoformat()}
        if isinstance(value, dt.time):
            clock = dt.time(value.hour, value.minute, value.second, value.microsecond)
            return _tagged_time("time", clock.isoformat(), value)
        if isinstance(value, dt.timedelta):
            return {"$t": "timedelta", "v": [value.days, value.seconds, value.microseconds]}
        if isinstance(value, np.ndarray):
            if isinstance(value, np.ma.MaskedArray):
                raise CanonicalError("cannot encode a masked array (its mask would be lost)")
            return self.array(np.asarray(value), tag="ndarray")
        xarray = sys.modules.get("xarray")
        if xarray is not None:
            if isinstance(value, xarray.DataArray):
                return self.data_array(value, depth)
            if isinstance(value, xarray.Dataset):
                return self.dataset(value, depth)
            if isinstance(value, xarray.Variable):
                return self.variable(value, depth, what="Variable")
        pydantic = sys.modules.get("pydantic")
        if pydantic is not None and isinstance(value, pydantic.BaseModel):
            return self.value(value.model_dump(mode="python"), depth + 1)
        raise CanonicalError(f"cannot encode a value of type {type(value).__qualname__}")

    def mapping(self, value: dict[Any, Any], depth: int) -> object:
        if all(isinstance(key, str) for key in value) and "$t" not in value and "$b" not in value:
            return {str.__str__(key): self.value(item, depth + 1) for key, item in value.items()}
        return {
            "$t": "dict",
            "items": [
                [self.value(key, depth + 1), self.value(item, depth + 1)]
                for key, item in value.items()
            ],
        }

    def array(self, array: np.ndarray[Any, Any], *, tag: str) -> dict[str, object]:
        dtype, shape, raw = array_buffer(array)
        header: dict[str, object] = {"$t": tag, "dtype": dtype}
        if tag == "ndarray":
            header["shape"] = shape
        header["data"] = self.buffer(raw)
        return header

    def variable(self, variable: xr.Variable, depth: int, *, what: str) -> dict[str, object]:
        values = np.asarray(variable.values)
        if values.dtype == object:
            values = object_strings(values, what)
        try:
            data = self.array(values, tag="ndarray")
        except CanonicalError as exc:
            raise CanonicalError(f"cannot encode {what}: {exc.message}") from exc
        return {
            "$t": "Variable",
            "dims": [self.value(dim, depth + 1) for dim in variable.dims],
            "data": data,
            "attrs": self.value(dict(variable.attrs), depth + 1),
        }

    def named_variables(self, variables: Any, depth: int, kind: str) -> list[list[object]]:
        return [
            [
                self.value(name, depth + 1),
                self.variable(variables[name].variable, depth + 1, what=f"{kind} {name!r}"),
            ]
            for name in variables
        ]

    def data_array(self, array: xr.DataArray, depth: int) -> dict[str, object]:
        return {
            "$t": "DataArray",
            "name": self.value(array.name, depth + 1),
            "variable": self.variable(array.variable, depth, what=f"DataArray {array.name!r}"),
            "coords": self.named_variables(array.coords, depth, "coordinate"),
        }

    def dataset(self, dataset: xr.Dataset, depth: int) -> dict[str, object]:
        return {
            "$t": "Dataset",
            "data_vars": self.named_variables(dataset.data_vars, depth, "data variable"),
            "coords": self.named_variables(dataset.coords, depth, "coordinate"),
            "attrs": self.value(dict(dataset.attrs), depth + 1),
        }


def _tagged_time(tag: str, text: str, value: dt.datetime | dt.time) -> dict[str, object]:
    try:
        offset = value.utcoffset()
    except (TypeError, ValueError) as exc:
        raise CanonicalError(f"cannot encode a {tag} whose tzinfo fails: {exc}") from exc
    header: dict[str, object] = {"$t": tag, "v": text}
    if offset is not None:
        header["offset"] = offset // dt.timedelta(microseconds=1)
    if value.fold:
        header["fold"] = 1
    return header
