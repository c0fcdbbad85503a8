"""How a call carries payloads too big for one message: the pieces caller and node share.

A call whose arguments (or result) exceed the bulk threshold moves them as a bulk transfer
(:mod:`hub.transfer`): the signed request (or the result reply) names the transfer in a
:class:`hub.envelopes.Bulk` descriptor instead of carrying the ciphertext. The payload is
sealed under a key derived from the call's content key (:func:`bulk_key`), so the key
wrapped for the recipient in the header opens it and nothing else is wrapped.

Two formats: ``codec`` (the codec encoding of all arguments or of the result) and
``netcdf`` (a NetCDF file: one argument passed as :class:`NetCDFFile`, or an xarray
result), which the receiver opens lazily from its spool file
(:func:`open_netcdf`) instead of holding a second copy in memory. docs/protocol.md,
"Calls with bulk payloads".
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import mmap
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.envelopes import Bulk
from hub.errors import ConfigError
from hub.netcdf3 import prepare_netcdf3, write_netcdf3
from hub.transfer import DEFAULT_CHUNK_SIZE, SealedInfo, TransferProgress
from hub.transfer.sealing import Sealer

__all__ = [
    "BULK_KEY_PERSON",
    "Chained",
    "NetCDFFile",
    "SavedTo",
    "TransferCallback",
    "bulk_key",
    "chunk_size_for",
    "describe",
    "is_xarray",
    "map_file",
    "netcdf_engine",
    "open_netcdf",
    "seal_netcdf",
    "write_netcdf",
]

#: Personalisation of the key derivation (BLAKE2b allows 16 bytes).
BULK_KEY_PERSON = b"fedhub/bulk/v1\x00\x00"

#: Progress of a call's transfers: ``("upload" | "download", progress)``.
TransferCallback = Callable[[str, TransferProgress], None]


def bulk_key(content_key: bytes) -> bytes:
    """The key a call's bulk payload is sealed with, derived from its content key.

    A separate key keeps the secretstream chunks apart from the SecretBox messages of the
    same call (progress, error text) that use the content key itself.
    """
    return hashlib.blake2b(b"", key=content_key, person=BULK_KEY_PERSON, digest_size=32).digest()


def chunk_size_for(max_payload: int) -> int:
    """Plaintext bytes per chunk on a connection carrying ``max_payload`` per message:
    the default (1 MiB), or half a message where messages are smaller."""
    return (
        max(1024, min(DEFAULT_CHUNK_SIZE, max_payload // 2)) if max_payload else DEFAULT_CHUNK_SIZE
    )


def describe(
    info: SealedInfo,
    *,
    format: str = "codec",
    arg: str | None = None,
    xarray: str | None = None,
) -> Bulk:
    """The descriptor of a sealed payload."""
    h = info.header
    return Bulk.model_validate(
        {
            "transfer": h.transfer,
            "size": h.total_size,
            "hash": h.payload_hash.hex(),
            "chunk_size": h.chunk_size,
            "compressed": h.compressed,
            "format": format,
            "arg": arg,
            "xarray": xarray,
        }
    )


@dataclass(frozen=True, slots=True)
class NetCDFFile:
    """An argument that is a NetCDF file, sent as its bytes (streamed when it is large).

    The node opens it with xarray from its spool file (lazily): the function receives
    ``kind`` (``"Dataset"`` or ``"DataArray"``) when given, else a DataArray when the file
    holds exactly one data variable and a Dataset otherwise.
    """

    path: Path
    kind: str | None = None

    @property
    def size(self) -> int:
        """Bytes of the file."""
        return self.path.stat().st_size


@dataclass(frozen=True, slots=True)
class SavedTo:
    """A result the client wrote straight to a file (``result_path``) instead of memory."""

    path: Path


def map_file(path: Path) -> memoryview:
    """The bytes of ``path`` mapped copy-on-write: decoding from it (the codec's arrays
    are views where aligned) costs no second copy in memory, and the file may be removed
    while the mapping lives."""
    with path.open("rb") as source:
        if os.fstat(source.fileno()).st_size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_COPY))


def open_netcdf(path: Path, *, kind: str | None = None, load: bool = False) -> Any:
    """Open a NetCDF file with xarray, lazily unless ``load``.

    ``kind`` ``DataArray``/``Dataset`` says what to return; None: a DataArray when the
    file holds exactly one data variable, else the Dataset.
    """
    import xarray as xr

    dataset = xr.open_dataset(path, engine=netcdf_engine(), cache=False)
    if load:
        dataset.load()
        dataset.close()
    if kind == "Dataset" or (kind is None and len(dataset.data_vars) != 1):
        return dataset
    (name,) = dataset.data_vars
    array = dataset[name]
    if name == "__xarray_dataarray_variable__":  # named as DataArray.to_netcdf names it
        array = array.rename(dataset.attrs.get("__xarray_dataarray_name__"))
    return array


def netcdf_engine() -> str:
    """The first NetCDF engine installed (netCDF4, h5netcdf, scipy)."""
    for engine, module in (("netcdf4", "netCDF4"), ("h5netcdf", "h5netcdf"), ("scipy", "scipy")):
        if importlib.util.find_spec(module) is not None:
            return engine
    raise ConfigError("no NetCDF engine is installed", hint="install fedhub[netcdf] (scipy)")


def write_netcdf(value: Any, path: Path) -> str:
    """Write an xarray value to ``path``; return ``DataArray`` or ``Dataset``.

    With the scipy engine (NetCDF3) the file is written by :func:`hub.netcdf3.write_netcdf3`,
    byte for byte what xarray writes, in bounded memory beyond the value itself.

    Raises ValueError when the file would not give the value back as it is (an engine
    may narrow a dtype it cannot store, e.g. NetCDF3 and int64): then send it otherwise.
    """
    import xarray as xr

    kind = "DataArray" if isinstance(value, xr.DataArray) else "Dataset"
    engine = netcdf_engine()
    done = False
    if engine == "scipy":  # its own writer holds every variable about three times over
        try:
            write_netcdf3(value, path)
            done = True
        except Exception:  # a value it does not handle: xarray writes it, or says why not
            path.unlink(missing_ok=True)
    if not done:
        value.to_netcdf(path, engine=engine)
    if kind == "DataArray":
        name = value.name if value.name is not None else "__xarray_dataarray_variable__"
        value = value.to_dataset(name=name)
    wanted = {str(k): str(v.dtype) for k, v in value.variables.items()}
    with xr.open_dataset(path, engine=netcdf_engine()) as written:
        got = {str(k): str(v.dtype) for k, v in written.variables.items()}
    if got != wanted:
        changed = sorted(k for k in wanted if got.get(k) != wanted[k])
        raise ValueError(f"NetCDF would not keep the dtypes of {', '.join(changed)}")
    return kind


def seal_netcdf(
    value: Any,
    sealed: Path,
    key: bytes,
    *,
    transfer_id: bytes,
    chunk_size: int,
    compress: bool,
) -> tuple[SealedInfo, str] | None:
    """Seal an xarray value as a NetCDF file straight into ``sealed``, with no plaintext
    file in between; its sealed form and kind (``DataArray``/``Dataset``). None when that
    cannot be done exactly (another engine than scipy, a value NetCDF3 would read back
    with other dtypes, one the writer does not handle): then :func:`write_netcdf` it."""
    if netcdf_engine() != "scipy":
        return None
    try:
        prepared = prepare_netcdf3(value)
    except Exception:  # a value the writer does not handle: write_netcdf decides
        return None
    if not prepared.exact:
        return None
    with sealed.open("wb") as sink:
        sealer = Sealer(
            sink,
            key,
            total_size=prepared.size,
            transfer_id=transfer_id,
            chunk_size=chunk_size,
            compress=compress,
        )
        try:
            prepared.write(sealer)
            return sealer.close(), prepared.kind
        except BaseException:
            sealer.abort()
            raise


def is_xarray(value: object) -> bool:
    """Whether ``value`` is an xarray DataArray or Dataset (without importing xarray)."""
    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(value, xr.DataArray | xr.Dataset)


class Chained(io.RawIOBase):
    """Reads ``head`` and then everything ``tail`` holds (a stored result's layout)."""

    def __init__(self, head: bytes, tail: io.BufferedIOBase) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n], self._head = self._head[:n], self._head[n:]
            return n
        return self._tail.readinto(view)  # straight into the reader's buffer: no copy
