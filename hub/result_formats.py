"""A result in the format people ask for: ``fedhub result get ID --format nc|zarr|csv|json``.

:func:`render` turns a fetched value into NetCDF or Zarr (xarray values, written to a
path), CSV (tables and small arrays: a DataArray or Dataset, a 1-D or 2-D numpy array, a
list of numbers or of equal rows, a mapping of equal-length columns) or JSON (anything
``fedhub call --json`` prints). A value that does not fit the format is refused with a
:class:`~hub.errors.ValidationError` that says which formats fit it instead.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from hub.errors import ConfigError, ValidationError

__all__ = ["FORMATS", "MAX_CSV_CELLS", "fits", "render"]

#: The formats ``--format`` takes.
FORMATS: Final = ("json", "csv", "nc", "zarr")
#: CSV is for tables and small arrays: at most this many values.
MAX_CSV_CELLS: Final = 1_000_000


def _xarray(value: object) -> bool:
    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(value, xr.DataArray | xr.Dataset)


def fits(value: object) -> list[str]:
    """The formats ``value`` can be written in."""
    out = ["json"]
    if _csv_rows(value, check_only=True) is not None:
        out.append("csv")
    if _xarray(value):
        out += ["nc", "zarr"]
    return out


def render(value: object, fmt: str, out: Path | None) -> str | None:
    """Write ``value`` as ``fmt`` to ``out`` (None: return the text, for csv and json).

    ValidationError when the value does not fit the format; ConfigError when the format
    needs a path (nc, zarr) or a package that is not installed (zarr).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"{fmt!r} is no format (use {', '.join(FORMATS)})")
    if fmt == "json":
        from hub.cli_calls import jsonable

        text = json.dumps(value, default=jsonable, indent=2, ensure_ascii=False) + "\n"
        return _text(text, out)
    if fmt == "csv":
        rows = _csv_rows(value)
        if rows is None:
            raise _refused(value, "csv", "CSV holds tables and small arrays")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return _text(buf.getvalue(), out)
    if not _xarray(value):
        raise _refused(value, fmt, "NetCDF and Zarr hold xarray values")
    if out is None:
        raise ConfigError(f"--format {fmt} writes a file: give --out PATH")
    if fmt == "nc":
        value.to_netcdf(out)  # type: ignore[attr-defined]
        return None
    if out.exists():  # never remove what the user has: a typo could name their data
        raise ConfigError(f"{out} exists already", hint="choose a new --out path or remove it")
    if importlib.util.find_spec("zarr") is None:
        raise ConfigError("--format zarr needs the zarr package", hint="pip install zarr")
    # Zarr format 2 with consolidated metadata: what most readers (older xarray, R, Julia,
    # JavaScript) open today; format 3 warns that consolidation is not in its spec
    value.to_zarr(out, zarr_format=2, consolidated=True)  # type: ignore[attr-defined]
    return None


def _text(text: str, out: Path | None) -> str | None:
    if out is None:
        return text
    out.write_text(text)
    return None


def _refused(value: object, fmt: str, why: str) -> ValidationError:
    return ValidationError(
        f"a {type(value).__name__} result cannot be written as {fmt}: {why}",
        hint=f"formats that fit it: {', '.join(fits(value))}",
    )


def _csv_rows(value: object, *, check_only: bool = False) -> list[list[Any]] | None:
    """The CSV rows of ``value`` (a header first where it has names), or None."""
    if _xarray(value):
        sizes = value.sizes  # type: ignore[attr-defined]
        if int(np.prod(list(sizes.values()))) > MAX_CSV_CELLS:
            return None
        if check_only:
            return []
        frame = value.to_dataframe().reset_index()  # type: ignore[attr-defined]
        return [list(frame.columns), *frame.itertuples(index=False, name=None)]
    if isinstance(value, np.ndarray):
        if value.ndim not in (1, 2) or value.size > MAX_CSV_CELLS or value.dtype.hasobject:
            return None
        if check_only:
            return []
        listed: list[Any] = value.tolist()
        return [[v] for v in listed] if value.ndim == 1 else [list(r) for r in listed]
    if isinstance(value, Mapping):
        columns = list(value.values())
        if not columns or not all(_scalars(c) for c in columns):
            return None
        if len({len(c) for c in columns}) != 1 or len(columns) * len(columns[0]) > MAX_CSV_CELLS:
            return None
        return [] if check_only else [list(value), *map(list, zip(*columns, strict=True))]
    if isinstance(value, list | tuple) and value:
        if _scalars(value):
            return [] if check_only else [[v] for v in value]
        if all(isinstance(r, list | tuple) and _scalars(r) for r in value):
            if len({len(r) for r in value}) != 1:
                return None
            return [] if check_only else [list(r) for r in value]
    return None


def _scalars(values: object) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, str | bytes)
        and all(isinstance(v, int | float | str | bool) or v is None for v in values)
    )
