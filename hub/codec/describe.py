"""One-line descriptions of values for logs and the CLI: type, dtype, shape, size, no values."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["describe"]


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
