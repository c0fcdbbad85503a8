"""The node's side of references (docs/results.md, "References"): fetch a kept result
that a call takes by reference straight from the site that keeps it, and decide at the
storing site which node may fetch it for which call.

For each :class:`hub.envelopes.ResultRef` in a call's signed header the node sends a
signed catalog ``fetch`` with its own key (and its site-signed key record, since the
storing site knows no other site's nodes) to ``fh.status.<site>``; the storing node
answers only if the result's owner shared it with this node for this call
(:func:`shared_for_call`). The content key must have been wrapped by the caller's
registered key, and the ciphertext must hash to the hash the call names (which the
storing site logged); only then is it opened and decoded.

A large (bulk) result is announced in the answer and follows as a bulk transfer from the
storing node to this one (:func:`hub.transfer.site_route`: ``fh.bulk`` subjects of the two
sites, which the accounts export to each other). It is received into this node's spool
folder, its chunks opened as they arrive and the whole checked against the logged hash
before it is used; a NetCDF result reaches the function opened lazily from that file, a
codec-encoded one is decoded from a mapping of it. The file goes when the call ends.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient

from hub import codec
from hub.answers import ask_service
from hub.bulk import map_file, open_netcdf
from hub.canonical import b64d, b64e
from hub.clock import now
from hub.crypto import blake2b_256, open_content_key, open_secret
from hub.envelopes import REPLY_MAGIC, ReplyHeader, RequestHeader, ResultRef, unpack_reply
from hub.errors import (
    CanonicalError,
    ChunkError,
    DecryptionError,
    IntegrityError,
    TransferError,
    UnauthorizedError,
    ValidationError,
)
from hub.records import KeyRecord, SignedRecord
from hub.results_wire import CatalogHeader, pack_catalog
from hub.subjects import status_subject
from hub.transfer import site_route
from node.bulk import BulkLink
from node.eventlog import StoredEvent
from node.runner import CancelSignal

__all__ = ["Staging", "shared_for_call"]

log = structlog.get_logger(__name__)


class Staging:
    """Fetches the referenced arguments of calls, as node ``identity`` with ``key``
    (large ones through ``bulk``, the node's spool folder and transfer settings)."""

    def __init__(
        self,
        nc: NatsClient,
        identity: str,
        key: Any,
        node_key: SignedRecord,
        bulk: BulkLink | None = None,
    ) -> None:
        self.nc = nc
        self.identity = identity
        self.key = key
        self.node_key = node_key
        self.bulk = bulk

    async def arguments(
        self,
        header: RequestHeader,
        caller: KeyRecord,
        timeout: float,
        cancel: CancelSignal | None = None,
    ) -> dict[str, object]:
        """The value of every argument ``header`` passes by reference, by name."""
        return {
            name: await self._fetch(header, ref, caller, timeout, cancel)
            for name, ref in (header.refs or {}).items()
        }

    async def _fetch(
        self,
        header: RequestHeader,
        ref: ResultRef,
        caller: KeyRecord,
        timeout: float,
        cancel: CancelSignal | None,
    ) -> object:
        q = CatalogHeader(
            op="fetch",
            id=ref.id,
            caller=self.identity,
            kid=self.key.kid,
            time=now(),
            nonce=b64e(secrets.token_bytes(12)),
            args={"node_key": self.node_key.model_dump(mode="json"), "for_call": header.id},
        )
        where = f"the result of {ref.id} at {ref.site}"
        data = await ask_service(
            self.nc,
            status_subject(ref.site),
            pack_catalog(q, self.key.signing_key),
            timeout=timeout,
            unreachable=f"site {ref.site} is not reachable for {where}",
            silent=f"site {ref.site} did not hand over {where}",
        )
        if data[:4] != REPLY_MAGIC:
            raise CanonicalError(f"site {ref.site} answered the fetch of {ref.id} without a result")
        reply = unpack_reply(data)
        h = reply.header
        if h.kind != "result" or h.id != ref.id or h.result_hash != ref.hash:
            raise IntegrityError(f"site {ref.site} answered with another result than {where}")
        if h.bulk is None and blake2b_256(reply.body).hex() != ref.hash:
            raise IntegrityError(f"{where} does not match the hash its site logged")
        try:  # the caller's own share, not one another caller made with this node
            key = open_content_key(
                {kid: b64d(w) for kid, w in h.wraps.items()},
                self.key.kid,
                self.key.box_secret,
                sender=caller.box_key_bytes(),
            )
        except DecryptionError as exc:
            raise UnauthorizedError(
                f"{where} was not shared with this node by {caller.identity}"
            ) from exc
        if h.bulk is not None:
            value = await self._receive(header.id, ref, h, key, where, timeout, cancel)
        else:
            value = codec.decode(open_secret(key, reply.body))
        log.info("call.reference_fetched", site=ref.site, ref=ref.id, request_id=header.id)
        return value

    async def _receive(
        self,
        rid: str,
        ref: ResultRef,
        h: ReplyHeader,
        key: bytes,
        where: str,
        timeout: float,
        cancel: CancelSignal | None,
    ) -> object:
        """A large result announced in ``h``, received from the storing node into a spool
        file of call ``rid`` and checked whole against the hash ``ref`` names."""
        bulk, link = h.bulk, self.bulk
        assert bulk is not None
        if link is None:
            raise ValidationError(f"{where} is a large (bulk) result; this node takes none")
        if bulk.hash != ref.hash:
            raise IntegrityError(f"site {ref.site} announced another payload than {where}")
        link.check_size(bulk.size, f"{where} is")
        route = site_route(ref.site, link.site, bulk.token)
        dest = link.spool_file(rid, f"ref-{secrets.token_hex(4)}")
        try:
            got = await link.receive(
                route, dest, key, ref.hash, bulk.size, cancel=cancel, timeout=timeout
            )
        except ChunkError as exc:
            raise IntegrityError(f"{where} does not match the hash its site logged: {exc}") from exc
        except TransferError as exc:
            if exc.code == "refused":  # the sealed header names another payload or size
                raise IntegrityError(f"{where} is not the payload its site logged") from exc
            raise
        log.info("call.reference_received", bytes=bulk.size, seconds=round(got.stats.seconds, 3))
        if bulk.format == "netcdf":
            try:
                return await asyncio.to_thread(open_netcdf, dest, kind=bulk.xarray)
            except Exception as exc:  # xarray raises many kinds for a file it cannot read
                raise ValidationError(f"{where} is no readable NetCDF: {exc}") from exc
        try:
            data = await asyncio.to_thread(map_file, dest)
            dest.unlink(missing_ok=True)  # the mapping keeps the bytes until it is dropped
            return codec.decode(data)
        except CanonicalError as exc:
            raise ValidationError(f"{where} cannot be decoded: {exc.message}") from exc


def shared_for_call(events: Iterable[StoredEvent], node: str, call: str | None) -> bool:
    """Whether the owner's shares of a result with ``node`` (its events, in log order)
    cover the call ``call``: a ``result.shared`` naming the node and that call, with no
    ``result.unshared`` of the node after it. An unshare ends every call's share with the
    node, and sharing again for a new call does not bring back the old ones."""
    if call is None:
        return False
    live: set[str] = set()
    for e in events:
        if e.type not in ("result.shared", "result.unshared"):
            continue
        data = e.parsed()["data"]
        if data.get("principal") != node:
            continue
        if e.type == "result.unshared":
            live.clear()
        elif data.get("for_call"):
            live.add(str(data["for_call"]))
    return call in live
