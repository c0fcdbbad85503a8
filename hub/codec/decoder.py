"""Decoding: one blob back into the tree of values it was made from, refusing anything else.

:func:`decode` checks the frame (:mod:`hub.codec.frame`), parses the header strictly (no
duplicate keys, no NaN literals, bounded nesting), resolves every buffer reference exactly
once and rebuilds tagged values, arrays (:mod:`hub.codec.arrays`) and xarray objects
included. Whatever is malformed, truncated or hostile raises
:class:`~hub.errors.CanonicalError` and nothing else.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import math
import struct
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from hub.codec.arrays import array_from_buffer
from hub.codec.frame import MAX_DEPTH, split_frame
from hub.errors import CanonicalError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["decode", "decode_many"]

# JSON nesting allowed when decoding: every value level costs at most three JSON levels
# (a dict in escaped form is {"items": [[key, value]]}).
_MAX_JSON_DEPTH = 3 * MAX_DEPTH + 8
_ARRAY_FIELDS = frozenset({"$t", "dtype", "shape", "data"})
_SCALAR_FIELDS = frozenset({"$t", "dtype", "data"})
_TimeT = TypeVar("_TimeT", dt.datetime, dt.time)


def decode(data: bytes | bytearray | memoryview, *, max_size: int | None = None) -> object:
    """Decode a blob made by :func:`encode`; refuse malformed input with CanonicalError.

    ``max_size`` bounds the blob's length in bytes, checked before anything is parsed.
    """
    try:
        return _Decoder(data, max_size).run()
    except CanonicalError:
        raise
    except RecursionError as exc:
        raise CanonicalError("codec data nests too deep") from exc
    except MemoryError as exc:
        raise CanonicalError("codec data needs more memory than available") from exc
    except (ValueError, TypeError, OverflowError, KeyError, IndexError, struct.error) as exc:
        raise CanonicalError(f"malformed codec data: {exc}") from exc


def decode_many(
    data: bytes | bytearray | memoryview, *, max_size: int | None = None
) -> dict[str, object]:
    """Decode a blob made by :func:`encode_many` back into keyword arguments."""
    value = decode(data, max_size=max_size)
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise CanonicalError("codec data does not hold a dict with str keys")
    return value


def _reject_constant(name: str) -> object:
    raise CanonicalError(f"codec header holds the JSON literal {name}")


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise CanonicalError("codec header holds an object with duplicate keys")
    return result


#: The header's JSON parser (one, not one per blob as ``json.loads`` with options makes).
_HEADER_JSON = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)


class _Decoder:
    """Parses one blob: the frame first, then the header tree with its buffers."""

    def __init__(self, data: bytes | bytearray | memoryview, max_size: int | None) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CanonicalError(f"codec data must be bytes, not {type(data).__name__}")
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        if max_size is not None and view.nbytes > max_size:
            raise CanonicalError(f"codec data of {view.nbytes} bytes exceeds {max_size}")
        self.view = view
        self.buffers: list[tuple[int, int]] = []
        self.used: list[bool] = []

    def run(self) -> object:
        tree = self.frame()
        value = self.value(tree, 0)
        if not all(self.used):
            raise CanonicalError(f"codec buffer {self.used.index(False)} is never referenced")
        return value

    def frame(self) -> object:
        text, self.buffers = split_frame(self.view)
        self.used = [False] * len(self.buffers)
        try:
            return _HEADER_JSON.decode(text)
        except json.JSONDecodeError as exc:
            raise CanonicalError(f"codec header is not valid JSON: {exc}") from exc

    # ---- tree walking

    def value(self, node: object, depth: int) -> object:
        if depth > _MAX_JSON_DEPTH:
            raise CanonicalError(f"codec data nests deeper than {MAX_DEPTH} levels")
        if node is None or isinstance(node, bool | int | str):
            return node
        if isinstance(node, float):
            if not math.isfinite(node):
                raise CanonicalError("codec header holds a non-finite JSON number")
            return node
        if isinstance(node, list):
            return [self.value(item, depth + 1) for item in node]
        if not isinstance(node, dict):  # pragma: no cover - json.loads makes nothing else
            raise CanonicalError(f"unexpected JSON value {type(node).__name__}")
        if "$b" in node:
            return self.raw(node).tobytes()
        if "$t" in node:
            tag = node["$t"]
            handler = _TAGS.get(tag) if isinstance(tag, str) else None
            if handler is None:
                raise CanonicalError(f"codec header holds an unknown tag {tag!r}")
            return handler(self, node, depth)
        return {key: self.value(item, depth + 1) for key, item in node.items()}

    def raw(self, node: object) -> memoryview:
        """The buffer a ``{"$b": i}`` reference points to (each may be used once)."""
        if not isinstance(node, dict) or set(node) != {"$b"}:
            raise CanonicalError("a buffer reference must be exactly {'$b': index}")
        index = node["$b"]
        if type(index) is not int or not 0 <= index < len(self.buffers):
            raise CanonicalError(f"codec buffer reference {index!r} does not exist")
        if self.used[index]:
            raise CanonicalError(f"codec buffer {index} is referenced twice")
        self.used[index] = True
        start, length = self.buffers[index]
        return self.view[start : start + length]

    def hashable(self, node: object, depth: int, what: str) -> Hashable:
        value = self.value(node, depth)
        try:
            hash(value)
        except TypeError as exc:
            raise CanonicalError(f"{what} {type(value).__name__} is not hashable") from exc
        return value  # hash() succeeded, so it is Hashable

    def items(self, node: object, depth: int) -> list[tuple[Hashable, object]]:
        """A list of [key, value] pairs with hashable, unique keys."""
        if not isinstance(node, list):
            raise CanonicalError("codec items must be a list of [key, value] pairs")
        pairs: list[tuple[Hashable, object]] = []
        for pair in node:
            if not isinstance(pair, list) or len(pair) != 2:
                raise CanonicalError("codec items must be a list of [key, value] pairs")
            pairs.append((self.hashable(pair[0], depth + 2, "key"), pair[1]))
        if len({key for key, _ in pairs}) != len(pairs):
            raise CanonicalError("codec items hold duplicate keys")
        return pairs

    # ---- tags

    def tag_tuple(self, node: dict[str, Any], depth: int) -> object:
        items = _fields(node, {"items"})["items"]
        if not isinstance(items, list):
            raise CanonicalError("tuple items must be a list")
        return tuple(self.value(item, depth + 2) for item in items)

    def tag_dict(self, node: dict[str, Any], depth: int) -> object:
        pairs = self.items(_fields(node, {"items"})["items"], depth)
        return {key: self.value(item, depth + 3) for key, item in pairs}

    def tag_int(self, node: dict[str, Any], depth: int) -> object:
        text = _string(_fields(node, {"hex"})["hex"], "int hex")
        digits = text.removeprefix("-")
        if not digits or digits.strip("0123456789abcdef"):
            raise CanonicalError("int hex must be lower-case hex digits")
        return int(text, 16)

    def tag_float(self, node: dict[str, Any], depth: int) -> object:
        text = _string(_fields(node, {"bits"})["bits"], "float bits")
        if len(text) != 16 or text.strip("0123456789abcdef"):
            raise CanonicalError("float bits must be 16 lower-case hex digits")
        result: float = struct.unpack("<d", bytes.fromhex(text))[0]
        return result

    def tag_complex(self, node: dict[str, Any], depth: int) -> object:
        parts = _fields(node, {"v"})["v"]
        if not isinstance(parts, list) or len(parts) != 2:
            raise CanonicalError("complex needs [real, imag]")
        real, imag = (self.value(part, depth + 2) for part in parts)
        if type(real) is not float or type(imag) is not float:
            raise CanonicalError("complex parts must be floats")
        return complex(real, imag)

    def tag_datetime(self, node: dict[str, Any], depth: int) -> object:
        fields = _fields(node, {"v"}, {"offset", "fold"})
        return _with_zone(dt.datetime.fromisoformat(_string(fields["v"], "datetime")), fields)

    def tag_date(self, node: dict[str, Any], depth: int) -> object:
        return dt.date.fromisoformat(_string(_fields(node, {"v"})["v"], "date"))

    def tag_time(self, node: dict[str, Any], depth: int) -> object:
        fields = _fields(node, {"v"}, {"offset", "fold"})
        return _with_zone(dt.time.fromisoformat(_string(fields["v"], "time")), fields)

    def tag_timedelta(self, node: dict[str, Any], depth: int) -> object:
        parts = _fields(node, {"v"})["v"]
        if not isinstance(parts, list) or len(parts) != 3 or any(type(p) is not int for p in parts):
            raise CanonicalError("timedelta needs [days, seconds, microseconds] as integers")
        return dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])

    def tag_ndarray(self, node: dict[str, Any], depth: int) -> object:
        if set(node) != _ARRAY_FIELDS:
            raise CanonicalError(f"ndarray needs exactly the fields {sorted(_ARRAY_FIELDS)}")
        shape = node["shape"]
        if not isinstance(shape, list) or any(
            type(side) is not int or not 0 <= side < 2**62 for side in shape
        ):
            raise CanonicalError("ndarray shape must be a list of non-negative integers")
        return self.array(node["dtype"], shape, node["data"])

    def tag_npscalar(self, node: dict[str, Any], depth: int) -> object:
        if set(node) != _SCALAR_FIELDS:
            raise CanonicalError(f"npscalar needs exactly the fields {sorted(_SCALAR_FIELDS)}")
        return self.array(node["dtype"], [], node["data"])[()]

    def array(self, dtype_text: object, shape: list[int], ref: object) -> np.ndarray[Any, Any]:
        return array_from_buffer(dtype_text, shape, self.raw(ref))

    def tag_variable(self, node: dict[str, Any], depth: int) -> xr.Variable:
        fields = _fields(node, {"dims", "data", "attrs"})
        dims = fields["dims"]
        if not isinstance(dims, list):
            raise CanonicalError("Variable dims must be a list")
        names = [self.hashable(dim, depth + 2, "dimension name") for dim in dims]
        data = fields["data"]
        if not isinstance(data, dict) or data.get("$t") != "ndarray":
            raise CanonicalError("Variable data must be an ndarray")
        values = self.tag_ndarray(data, depth + 1)
        attrs = self.value(fields["attrs"], depth + 1)
        if not isinstance(attrs, dict):
            raise CanonicalError("Variable attrs must be a dict")
        xarray = _xarray()
        variable: xr.Variable = _build(
            lambda: xarray.Variable(names, values, attrs=attrs), "Variable"
        )
        return variable

    def variables(self, node: object, depth: int) -> dict[Hashable, xr.Variable]:
        result: dict[Hashable, xr.Variable] = {}
        for name, item in self.items(node, depth):
            if not isinstance(item, dict) or item.get("$t") != "Variable":
                raise CanonicalError("named variables must be Variable objects")
            result[name] = self.tag_variable(item, depth + 3)
        return result

    def tag_data_array(self, node: dict[str, Any], depth: int) -> object:
        fields = _fields(node, {"name", "variable", "coords"})
        name = self.hashable(fields["name"], depth + 1, "DataArray name")
        variable = fields["variable"]
        if not isinstance(variable, dict) or variable.get("$t") != "Variable":
            raise CanonicalError("DataArray variable must be a Variable")
        var = self.tag_variable(variable, depth + 1)
        coords = self.variables(fields["coords"], depth + 1)
        xarray = _xarray()
        return _build(
            lambda: xarray.DataArray(
                var.data, coords=coords, dims=var.dims, name=name, attrs=var.attrs
            ),
            "DataArray",
        )

    def tag_dataset(self, node: dict[str, Any], depth: int) -> object:
        fields = _fields(node, {"data_vars", "coords", "attrs"})
        data_vars = self.variables(fields["data_vars"], depth + 1)
        coords = self.variables(fields["coords"], depth + 1)
        if set(data_vars) & set(coords):
            raise CanonicalError("Dataset names a variable both data and coordinate")
        attrs = self.value(fields["attrs"], depth + 1)
        if not isinstance(attrs, dict):
            raise CanonicalError("Dataset attrs must be a dict")
        xarray = _xarray()
        return _build(
            lambda: xarray.Dataset(data_vars=data_vars, coords=coords, attrs=attrs), "Dataset"
        )


def _fields(
    node: dict[str, Any], required: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    keys = set(node) - {"$t"}
    if not required <= keys or not keys <= required | optional:
        expected = sorted(required | set(optional))
        raise CanonicalError(f"tag {node['$t']!r} needs the fields {expected}, got {sorted(keys)}")
    return node


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise CanonicalError(f"{what} must be a string")
    return value


def _with_zone(value: _TimeT, fields: dict[str, Any]) -> _TimeT:
    """Attach the fixed UTC offset (in microseconds) and the fold a time value travels with."""
    if value.tzinfo is not None:
        raise CanonicalError("a time value's text must not carry an offset")
    if "offset" in fields:
        offset = fields["offset"]
        if type(offset) is not int:
            raise CanonicalError("a time value's offset must be an integer of microseconds")
        value = value.replace(tzinfo=dt.timezone(dt.timedelta(microseconds=offset)))
    if "fold" in fields:
        if type(fields["fold"]) is not int or fields["fold"] != 1:
            raise CanonicalError("fold must be 1 when present")
        value = value.replace(fold=1)
    return value


#: Tag → the decoder's method rebuilding it (one table, not one per decoded blob).
_TAGS: dict[str, Callable[[_Decoder, dict[str, Any], int], object]] = {
    "tuple": _Decoder.tag_tuple,
    "dict": _Decoder.tag_dict,
    "int": _Decoder.tag_int,
    "float": _Decoder.tag_float,
    "complex": _Decoder.tag_complex,
    "datetime": _Decoder.tag_datetime,
    "date": _Decoder.tag_date,
    "time": _Decoder.tag_time,
    "timedelta": _Decoder.tag_timedelta,
    "ndarray": _Decoder.tag_ndarray,
    "npscalar": _Decoder.tag_npscalar,
    "Variable": _Decoder.tag_variable,
    "DataArray": _Decoder.tag_data_array,
    "Dataset": _Decoder.tag_dataset,
}


def _xarray() -> Any:
    return importlib.import_module("xarray")


def _build(make: Callable[[], Any], what: str) -> Any:
    try:
        return make()
    except Exception as exc:  # xarray raises many kinds on inconsistent input
        raise CanonicalError(f"codec data holds an inconsistent {what}: {exc}") from exc
