"""Result files in the formats people open elsewhere: CSV for tables, Zarr for arrays.

:func:`hub.argfiles.write_result` picks these by suffix (``.csv``, ``.zarr``), next to
NetCDF, NumPy and JSON. Each refuses, in one sentence, a value it cannot hold faithfully
(a 3-D array as CSV, a list as Zarr) rather than writing something that loses data.

What CSV takes (one header row, then one row per record):

* a list of records (dicts with the same kind of keys), a dict of equal-length columns;
* a list of numbers or strings (one column named ``value``);
* a 1-D or 2-D numpy array (columns ``0..n-1`` for 2-D);
* an xarray DataArray or Dataset: its index (coordinates) and values as columns, as
  ``to_dataframe()`` gives them (any number of dimensions, one row per point).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from hub.errors import ConfigError

__all__ = ["write_csv", "write_zarr"]


def _xarray(value: Any) -> bool:
    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(value, xr.DataArray | xr.Dataset)


def _frame(value: Any, where: str) -> Any:
    import pandas as pd

    if _xarray(value):
        if getattr(value, "name", None) is None and hasattr(value, "to_dataset"):
            value = value.rename("value")
        return value.to_dataframe().reset_index()
    if isinstance(value, np.ndarray):
        if value.ndim == 1:
            return pd.DataFrame({"value": value})
        if value.ndim == 2:
            return pd.DataFrame(value)
        raise ConfigError(
            f"{where}: a {value.ndim}-D array is not a table", hint="use .nc, .zarr or .npy"
        )
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise ConfigError(f"{where}: the columns have different lengths {sorted(lengths)}")
        return pd.DataFrame(value)
    if isinstance(value, list | tuple):
        if all(isinstance(v, dict) for v in value):
            return pd.DataFrame(list(value))
        if all(isinstance(v, int | float | str | bool) or v is None for v in value):
            return pd.DataFrame({"value": list(value)})
    raise ConfigError(
        f"{where}: a {type(value).__name__} is not a table",
        hint="CSV takes records, columns, 1-D/2-D arrays and xarray values; use .json",
    )


def write_csv(value: Any, path: Path, where: str) -> None:
    """Write ``value`` as CSV (see the module docstring for what is a table)."""
    frame = _frame(value, where)
    frame.to_csv(path, index=False)


def write_zarr(value: Any, path: Path, where: str) -> None:
    """Write an xarray value as a Zarr store (a directory) at ``path``."""
    if not _xarray(value):
        raise ConfigError(
            f"{where}: a {type(value).__name__} cannot be saved as Zarr",
            hint="Zarr holds xarray values; use .json or .npy",
        )
    try:
        import zarr  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{where}: Zarr is not installed", hint="pip install zarr") from exc
    if path.exists():
        raise ConfigError(f"{where} exists already", hint="choose a new name or remove it")
    ds = value.to_dataset(name=value.name or "value") if hasattr(value, "to_dataset") else value
    # Zarr format 2 with consolidated metadata: what most readers (older xarray, R,
    # Julia, JavaScript) open today
    ds.to_zarr(path, mode="w-", zarr_format=2, consolidated=True)
