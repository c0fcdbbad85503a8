"""The caller's side of slices: part of a kept array result without fetching all of it
(docs/results.md, "Slices without the whole").

``await fed.result_slice(rid, site="hereon", isel={"time": slice(0, 10)},
variables=["t2m"])`` asks the storing node for that part only. The node holds the result
sealed for its owner, so the owner lets it read it for this one request: the client asks
for its own wrap of the result's content key (``wrap``, opened only if the node key it
verified for the module made it), wraps the key for that node (``grant``) and sends a
signed ``slice`` message (:class:`hub.results_wire.SliceArgs`). The node answers with the
part sealed for the owner under a fresh key, in the answer or as a bulk transfer, and
logs ``result.sliced``. Only the owner may do this: it is the owner's decision to let the
node see the plaintext, not a reader's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from hub.canonical import b64e
from hub.crypto import wrap_key
from hub.envelopes import REPLY_MAGIC, unpack_reply
from hub.errors import CanonicalError, ConfigError, IntegrityError, NotFoundError
from hub.records import one_line
from hub.results_client import catalog, own_content_key, result_status
from hub.results_wire import IndexPart, SliceArgs

if TYPE_CHECKING:
    from hub.client import Client

__all__ = ["Grantor", "Isel", "grantor", "parse_isel", "slice_result"]

#: A selection by position, as ``xarray``'s ``isel`` takes it: an index or a slice per
#: dimension.
Isel = Mapping[str, int | slice]

_SPEC = re.compile(r"^(-?\d+)$|^(-?\d*):(-?\d*)(?::(\d*))?$")


def parse_isel(texts: Iterable[str]) -> dict[str, int | slice]:
    """``["time=0:10", "lat=3"]`` (the CLI's ``--isel``) as an :data:`Isel`."""
    out: dict[str, int | slice] = {}
    for text in texts:
        dim, eq, spec = text.partition("=")
        m = _SPEC.match(spec.strip())
        if not eq or not dim.strip() or m is None:
            raise ConfigError(
                f"--isel {text!r} is not DIM=INDEX or DIM=START:STOP[:STEP]",
                hint="for example --isel time=0:10 --isel lat=3",
            )
        if m.group(1) is not None:
            out[dim.strip()] = int(m.group(1))
        else:
            start, stop, step = (int(g) if g else None for g in m.group(2, 3, 4))
            out[dim.strip()] = slice(start, stop, step)
    return out


def _parts(isel: Isel) -> dict[str, IndexPart]:
    out: dict[str, IndexPart] = {}
    for dim, part in isel.items():
        if isinstance(part, slice):
            bounds = (part.start, part.stop, part.step)
            if not all(b is None or isinstance(b, int) for b in bounds):
                raise ConfigError(f"the slice of {dim} must have integer bounds: {part!r}")
            out[str(dim)] = bounds
        elif isinstance(part, int) and not isinstance(part, bool):
            out[str(dim)] = part
        else:
            raise ConfigError(f"isel of {dim} must be an int or a slice, not {part!r}")
    return out


@dataclass
class Grantor:
    """What the owner holds to let a node read one kept result: its content key and the
    key of the node that keeps it (verified from the module's info)."""

    client: Client
    site: str
    request_id: str
    content_key: bytes = field(repr=False)
    node_box_key: bytes = field(repr=False)

    def args(self, isel: Isel | None, variables: Iterable[str] | None) -> dict[str, Any]:
        """The ``slice`` arguments with a fresh grant for this one message."""
        keys = self.client.keys
        grant = wrap_key(keys.box_secret, keys.box_public, self.node_box_key, self.content_key)
        try:
            args = SliceArgs(
                grant=b64e(grant),
                isel=_parts(isel or {}),
                variables=tuple(variables) if variables is not None else None,
            )
        except PydanticValidationError as exc:
            raise ConfigError(f"not a valid selection: {one_line(exc)}") from exc
        return args.model_dump(mode="json", exclude_none=True)

    async def ask(
        self,
        op: str,
        isel: Isel | None = None,
        variables: Iterable[str] | None = None,
        *,
        result_path: Path | None = None,
    ) -> Any:
        """Send one ``slice`` (or ``describe``) message; the part, opened."""
        client, site, rid = self.client, self.site, self.request_id
        timeout = max(client.default_timeout, 60.0)
        data = await catalog(client, op, site, rid, self.args(isel, variables), timeout=timeout)
        if data[:4] != REPLY_MAGIC:
            raise CanonicalError(f"site {site} answered the {op} of {rid} without a result")
        reply = unpack_reply(data)
        h = reply.header
        if h.kind != "result" or h.id != rid or h.result_hash is None:
            raise IntegrityError(f"site {site} answered the {op} of {rid} with another result")
        return await client.open_sealed_reply(
            site,
            reply,
            self.node_box_key,
            what=f"the {op} of {rid}",
            result_path=result_path,
            timeout=timeout,
        )


async def grantor(client: Client, site: str, request_id: str) -> Grantor:
    """What the owner needs to grant slices of a kept result
    (:func:`hub.results_client.own_content_key`)."""
    try:
        own = await own_content_key(client, site, request_id)
    except NotFoundError:
        record = await result_status(client, site, request_id)  # a stranger: NotFoundError
        if record.shared_with_me:
            raise NotFoundError(
                f"request {request_id} is {record.caller}'s: only its owner can let the node "
                "read it for a slice",
                hint=f"get it whole: fedhub result get {request_id} --site {site}",
            ) from None
        raise
    return Grantor(client, site, request_id, own.key, own.node_box_key)


async def slice_result(
    client: Client,
    site: str,
    request_id: str,
    *,
    isel: Isel | None = None,
    variables: Iterable[str] | None = None,
    result_path: Path | None = None,
) -> Any:
    """Part of my kept xarray result: ``variables`` of it (all when None), at the
    positions ``isel`` names (as ``xarray``'s ``isel``). Only that part travels.
    A large part for a NetCDF ``result_path`` is received straight into that file."""
    owner = await grantor(client, site, request_id)
    return await owner.ask("slice", isel, variables, result_path=result_path)
