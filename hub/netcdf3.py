"""Writing an xarray value as a NetCDF3 file in bounded memory (beyond the value itself).

xarray's ``scipy`` engine, the NetCDF engine that needs no C library, builds every variable
whole in memory and then copies it again to write it (``scipy.io.netcdf`` cannot write
incrementally): a value of N bytes costs up to 3 N of memory while it is written, which a
node returning a large DataArray cannot afford. :func:`write_netcdf3` encodes the value
with xarray's own machinery (CF conventions, NetCDF3 dtype and name rules: the same
variables, dimensions and attributes the scipy engine would write) and then writes the
64-bit-offset format itself, each variable in blocks of a few MiB. A lazily opened value
is read one block at a time where its encoding leaves it lazy.

The format (NetCDF classic, version 2: 64-bit offsets)::

    'CDF' 0x02 ‖ numrecs ‖ dim_list ‖ gatt_list ‖ var_list ‖ data of each variable

Only fixed-size variables: a value with an unlimited dimension raises NotImplementedError
(write it with xarray then).
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["BLOCK_BYTES", "NetCDF3", "prepare_netcdf3", "write_netcdf3"]

#: Bytes of a variable converted and written at a time.
BLOCK_BYTES = 4 * 1024 * 1024

_NC_DIMENSION = b"\x00\x00\x00\x0a"
_NC_VARIABLE = b"\x00\x00\x00\x0b"
_NC_ATTRIBUTE = b"\x00\x00\x00\x0c"
_ABSENT = bytes(8)
#: NetCDF3 type codes and their big-endian dtypes, by (dtype kind char, item size).
_TYPES: dict[tuple[str, int], tuple[int, str]] = {
    ("b", 1): (1, ">i1"),
    ("S", 1): (2, "S1"),
    ("c", 1): (2, "S1"),
    ("h", 2): (3, ">i2"),
    ("i", 4): (4, ">i4"),
    ("l", 4): (4, ">i4"),
    ("f", 4): (5, ">f4"),
    ("d", 8): (6, ">f8"),
}
_NC_INT, _NC_FLOAT, _NC_CHAR = 4, 5, 2
_DTYPES = {code: np.dtype(dtype) for code, dtype in _TYPES.values()}
#: The default fill values of NetCDF3, by type code.
_FILLS = {
    1: b"\x81",
    2: b"\x00",
    3: b"\x80\x01",
    4: b"\x80\x00\x00\x01",
    5: b"\x7c\xf0\x00\x00",
    6: b"\x47\x9e\x00\x00\x00\x00\x00\x00",
}
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class _Target:
    """Where xarray's writer puts a variable's data: kept by reference, written later."""

    def __init__(self) -> None:
        self.data: Any = None

    def __setitem__(self, key: object, value: Any) -> None:
        if key is not Ellipsis:
            raise NotImplementedError("region writes")
        self.data = value


def _store_class() -> type:
    """The xarray data store that collects an encoded value (made on first use: xarray
    is imported only by those who write NetCDF)."""
    from xarray.backends.common import WritableCFDataStore

    nc3: Any = importlib.import_module("xarray.backends.netcdf3")  # untyped functions
    encode_nc3_attr_value = nc3.encode_nc3_attr_value
    encode_nc3_variable = nc3.encode_nc3_variable
    is_valid_nc3_name = nc3.is_valid_nc3_name

    class CollectingStore(WritableCFDataStore):
        """Takes dimensions, attributes and variables as xarray's scipy store would."""

        def __init__(self) -> None:
            self.dimensions: dict[str, int] = {}
            self.attributes: dict[str, Any] = {}
            self.variables: dict[str, tuple[Any, dict[str, Any], _Target]] = {}

        def get_dimensions(self) -> dict[str, int]:
            return dict(self.dimensions)

        def get_parent_dimensions(self) -> dict[str, int]:
            return {}

        def get_attrs(self) -> dict[str, Any]:
            return dict(self.attributes)

        def get_variables(self) -> dict[str, Any]:
            return {}

        def set_dimension(self, name: str, length: int, is_unlimited: bool = False) -> None:
            if is_unlimited:
                raise NotImplementedError("unlimited dimensions")
            self.dimensions[name] = length

        def set_attribute(self, key: str, value: Any) -> None:
            if not is_valid_nc3_name(key):
                raise ValueError(f"{key!r} is no valid NetCDF3 attribute name")
            self.attributes[key] = encode_nc3_attr_value(value)

        def encode_variable(self, variable: Any, name: str | None = None) -> Any:
            return encode_nc3_variable(variable, name=name)

        def prepare_variable(
            self,
            name: str,
            variable: Any,
            check_encoding: bool = False,
            unlimited_dims: Any = None,
        ) -> tuple[_Target, Any]:
            if check_encoding and variable.encoding and variable.encoding != {"_FillValue": None}:
                raise ValueError(f"unexpected encoding: {list(variable.encoding)}")
            for key in variable.attrs:
                if not is_valid_nc3_name(key):
                    raise ValueError(f"{key!r} is no valid NetCDF3 attribute name")
            target = _Target()
            self.variables[name] = (variable.dims, dict(variable.attrs), target)
            return target, variable.data

    return CollectingStore


