"""Slices of kept results: the node opens a kept array result for one request of its owner
and sends part of it (docs/results.md, "Slices without the whole").

A kept result is sealed for its caller. For a ``slice`` or ``describe`` catalog message
the owner sends the result's content key wrapped for this node's key (``grant``,
:class:`hub.results_wire.SliceArgs`). The node opens the grant (it must have been made by
the owner's registered key), decrypts the kept result into its spool folder, opens it
lazily (a NetCDF file reads only what is selected), selects, and seals the part for the
owner with a fresh content key: one reply frame when it is small, else announced in the
reply and sent as a bulk transfer. It logs ``result.sliced``.

The node keeps nothing: the key lives in this request's local variables, the grant is not
logged (the event names only a hash of the selection), and the plaintext file is removed
before the answer leaves. A later slice needs a new grant.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from pydantic import ValidationError as PydanticValidationError

from hub import codec
from hub.bulk import bulk_key, chunk_size_for, describe, is_xarray, map_file, open_netcdf
from hub.bulk import seal_netcdf as seal_netcdf_value
from hub.canonical import b64d, b64e
from hub.crypto import (
    blake2b_256,
    new_content_key,
    open_secret,
    seal_secret,
    unwrap_key,
    wrap_key,
)
from hub.envelopes import Bulk, StoredResult
from hub.errors import (
    CanonicalError,
    ChunkError,
    DecryptionError,
    IntegrityError,
    OversizeError,
    SelectionError,
    UnauthorizedError,
    ValidationError,
)
from hub.events import ResultSliced
from hub.records import KeyRecord, one_line
from hub.results_wire import CatalogHeader, IndexPart, SliceArgs
from hub.transfer import HEADER_BYTES, Header, new_transfer_id, open_stream, seal_stream
from hub.transfer.sealing import BodyDigest, iter_frames

if TYPE_CHECKING:
    from node.control import Control
    from node.pipeline import Pipeline

__all__ = ["Slicer", "layout_of", "select"]

log = structlog.get_logger(__name__)


class Slicer:
    """Answers ``slice`` and ``describe`` messages for one node's pipeline."""

    def __init__(self, pipeline: Pipeline, control: Control) -> None:
        self.p = pipeline
        self.control = control

    async def answer(
        self, q: CatalogHeader, record: KeyRecord, state: dict[str, Any], name: str
    ) -> bytes:
        """The part ``q`` asks for of the result kept under ``name``, as a result frame
        sealed for the asker (the owner: the catalog checked that)."""
        rid = str(q.id)
        try:
            args = SliceArgs.model_validate(q.args)
        except PydanticValidationError as exc:
            raise ValidationError(f"slice arguments: {one_line(exc)}") from exc
        if q.op == "describe" and (args.isel or args.variables):
            raise ValidationError("a describe message selects nothing")
        key = _open_grant(args.grant, record, rid, self.p.key.box_secret)
        staged: list[Path] = []
        try:
            value = await self._open(rid, name, state, key, staged)
            del key  # from here on only the plaintext file, removed below
            try:
                if q.op == "describe":
                    part: Any = await asyncio.to_thread(layout_of, value, rid)
                else:
                    part = await asyncio.to_thread(select, value, rid, args.isel, args.variables)
                return await self._send(q, record, part, args)
            finally:
                if is_xarray(value):
                    value.close()
        finally:
            for path in staged:
                await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _open(
        self, rid: str, name: str, state: dict[str, Any], key: bytes, staged: list[Path]
    ) -> Any:
        """The kept result opened with ``key``: decoded, or a NetCDF file opened lazily."""
        p = self.p
        body: bytes | Path
        head: StoredResult
        if p.bulk is not None:
            head, body = await p.bulk.load_stored(name, rid)
        else:
            head, body = await p.results.load(name)
        logged = str(state.get("result_hash"))
        if isinstance(body, bytes):
            if blake2b_256(body).hex() != logged:
                raise IntegrityError(f"the stored result of {rid} is not the one the log recorded")
            try:
                plain = open_secret(key, body)
            except DecryptionError as exc:
                raise _not_opened(rid) from exc
            return await asyncio.to_thread(codec.decode, plain)
        staged.append(body)
        assert p.bulk is not None and head.bulk is not None
        if head.bulk.hash != logged:
            raise IntegrityError(f"the stored result of {rid} is not the one the log recorded")
        plain_path = p.bulk.spool / f"{rid}.slice-{secrets.token_hex(4)}.plain"
        staged.append(plain_path)

        def decrypt() -> None:
            if _sealed_hash(body) != logged:  # checked without the key: tampered, not refused
                raise IntegrityError(f"the stored result of {rid} does not match its logged hash")
            with body.open("rb") as source, plain_path.open("wb") as sink:
                open_stream(source, sink, bulk_key(key))

        try:
            await asyncio.to_thread(decrypt)
        except DecryptionError as exc:
            raise _not_opened(rid) from exc
        if head.bulk.format == "netcdf":
            return await asyncio.to_thread(open_netcdf, plain_path, kind=head.bulk.xarray)
        return await asyncio.to_thread(codec.decode, map_file(plain_path))

    async def _send(
        self,
        q: CatalogHeader,
        record: KeyRecord,
        part: Any,
        args: SliceArgs,
    ) -> bytes:
        """Seal ``part`` for the asker with a fresh key, log ``result.sliced`` and frame
        the answer (the part in the frame, or announced and sent as a bulk transfer)."""
        p, rid = self.p, str(q.id)
        fresh = new_content_key()
        wraps = {
            q.kid: b64e(wrap_key(p.key.box_secret, p.key.box_public, record.box_key_bytes(), fresh))
        }
        threshold = p.bulk.threshold if p.bulk is not None else p.calls.max_payload // 2
        bulk: Bulk | None = None
        body = b""
        data: bytes | None = None
        if q.op == "describe" or int(getattr(part, "nbytes", 0)) <= threshold:
            data = await asyncio.to_thread(_encode, part)
        if data is not None and len(data) <= threshold:
            body = seal_secret(fresh, data)
            size, sent = len(data), blake2b_256(body).hex()
        elif p.bulk is None:
            raise OversizeError(
                f"the slice of {rid} is too large for one answer and this node sends no bulk",
                hint="select less",
            )
        else:
            sealed = p.bulk.spool / f"{rid}.slice-{secrets.token_hex(4)}.sealed"
            chunk = chunk_size_for(int(p.bulk._nc().max_payload))
            bulk = await asyncio.to_thread(_seal_bulk, part, data, sealed, bulk_key(fresh), chunk)
            size, sent = bulk.size, bulk.hash
        del fresh
        event = ResultSliced(
            request_id=rid,
            by=q.caller,
            part="layout" if q.op == "describe" else "slice",
            selection_hash=args.selection_hash(),
            size=size,
            sent_hash=sent,
        )
        try:
            stored = await self.control.append_completed(rid, event)
        except BaseException:
            if bulk is not None:
                await asyncio.to_thread(sealed.unlink, missing_ok=True)
            raise
        log.info("result.sliced", request_id=rid, part=event.part, bytes=size)
        if bulk is not None and p.bulk is not None:
            bulk = bulk.model_copy(update={"route": secrets.token_hex(16)})
            p.bulk.serve(q.caller, bulk, sealed, timeout=max(60.0, p.calls.ack_wait))
        return p.replies.result_frame(
            rid,
            result_hash=sent,
            wraps=wraps,
            ciphertext=body,
            kept_as=None,
            log_seq=stored[-1].seq,
            bulk=bulk,
        )


