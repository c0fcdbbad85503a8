"""Command-line arguments and result files for ``fedhub call``.

``fedhub call SUBJECT key=value key=@PATH`` passes keyword arguments to a remote function:

* ``key=value``: ``value`` is parsed as JSON when it is valid JSON (``n=3``, ``xs=[1,2]``,
  ``flag=true``, ``name='"quoted"'``), otherwise it is the plain string (``name=klaus``);
* ``key=@PATH``: the argument is read from a file, by its suffix: ``.nc``/``.nc4``/
  ``.netcdf`` with xarray (a DataArray when the file holds exactly one data variable,
  else a Dataset; loaded into memory, or, for ``fedhub call``, streamed file to file to
  the node when it is large), ``.npy`` with numpy (no pickles), ``.json`` as
  JSON, anything else as raw bytes;
* ``key=@@text``: the plain string ``@text`` (an escape for values starting with ``@``).

:func:`write_result` writes a call's result to a file, again chosen by suffix. A problem with
an argument or the file it names raises :class:`hub.errors.ArgumentError` (exit 2 in the CLI),
one with a result file :class:`hub.errors.ConfigError`; both name the argument and the file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hub.bulk import NetCDFFile
from hub.errors import ArgumentError, ConfigError
from hub.refs import REF_PREFIX, Ref

__all__ = [
    "NETCDF_SUFFIXES",
    "as_declared",
    "declared_kind",
    "parse_cli_argument",
    "read_argument_file",
    "write_result",
]

#: File suffixes (lower-case) read and written with xarray as NetCDF.
NETCDF_SUFFIXES = frozenset({".nc", ".nc4", ".netcdf"})
# Engines tried in order when writing NetCDF, with the module each one needs.
_NETCDF_ENGINES = (("netcdf4", "netCDF4"), ("h5netcdf", "h5netcdf"), ("scipy", "scipy"))


def parse_cli_argument(text: str, *, stream_files: bool = False) -> tuple[str, object]:
    """Parse one ``key=value``, ``key=@PATH`` or ``key=ref:SITE/REQUEST_ID`` (a kept
    result, by reference: :class:`hub.refs.Ref`) argument into ``(key, value)``.

    With ``stream_files`` a NetCDF file is not read here but passed on as a
    :class:`hub.bulk.NetCDFFile`: the client reads a small one and streams a large one
    file to file (``fedhub call`` does this).
    """
    key, sep, raw = text.partition("=")
    if not sep:
        raise ArgumentError(
            f"argument {text!r} is not of the form key=value or key=@PATH",
            hint="write e.g. n=3, name=klaus or data=@input.nc",
        )
    key = key.strip()
    if not key:
        raise ArgumentError(f"argument {text!r} has an empty key", hint="write key=value")
    if not key.isidentifier():
        raise ArgumentError(
            f"argument {text!r}: key {key!r} is not a valid Python identifier",
            hint="keys are the remote function's parameter names",
        )
    if raw.startswith("@@"):
        return key, raw[1:]
    if raw.startswith(REF_PREFIX):
        return key, Ref.parse(raw)
    if raw.startswith("@"):
        if not raw[1:]:
            raise ArgumentError(f"argument {key!r} names no file after '@'")
        path = Path(raw[1:]).expanduser()
        if stream_files and path.suffix.lower() in NETCDF_SUFFIXES:
            _check_file(path, key)
            _check_netcdf(path, key)
            return key, NetCDFFile(path.absolute())  # read later, maybe elsewhere (the agent)
        return key, read_argument_file(path, key=key)
    try:
        return key, json.loads(raw)
    except ValueError:  # not JSON (json.JSONDecodeError is a ValueError): a plain string
        return key, raw


def read_argument_file(path: Path, *, key: str = "?") -> object:
    """Read a file into a value by its suffix (see the module docstring)."""
    where = f"argument {key!r}: file '{path}'"
    _check_file(path, key)
    suffix = path.suffix.lower()
    try:
        if suffix in NETCDF_SUFFIXES:
            _check_netcdf(path, key)
            return _read_netcdf(path)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        return path.read_bytes()
    except ArgumentError:
        raise
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"{where} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ArgumentError(f"{where} is not UTF-8 text: {exc}") from exc
    except Exception as exc:  # xarray and numpy raise many kinds for unreadable files
        raise ArgumentError(f"{where} cannot be read: {exc}") from exc


#: How NetCDF files begin: classic and 64-bit offset / CDF-5 (NetCDF3), and HDF5 (NetCDF4).
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")


def _check_netcdf(path: Path, key: str) -> None:
    """An ArgumentError unless ``path`` starts like a NetCDF (3 or 4) file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ArgumentError(f"argument {key!r}: cannot read '{path}': {exc.strerror}") from exc
    if not head.startswith(_NETCDF_MAGIC):
        raise ArgumentError(
            f"argument {key!r}: '{path}' is not a NetCDF file",
            hint="a .nc argument must be NetCDF 3 or 4; use another suffix to send raw bytes",
        )