@dataclass(frozen=True, slots=True)
class NetCDF3:
    """A value encoded for NetCDF3, ready to write: its header, its size in bytes."""

    head: bytes
    #: Variables in file order: name, data (in memory, or still lazy), type code, padding.
    parts: list[tuple[str, Any, int, bytes]]
    #: Bytes of the whole file.
    size: int
    #: ``DataArray`` or ``Dataset``: what the value was.
    kind: str
    #: Whether reading the file back gives every variable its dtype again (NetCDF3 and
    #: CF decoding change no dtype: no int64 narrowed, no times, strings or masked ints).
    exact: bool

    def write(self, out: BinaryIO | Any) -> None:
        """Write the file to ``out`` (anything with ``write``), strictly in order."""
        out.write(self.head)
        for _, data, nc_type, pad in self.parts:
            dtype = _DTYPES[nc_type]
            for block in _blocks(data.shape, dtype.itemsize):
                part = data[block]
                part = part.values if hasattr(part, "values") else part
                # bytes in file order, handed over without another copy
                out.write(np.ascontiguousarray(part, dtype=dtype).reshape(-1).view(np.uint8).data)
            out.write(pad)


def write_netcdf3(value: Any, path: Path) -> None:
    """Write an xarray DataArray or Dataset to ``path`` as the scipy engine would, holding
    no more than a block of it beyond the value itself."""
    prepared = prepare_netcdf3(value)
    with path.open("wb") as out:
        prepared.write(out)


def prepare_netcdf3(value: Any) -> NetCDF3:
    """Encode an xarray DataArray or Dataset as the scipy engine would (see
    :class:`NetCDF3`). Data still on disk that encodes to itself is read only when it is
    written; other lazy data is loaded by xarray's encoding."""
    import xarray as xr
    from xarray import conventions
    from xarray.backends.api import DATAARRAY_NAME, DATAARRAY_VARIABLE

    if isinstance(value, xr.DataArray):  # named as DataArray.to_netcdf names it
        if value.name is None:
            dataset = value.to_dataset(name=DATAARRAY_VARIABLE)
        elif value.name in value.coords or value.name in value.dims:
            dataset = value.to_dataset(name=DATAARRAY_VARIABLE)
            dataset.attrs[DATAARRAY_NAME] = value.name
        else:
            dataset = value.to_dataset()
    else:
        dataset = value
    if dataset.encoding.get("unlimited_dims"):
        raise NotImplementedError("unlimited dimensions")
    for name in dataset.variables:
        if not isinstance(name, str):
            raise ValueError(f"variable name {name!r} is not a string")
    original = {str(k): v.dtype for k, v in dataset.variables.items()}
    store = _store_class()()
    variables, attributes = conventions.encode_dataset_coordinates(dataset)
    # a variable still on disk whose encoding leaves its values as they are goes through
    # the encoder as a placeholder of no memory, and is read a block at a time to write it
    streams = {name: var for name, var in variables.items() if _streamable(var)}
    for name, var in streams.items():
        variables[name] = var.copy(
            deep=False, data=np.broadcast_to(np.zeros((), var.dtype), var.shape)
        )
    store.store(variables, attributes)
    for name, var in streams.items():
        dims, _, target = store.variables[name]
        if dims != var.dims or np.asarray(target.data).dtype != var.dtype:
            raise NotImplementedError(f"variable {name!r} changes in encoding")
    arrays = {name: np.asarray(target.data) for name, (_, _, target) in store.variables.items()}
    for name, array in arrays.items():
        if (array.dtype.char, array.dtype.itemsize) not in _TYPES:
            raise ValueError(f"variable {name!r} has dtype {array.dtype}, not one of NetCDF3")
    exact = set(arrays) == set(original) and all(
        _decodes_to_itself(original[name], arrays[name].dtype, store.variables[name][1])
        for name in arrays
    )
    head, parts = _layout(store.dimensions, store.attributes, store.variables, arrays, streams)
    size = len(head) + sum(
        arrays[n].size * arrays[n].dtype.itemsize + len(pad) for n, _, _, pad in parts
    )
    kind = "DataArray" if isinstance(value, xr.DataArray) else "Dataset"
    return NetCDF3(head, parts, size, kind, exact)


def _decodes_to_itself(dtype: np.dtype[Any], encoded: np.dtype[Any], attrs: dict[str, Any]) -> bool:
    """Whether xarray reads a variable of ``dtype`` back with that dtype."""
    if dtype != encoded or dtype.kind not in "fi":
        return False
    if any(k in attrs for k in ("scale_factor", "add_offset", "missing_value", "_Unsigned")):
        return False
    if any(k in attrs for k in ("calendar", "dtype")) or "since" in str(attrs.get("units", "")):
        return False
    return dtype.kind == "f" or "_FillValue" not in attrs


