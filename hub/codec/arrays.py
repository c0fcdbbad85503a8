"""numpy arrays on the wire: which dtypes travel, and an array to and from its raw buffer.

An array travels as its dtype in wire form (little-endian, e.g. ``<f8``), its shape and one
buffer of its data in C order. :func:`array_buffer` gives the encoder those three;
:func:`array_from_buffer` checks them on the way in and builds the array, a view into the
buffer when it can be one.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from hub.errors import CanonicalError

__all__ = ["array_buffer", "array_from_buffer", "check_dtype", "object_strings"]

_ALLOWED_KINDS = frozenset("biufcmMUS")
_MAX_UNICODE = 0x10FFFF


def check_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` if arrays of it may travel, else CanonicalError saying why not."""
    if dtype.hasobject:
        raise CanonicalError("object-dtype arrays cannot be encoded; use a fixed-width dtype")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in _ALLOWED_KINDS:
        raise CanonicalError(f"arrays of dtype {dtype} cannot be encoded")
    if (dtype.kind == "f" and dtype.itemsize > 8) or (dtype.kind == "c" and dtype.itemsize > 16):
        raise CanonicalError(f"arrays of dtype {dtype} are not portable and cannot be encoded")
    return dtype


def object_strings(values: np.ndarray[Any, Any], what: str) -> np.ndarray[Any, Any]:
    """Turn an object array of only str (or only bytes) into a fixed-width one."""
    items = values.ravel().tolist()
    if all(isinstance(item, str) for item in items):
        return values.astype(str)
    if all(isinstance(item, bytes) for item in items):
        return values.astype(bytes)
    raise CanonicalError(
        f"cannot encode {what}: object-dtype data that is not all str or all bytes"
    )


def array_buffer(array: np.ndarray[Any, Any]) -> tuple[str, list[int], memoryview]:
    """The wire dtype, the shape and the raw data (C order, little-endian) of ``array``."""
    wire = check_dtype(array.dtype).newbyteorder("<")
    contiguous = array.astype(wire, order="C", copy=False)
    return wire.str, list(contiguous.shape), contiguous.reshape(-1).view(np.uint8).data


def array_from_buffer(
    dtype_text: object, shape: list[int], raw: memoryview
) -> np.ndarray[Any, Any]:
    """The array of ``shape`` and wire dtype ``dtype_text`` whose data is ``raw``.

    A view into ``raw`` when it is writeable and aligned, else a copy; always writeable.
    Raises CanonicalError when the dtype is not allowed or not in wire form, the size does
    not match, or bool or unicode data holds impossible values.
    """
    dtype = _wire_dtype(dtype_text)
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
    return check_dtype(dtype)
