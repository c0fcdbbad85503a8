"""Binary codec for call arguments and results (the plaintext inside an encrypted envelope).

:func:`encode` turns a tree of Python values into one ``bytes`` blob and :func:`decode` turns
it back, exactly. Binary data (``bytes``, array buffers) travels raw, never base64-inflated,
and big arrays cost at most one copy each way. The format is also described in
``docs/codec.md``.

Layout of a blob (all integers unsigned 64-bit little-endian)::

    b"FHC1"                      magic, format version 1
    header_length                length of the header in bytes
    header                       JSON, ASCII only (so also UTF-8), describing the tree; padded
                                 with trailing spaces so that the header ends on a multiple
                                 of 8 counted from the start of the blob
    then, for every buffer:
      buffer_length              length of the buffer in bytes (padding not included)
      buffer                     raw bytes; starts on a multiple of 8
      padding                    zero bytes up to the next multiple of 8

Nothing may follow the last buffer's padding. Buffers are numbered from 0 in order, and the
header refers to buffer ``i`` as ``{"$b": i}``; every buffer is referenced exactly once.

The header is JSON where JSON suffices: ``null``, ``true``/``false``, integers in the signed
64-bit range, finite floats (written by ``repr``, so exact, ``-0.0`` included), strings (with
``\\uXXXX`` escapes, so lone surrogates survive), lists (arrays) and dicts with ``str`` keys
(objects). Everything else is a tagged object ``{"$t": TAG, ...}``:

========================  ==================================================================
Python value              header
========================  ==================================================================
bytes, bytearray          ``{"$b": i}`` (decodes to ``bytes``)
tuple                     ``{"$t": "tuple", "items": [...]}`` (tuples stay tuples)
dict with a ``"$t"`` or   ``{"$t": "dict", "items": [[key, value], ...]}``: the escape that
``"$b"`` key, or a non-   keeps such dicts apart from tagged objects; keys may be any value
``str`` key               that decodes to something hashable
int outside int64         ``{"$t": "int", "hex": "-1f..."}``
nan, inf, -inf            ``{"$t": "float", "bits": "000000000000f87f"}``: the 8 bytes of
                          the IEEE double, little-endian, hex (NaN payloads survive)
complex                   ``{"$t": "complex", "v": [real, imag]}``
datetime.datetime         ``{"$t": "datetime", "v": "2024-05-01T12:00:00", "offset": us,
                          "fold": 1}``: wall time in ISO 8601 without offset; ``offset``
                          (UTC offset in microseconds) only when aware, ``fold`` only when
                          1. An aware value comes back with a fixed-offset
                          ``datetime.timezone``: the instant and offset are kept, zone
                          names such as Europe/Berlin are not
datetime.date             ``{"$t": "date", "v": "2024-05-01"}``
datetime.time             ``{"$t": "time", "v": "12:00:00", "offset": us, "fold": 1}``
datetime.timedelta        ``{"$t": "timedelta", "v": [days, seconds, microseconds]}``
numpy.ndarray             ``{"$t": "ndarray", "dtype": "<f8", "shape": [2, 3], "data":
                          {"$b": i}}``
numpy scalar              ``{"$t": "npscalar", "dtype": "<f4", "data": {"$b": i}}`` (comes
                          back as the same numpy scalar type)
xarray.Variable           ``{"$t": "Variable", "dims": [...], "data": ndarray, "attrs":
                          {...}}``
xarray.DataArray          ``{"$t": "DataArray", "name": ..., "variable": Variable, "coords":
                          [[name, Variable], ...]}``
xarray.Dataset            ``{"$t": "Dataset", "data_vars": [[name, Variable], ...],
                          "coords": [[name, Variable], ...], "attrs": {...}}``
========================  ==================================================================

Conversions that do not come back as the same type (by design):

* ``enum.Enum`` members are sent as their ``value``; the receiver's pydantic model turns the
  value back into the member.
* pydantic models are sent as ``model.model_dump(mode="python")``, a dict; the receiving
  function's pydantic model validates it again.
* ``bytearray`` and ``memoryview`` come back as ``bytes``; subclasses of ``str``, ``int``,
  ``float``, ``list``, ``tuple`` and ``dict`` (named tuples included) come back as the base
  type; subclasses of ``datetime`` lose their extra precision (e.g. pandas nanoseconds).

Arrays: the dtype must be bool, integer, float (16/32/64-bit), complex (64/128-bit),
datetime64, timedelta64, or fixed-width ``U``/``S``; ``object``, structured/void and
``longdouble`` dtypes are refused. Data travels in C order with little-endian byte order
(a big-endian array comes back little-endian, same values); non-contiguous and Fortran-order
arrays are copied into C order first. Masked arrays are refused (the mask would be lost).

Decoded arrays are always writeable. When :func:`decode` gets a writeable buffer
(``bytearray`` or a writeable ``memoryview``), aligned arrays are views into it — no copy —
and share its memory; when it gets immutable ``bytes``, each array is copied once.

xarray: names, dims, data, coordinates (dimension, non-dimension and multi-dimensional) and
``attrs`` round-trip; ``encoding`` (on-disk chunking, compression, fill values) is dropped.
Object-dtype variables holding only ``str`` (or only ``bytes``), as xarray makes of NetCDF
string variables, are sent as fixed-width ``U`` (``S``); any other object data, a pandas
MultiIndex and cftime dates included, is refused.

:func:`decode` refuses anything malformed, truncated or hostile with
:class:`hub.errors.CanonicalError`: bad magic, bad lengths, trailing bytes, non-zero padding,
invalid or non-ASCII JSON, duplicate keys, NaN literals, unknown tags or fields, dangling or
reused buffer references, a shape that does not match its buffer, disallowed dtypes, invalid
bool or unicode data, and nesting deeper than :data:`MAX_DEPTH` values.
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import json
import math
import struct
import sys
import warnings
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from hub.errors import CanonicalError

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "MAGIC",
    "MAX_DEPTH",
    "decode",
    "decode_many",
    "describe",
    "encode",
    "encode_many",
]

#: The first four bytes of every blob; the digit is the format version.
MAGIC = b"FHC1"
#: Values may nest this deep (a list in a list in ... counts one level each).
MAX_DEPTH = 100

_ALIGN = 8
_U64 = struct.Struct("<Q")
_PREFIX = len(MAGIC) + _U64.size
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# JSON nesting allowed when decoding: every value level costs at most three JSON levels
# (a dict in escaped form is {"items": [[key, value]]}).
_MAX_JSON_DEPTH = 3 * MAX_DEPTH + 8
_ALLOWED_KINDS = frozenset("biufcmMUS")
_ARRAY_FIELDS = frozenset({"$t", "dtype", "shape", "data"})
_SCALAR_FIELDS = frozenset({"$t", "dtype", "data"})
_MAX_UNICODE = 0x10FFFF
_TimeT = TypeVar("_TimeT", dt.datetime, dt.time)


# --------------------------------------------------------------------------- encoding


def encode(value: object) -> bytes:
    """Encode a tree of values into one blob; raise CanonicalError for unsupported values."""
    encoder = _Encoder()
    try:
        tree = encoder.value(value, 0)
        header = json.dumps(tree, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode(
            "ascii"
        )
    except RecursionError as exc:
        raise CanonicalError("value nests too deep to encode") from exc
    header += b" " * (-(_PREFIX + len(header)) % _ALIGN)
    parts: list[bytes | bytearray | memoryview] = [MAGIC, _U64.pack(len(header)), header]
    for buffer in encoder.buffers:
        size = memoryview(buffer).nbytes
        parts.append(_U64.pack(size))
        parts.append(buffer)
        if size % _ALIGN:
            parts.append(bytes(-size % _ALIGN))
    return b"".join(parts)


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
        dtype = _check_dtype(array.dtype)
        wire = dtype.newbyteorder("<")
        contiguous = array.astype(wire, order="C", copy=False)
        raw = contiguous.reshape(-1).view(np.uint8).data
        header: dict[str, object] = {"$t": tag, "dtype": wire.str}
        if tag == "ndarray":
            header["shape"] = list(contiguous.shape)
        header["data"] = self.buffer(raw)
        return header

    def variable(self, variable: xr.Variable, depth: int, *, what: str) -> dict[str, object]:
        values = np.asarray(variable.values)
        if values.dtype == object:
            values = _object_strings(values, what)
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


def _check_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.hasobject:
        raise CanonicalError("object-dtype arrays cannot be encoded; use a fixed-width dtype")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in _ALLOWED_KINDS:
        raise CanonicalError(f"arrays of dtype {dtype} cannot be encoded")
    if (dtype.kind == "f" and dtype.itemsize > 8) or (dtype.kind == "c" and dtype.itemsize > 16):
        raise CanonicalError(f"arrays of dtype {dtype} are not portable and cannot be encoded")
    return dtype


def _object_strings(values: np.ndarray[Any, Any], what: str) -> np.ndarray[Any, Any]:
    """Turn an object array of only str (or only bytes) into a fixed-width one."""
    items = values.ravel().tolist()
    if all(isinstance(item, str) for item in items):
        return values.astype(str)
    if all(isinstance(item, bytes) for item in items):
        return values.astype(bytes)
    raise CanonicalError(
        f"cannot encode {what}: object-dtype data that is not all str or all bytes"
    )


# --------------------------------------------------------------------------- decoding


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
        self.tags: dict[str, Callable[[dict[str, Any], int], object]] = {
            "tuple": self.tag_tuple,
            "dict": self.tag_dict,
            "int": self.tag_int,
            "float": self.tag_float,
            "complex": self.tag_complex,
            "datetime": self.tag_datetime,
            "date": self.tag_date,
            "time": self.tag_time,
            "timedelta": self.tag_timedelta,
            "ndarray": self.tag_ndarray,
            "npscalar": self.tag_npscalar,
            "Variable": self.tag_variable,
            "DataArray": self.tag_data_array,
            "Dataset": self.tag_dataset,
        }

    def run(self) -> object:
        tree = self.frame()
        value = self.value(tree, 0)
        if not all(self.used):
            raise CanonicalError(f"codec buffer {self.used.index(False)} is never referenced")
        return value

    def frame(self) -> object:
        view, size = self.view, self.view.nbytes
        if size < _PREFIX or bytes(view[: len(MAGIC)]) != MAGIC:
            raise CanonicalError("codec data does not start with the FHC1 magic")
        (header_length,) = _U64.unpack_from(view, len(MAGIC))
        if header_length > size - _PREFIX:
            raise CanonicalError("codec header is longer than the data (truncated?)")
        position = _PREFIX + header_length
        if position % _ALIGN:
            raise CanonicalError("codec header is not padded to a multiple of 8 bytes")
        try:
            text = bytes(view[_PREFIX:position]).decode("ascii")
        except UnicodeDecodeError as exc:
            raise CanonicalError("codec header is not ASCII JSON") from exc
        while position < size:
            if size - position < _U64.size:
                raise CanonicalError("codec buffer length is truncated")
            (length,) = _U64.unpack_from(view, position)
            position += _U64.size
            padded = length + (-length % _ALIGN)
            if padded > size - position:
                raise CanonicalError("codec buffer is longer than the data (truncated?)")
            if any(view[position + length : position + padded]):
                raise CanonicalError("codec buffer padding is not zero")
            self.buffers.append((position, length))
            position += padded
        self.used = [False] * len(self.buffers)
        try:
            return json.loads(
                text, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant
            )
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
            handler = self.tags.get(tag) if isinstance(tag, str) else None
            if handler is None:
                raise CanonicalError(f"codec header holds an unknown tag {tag!r}")
            return handler(node, depth)
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
        dtype = _wire_dtype(dtype_text)
        raw = self.raw(ref)
        count = math.prod(shape)
        if count * dtype.itemsize != raw.nbytes:
            raise CanonicalError(
                f"ndarray of shape {tuple(shape)} and dtype {dtype.str} needs "
                f"{count * dtype.itemsize} bytes, the buffer holds {raw.nbytes}"
            )
        flat = np.frombuffer(raw, dtype=dtype) if count else np.empty(0, dtype=dtype)
        if not flat.flags.writeable or not flat.flags.aligned:
            flat = flat.copy()
        if count and dtype.kind == "b" and flat.view(np.uint8).max() > 1:
            raise CanonicalError("bool ndarray holds bytes other than 0 and 1")
        if count and dtype.kind == "U" and flat.view("<u4").max() > _MAX_UNICODE:
            raise CanonicalError("unicode ndarray holds code points above U+10FFFF")
        return flat.reshape(shape)

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


def _wire_dtype(text: object) -> np.dtype[Any]:
    if not isinstance(text, str) or len(text) > 32:
        raise CanonicalError("ndarray dtype must be a short string")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError, Warning) as exc:
        raise CanonicalError(f"ndarray dtype {text!r} is not understood") from exc
    if dtype.str != text or dtype.byteorder == ">" or dtype.itemsize == 0:
        raise CanonicalError(f"ndarray dtype {text!r} is not in wire form")
    return _check_dtype(dtype)


def _xarray() -> Any:
    return importlib.import_module("xarray")


def _build(make: Callable[[], Any], what: str) -> Any:
    try:
        return make()
    except Exception as exc:  # xarray raises many kinds on inconsistent input
        raise CanonicalError(f"codec data holds an inconsistent {what}: {exc}") from exc


# --------------------------------------------------------------------------- describing


def describe(value: object) -> str:
    """A short description for logs and the CLI: type, dtype, shape and size, never values.

    >>> describe(np.zeros((365, 90)))
    'ndarray float64 (365, 90) 256 KiB'
    """
    xarray = sys.modules.get("xarray")
    if xarray is not None:
        if isinstance(value, xarray.DataArray):
            name = f" {value.name!r}" if value.name is not None else ""
            return f"DataArray{name} {value.dtype} ({_dims(value.sizes)}) {_size(value.nbytes)}"
        if isinstance(value, xarray.Dataset):
            count = len(value.data_vars)
            noun = "data variable" if count == 1 else "data variables"
            return f"Dataset ({_dims(value.sizes)}) {count} {noun} {_size(value.nbytes)}"
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {tuple(value.shape)} {_size(value.nbytes)}"
    if isinstance(value, np.generic):
        return f"numpy {value.dtype} scalar"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{type(value).__name__} {_size(memoryview(value).nbytes)}"
    if isinstance(value, str):
        return f"str {len(value)} chars"
    if isinstance(value, dict):
        return f"dict {len(value)} {'key' if len(value) == 1 else 'keys'}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} {len(value)} {'item' if len(value) == 1 else 'items'}"
    return type(value).__name__


def _dims(sizes: Any) -> str:
    return ", ".join(f"{name}: {size}" for name, size in sizes.items())


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    size = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}" if size < 10 else f"{int(size)} {unit}"