def declared_kind(schema: dict[str, Any]) -> str | None:
    """``"Dataset"`` or ``"DataArray"`` when a parameter's JSON Schema declares that xarray
    type (also inside ``anyOf``, e.g. an optional parameter); else None."""
    declared = schema.get("x-fedhub-type")
    if declared in ("xarray.Dataset", "xarray.DataArray"):
        return str(declared).removeprefix("xarray.")
    for option in schema.get("anyOf") or ():
        if isinstance(option, dict) and (kind := declared_kind(option)) is not None:
            return kind
    return None


def as_declared(kwargs: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """NetCDF file arguments of parameters declared ``xarray.Dataset``, marked to be opened
    as a Dataset, in memory or streamed at any size (a file with one variable would
    otherwise arrive as a DataArray and be refused).

    ``arguments`` is the function's arguments schema (:attr:`FunctionInfo.arguments`).
    """
    props = arguments.get("properties") or {}
    out = dict(kwargs)
    for key, value in kwargs.items():
        if not isinstance(value, NetCDFFile) or not isinstance(props.get(key), dict):
            continue
        if declared_kind(props[key]) == "Dataset":
            out[key] = NetCDFFile(value.path, kind="Dataset")
    return out


def _check_file(path: Path, key: str) -> None:
    """An ArgumentError unless ``path`` is a regular file (naming what is wrong with it)."""
    if path.is_file():
        return
    if not path.exists():
        raise ArgumentError(
            f"argument {key!r}: no file '{path}'",
            hint=f"check the path (relative to {Path.cwd()}); key=@@text passes '@text' as text",
        )
    raise ArgumentError(f"argument {key!r}: '{path}' is not a regular file")


def _read_netcdf(path: Path) -> object:
    import xarray as xr

    with xr.open_dataset(path) as dataset:
        dataset.load()
    if len(dataset.data_vars) == 1:
        (name,) = dataset.data_vars
        return dataset[name]
    return dataset


def write_result(value: object, path: Path) -> None:
    """Write a call's result to ``path``, chosen by suffix.

    ``.nc``/``.nc4``/``.netcdf``: a DataArray or Dataset via ``to_netcdf`` with the first
    available engine (netCDF4, h5netcdf, scipy); ``.npy``: anything numpy can hold without
    pickles; ``.json``: JSON (numpy values, dates and bytes-free trees); any other suffix:
    ``bytes`` as they are, ``str`` as UTF-8.
    """
    where = f"result file '{path}'"
    suffix = path.suffix.lower()
    try:
        if suffix in NETCDF_SUFFIXES:
            _write_netcdf(value, path, where)
        elif suffix == ".npy":
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise ConfigError(f"{where}: a {type(value).__name__} cannot be saved as .npy")
            np.save(path, array, allow_pickle=False)
        elif suffix == ".json":
            text = json.dumps(value, default=_json_default, indent=2, ensure_ascii=False)
            path.write_text(text + "\n", encoding="utf-8")
        elif isinstance(value, bytes | bytearray | memoryview):
            path.write_bytes(value)
        elif isinstance(value, str):
            path.write_text(value, encoding="utf-8")
        else:
            raise ConfigError(
                f"{where}: a {type(value).__name__} cannot be written as raw bytes",
                hint="use a .json, .npy or .nc file name",
            )
    except ConfigError:
        raise
    except Exception as exc:  # OSError, or xarray/numpy/json refusing the value
        raise ConfigError(f"{where} cannot be written: {exc}") from exc


def _write_netcdf(value: object, path: Path, where: str) -> None:
    xr = sys.modules.get("xarray")
    if xr is None or not isinstance(value, xr.DataArray | xr.Dataset):
        raise ConfigError(f"{where}: a {type(value).__name__} cannot be saved as NetCDF")
    for engine, module in _NETCDF_ENGINES:
        if importlib.util.find_spec(module) is not None:
            value.to_netcdf(path, engine=engine)
            return
    raise ConfigError(
        f"{where}: no NetCDF engine is installed", hint="install fedhub[netcdf] (scipy)"
    )


def _json_default(value: Any) -> object:
    """Make the values the codec can return JSON-able, where that is unambiguous."""
    if isinstance(value, np.ndarray | np.generic) and not value.dtype.hasobject:
        if value.dtype.kind in "mM":
            return value.astype(str).tolist()
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON")
