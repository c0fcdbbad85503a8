"""The node's side of references (docs/results.md, "References"): fetch a kept result
that a call takes by reference straight from the site that keeps it.

For each :class:`hub.envelopes.ResultRef` in a call's signed header the node sends a
signed catalog ``fetch`` with its own key (and its site-signed key record, since the
storing site knows no other site's nodes) to ``fh.status.<site>``; the storing node
answers only if the result's owner shared it with this node. The content key must have
been wrapped by the caller's registered key, and the ciphertext must hash to the hash the
call names (which the storing site logged); only then is it opened and decoded.
"""

from __future__ import annotations

import secrets
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient

from hub import codec
from hub.answers import ask_service
from hub.canonical import b64d, b64e
from hub.clock import now
from hub.crypto import blake2b_256, open_content_key, open_secret
from hub.envelopes import REPLY_MAGIC, RequestHeader, ResultRef, unpack_reply
from hub.errors import (
    CanonicalError,
    DecryptionError,
    IntegrityError,
    UnauthorizedError,
    ValidationError,
)
from hub.records import KeyRecord, SignedRecord
from hub.results_wire import CatalogHeader, pack_catalog
from hub.subjects import status_subject

__all__ = ["Staging"]

log = structlog.get_logger(__name__)


class Staging:
    """Fetches the referenced arguments of calls, as node ``identity`` with ``key``."""

    def __init__(self, nc: NatsClient, identity: str, key: Any, node_key: SignedRecord) -> None:
        self.nc = nc
        self.identity = identity
        self.key = key
        self.node_key = node_key

    async def arguments(
        self, header: RequestHeader, caller: KeyRecord, timeout: float
    ) -> dict[str, object]:
        """The value of every argument ``header`` passes by reference, by name."""
        return {
            name: await self._fetch(header, ref, caller, timeout)
            for name, ref in (header.refs or {}).items()
        }

    async def _fetch(
        self, header: RequestHeader, ref: ResultRef, caller: KeyRecord, timeout: float
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
        if h.bulk is not None:
            raise ValidationError(f"{where} is a large (bulk) result: not passed by reference yet")
        if blake2b_256(reply.body).hex() != ref.hash:
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
        value = codec.decode(open_secret(key, reply.body))
        log.info("call.reference_fetched", site=ref.site, ref=ref.id, request_id=header.id)
        return value