def _open_grant(grant: str, record: KeyRecord, rid: str, box_secret: bytes) -> bytes:
    """The content key the owner granted this node for one request: wrapped by the owner's
    registered key (UnauthorizedError otherwise)."""
    wrapped = b64d(grant)
    if wrapped[:32] != record.box_key_bytes():
        raise UnauthorizedError(f"the key of {rid} was not granted by key {record.kid}")
    try:
        return unwrap_key(box_secret, wrapped)
    except DecryptionError as exc:
        raise UnauthorizedError(
            f"the key granted for {rid} does not open with this node's key"
        ) from exc


def _sealed_hash(path: Path) -> str:
    """The payload hash of a sealed form (BLAKE2b-256 of its frames), read without its key."""
    with path.open("rb") as source:
        try:
            header = Header.from_bytes(source.read(HEADER_BYTES))
            digest = BodyDigest()
            for _, sealed in iter_frames(source, header):
                digest.add(sealed)
        except (ChunkError, CanonicalError, ValueError):
            return ""
    return digest.digest().hex()


def _not_opened(rid: str) -> UnauthorizedError:
    return UnauthorizedError(f"the key granted does not open the result of {rid}")


def _encode(part: Any) -> bytes:
    if is_xarray(part):
        part = part.load()
    return codec.encode(part)