def _streamable(var: Any) -> bool:
    """Whether ``var`` is not in memory and encodes to itself: a NetCDF3 number type, and
    no encoding that changes values (scale, offset, another dtype, a numeric fill value
    replacing NaN)."""
    dtype = var.dtype
    if getattr(var, "_in_memory", True) or dtype.kind not in "fi":
        return False
    if (dtype.char, dtype.itemsize) not in _TYPES:
        return False
    encoding = var.encoding
    if any(k in encoding for k in ("scale_factor", "add_offset", "missing_value", "units")):
        return False
    if np.dtype(encoding.get("dtype", dtype)) != dtype:
        return False
    fill = encoding.get("_FillValue")
    return dtype.kind == "i" or fill is None or bool(np.isnan(fill))


def _layout(
    dimensions: dict[str, int],
    attributes: dict[str, Any],
    variables: dict[str, tuple[Any, dict[str, Any], _Target]],
    arrays: dict[str, Any],
    streams: dict[str, Any],
) -> tuple[bytes, list[tuple[str, Any, int, bytes]]]:
    """The header, and each variable's data, type code and padding in file order."""
    order = list(dimensions)
    # scipy's order: by shape, largest first (stable among equal shapes)
    names = sorted(arrays, key=lambda n: arrays[n].shape, reverse=True)
    metas = []
    parts = []
    for name in names:
        dims, attrs, _ = variables[name]
        array = arrays[name]
        nc_type, dtype = _TYPES[array.dtype.char, array.dtype.itemsize]
        count = array.size * array.dtype.itemsize
        vsize = count + -count % 4
        meta = _name(name) + _I32.pack(len(dims))
        meta += b"".join(_I32.pack(order.index(d)) for d in dims)
        meta += _attr_list(attrs) + _I32.pack(nc_type) + _U32.pack(min(vsize, 2**32 - 1))
        metas.append((meta, vsize))
        pad = b""
        if vsize > count:  # padded with the fill value, as scipy pads
            fill = _FILLS[nc_type]
            if "_FillValue" in attrs:
                given = np.array(attrs["_FillValue"], dtype=dtype).tobytes()
                fill = given if len(given) == array.dtype.itemsize else fill
            pad = fill * ((vsize - count) // len(fill))
        parts.append((name, streams.get(name, array), nc_type, pad))
    head = b"CDF\x02" + _I32.pack(0)
    if dimensions:
        head += _NC_DIMENSION + _I32.pack(len(dimensions))
        head += b"".join(_name(d) + _I32.pack(n) for d, n in dimensions.items())
    else:
        head += _ABSENT
    head += _attr_list(attributes)
    head += _NC_VARIABLE + _I32.pack(len(metas)) if metas else _ABSENT
    begin = len(head) + sum(len(meta) + 8 for meta, _ in metas)
    for meta, vsize in metas:
        head += meta + _U64.pack(begin)
        begin += vsize
    return head, parts


def _blocks(shape: tuple[int, ...], itemsize: int) -> Iterator[tuple[Any, ...]]:
    """Indexes that cover an array of ``shape`` in C order, each up to BLOCK_BYTES (or
    one element row along the last axis)."""

    def cover(prefix: tuple[int, ...]) -> Iterator[tuple[Any, ...]]:
        axis = len(prefix)
        rest = shape[axis:]
        if not rest or int(np.prod(rest)) * itemsize <= BLOCK_BYTES:
            yield prefix
            return
        row = int(np.prod(rest[1:])) * itemsize
        if row <= BLOCK_BYTES or axis == len(shape) - 1:
            step = max(1, BLOCK_BYTES // max(row, 1))
            for start in range(0, shape[axis], step):
                yield (*prefix, slice(start, start + step))
            return
        for i in range(shape[axis]):
            yield from cover((*prefix, i))

    yield from cover(())


def _name(name: str) -> bytes:
    data = name.encode()
    return _I32.pack(len(data)) + data + bytes(-len(data) % 4)


def _attr_list(attrs: dict[str, Any]) -> bytes:
    if not attrs:
        return _ABSENT
    out = _NC_ATTRIBUTE + _I32.pack(len(attrs))
    for key, value in attrs.items():
        out += _name(key) + _attr_value(value)
    return out


def _attr_value(value: Any) -> bytes:
    """``nc_type ‖ nelems ‖ values`` padded, typed as scipy types them."""
    if hasattr(value, "dtype"):
        nc_type, dtype = _TYPES[value.dtype.char, value.dtype.itemsize]
    else:
        sample = value
        if not isinstance(value, str | bytes):
            try:
                sample = value[0]
            except TypeError:
                sample = value
        nc_type = _NC_CHAR
        for kind, code in ((int, _NC_INT), (float, _NC_FLOAT), (str, _NC_CHAR)):
            if isinstance(sample, kind):
                nc_type = code
                break
        dtype = {_NC_INT: ">i4", _NC_FLOAT: ">f4", _NC_CHAR: "S1"}[nc_type]
    array = np.asarray(value, dtype="S" if dtype == "S1" else dtype)
    count = array.itemsize if array.dtype.char == "S" else array.size
    data = array.tobytes()
    return _I32.pack(nc_type) + _I32.pack(count) + data + bytes(-len(data) % 4)