def _seal_bulk(part: Any, data: bytes | None, sealed: Path, key: bytes, chunk: int) -> Bulk:
    """Seal a large slice into ``sealed``: as NetCDF where that is exact, else its codec
    encoding."""
    tid = new_transfer_id()
    if data is None:
        part = part.load()
        direct = seal_netcdf_value(
            part, sealed, key, transfer_id=tid, chunk_size=chunk, compress=False
        )
        if direct is not None:
            info, kind = direct
            return describe(info, format="netcdf", xarray=kind)
        data = codec.encode(part)
    with sealed.open("wb") as sink:
        info = seal_stream(io.BytesIO(data), sink, key, transfer_id=tid, chunk_size=chunk)
    return describe(info, format="codec")


# -- the selection ---------------------------------------------------------------------------


def _xarray_of(value: Any, rid: str) -> Any:
    if not is_xarray(value):
        raise SelectionError(
            f"the result of {rid} is {_kind(value)}, not an xarray value: only arrays are sliced",
            hint="get it whole: fedhub result get ID --site S",
        )
    return value


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "a numpy array (its dimensions have no names)"
    name = type(value).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def select(
    value: Any, rid: str, isel: dict[str, IndexPart], variables: tuple[str, ...] | None
) -> Any:
    """``value`` with only ``variables`` (all when None) and the positions ``isel`` names;
    SelectionError for a name or position that is not there."""
    import xarray as xr

    value = _xarray_of(value, rid)
    if variables is not None:
        if isinstance(value, xr.DataArray):
            if tuple(variables) != (value.name,):
                raise SelectionError(
                    f"the result of {rid} is one DataArray ({value.name!r}): "
                    f"there is no variable {', '.join(repr(v) for v in variables)} to choose",
                )
        else:
            unknown = [v for v in variables if v not in value.variables]
            if unknown:
                raise SelectionError(
                    f"no variable {', '.join(repr(v) for v in unknown)} in the result of {rid}; "
                    f"it has {', '.join(str(v) for v in value.data_vars) or 'none'}"
                )
            value = value[list(variables)]
    chosen: dict[str, int | slice] = {}
    for dim, part in isel.items():
        if dim not in value.dims:
            have = ", ".join(f"{d} ({n})" for d, n in value.sizes.items()) or "none"
            raise SelectionError(f"no dimension {dim!r} in the result of {rid}; it has {have}")
        chosen[dim] = _position(dim, int(value.sizes[dim]), part)
    return value.isel(chosen) if chosen else value


def _position(dim: str, n: int, part: IndexPart) -> int | slice:
    """The index or slice ``part`` of a dimension of size ``n``, checked."""
    if isinstance(part, int):
        if not -n <= part < n:
            raise SelectionError(f"index {part} is out of range for {dim} (size {n})")
        return part
    start, stop, step = part
    if step is not None and step < 1:
        raise SelectionError(f"the step of {dim} must be at least 1, not {step}")
    for bound in (start, stop):
        if bound is not None and not -n <= bound <= n:
            raise SelectionError(f"{bound} is out of range for {dim} (size {n})")
    chosen = slice(start, stop, step)
    if not range(n)[chosen]:
        raise SelectionError(f"{_text(part)} selects nothing of {dim} (size {n})")
    return chosen


def _text(part: tuple[int | None, int | None, int | None]) -> str:
    start, stop, step = ("" if v is None else str(v) for v in part)
    return f"{start}:{stop}" + (f":{step}" if step else "")


def layout_of(value: Any, rid: str) -> dict[str, Any]:
    """What a lazy copy needs before it reads anything: the kind, name, attributes and
    coordinates of the result, and each data variable's dimensions, shape, dtype and
    attributes (the coordinates' values are included; the data variables' are not)."""
    import xarray as xr

    value = _xarray_of(value, rid)
    if isinstance(value, xr.DataArray):
        variables = [(value.name, value.variable)]
        coords = value.coords.to_dataset()
        attrs: dict[Any, Any] = {}
    else:
        variables = [(name, value[name].variable) for name in value.data_vars]
        coords = value.coords.to_dataset()
        attrs = dict(value.attrs)
    return {
        "kind": "DataArray" if isinstance(value, xr.DataArray) else "Dataset",
        "attrs": attrs,
        "coords": coords.load(),
        "variables": [
            [
                name,
                {
                    "dims": list(map(str, var.dims)),
                    "shape": list(var.shape),
                    "dtype": var.dtype.str,
                    "attrs": dict(var.attrs),
                },
            ]
            for name, var in variables
        ],
    }
