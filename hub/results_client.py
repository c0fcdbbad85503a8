"""The caller's side of kept results: the requests catalog, result handles and sharing.

Functions taking a :class:`~hub.client.Client` (which delegates to them: ``fed.requests``,
``fed.result``, ``fed.share``, ``fed.unshare``). Every message is a signed catalog message
(:mod:`hub.results_wire`) to a site's node; see docs/results.md.

Sharing never moves the result: the owner asks the node for its own wrapped content key
(opened only if the node key it verified wrapped it), asks for the key records of the
colleague (verified against the colleague's pinned site key, so the node cannot slip in
a key of its own), wraps the content key for each of them and sends the wraps. A
colleague's fetch checks that the wrap it gets was made by the owner's key, vouched for
by the owner's site.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError as PydanticValidationError

from hub.answers import (
    DeletedAnswer,
    KeepAnswer,
    RecipientKeys,
    RequestRecord,
    RequestsAnswer,
    ResultWrap,
    ShareAnswer,
    TagsAnswer,
    ask_service,
    parse_answer,
)
from hub.call_handle import CallHandle
from hub.canonical import b64d, b64e
from hub.clock import format_time, now
from hub.crypto import key_id, open_content_key, wrap_key
from hub.envelopes import REPLY_MAGIC, unpack_reply
from hub.errors import (
    CallTimeoutError,
    CanonicalError,
    ConfigError,
    FederationError,
    IntegrityError,
    NotFoundError,
    SignatureError,
    error_from_code,
)
from hub.lifecycle import RequestState
from hub.query import Query, Tag
from hub.records import KeyRecord, SignedRecord, one_line, open_record
from hub.results_wire import CatalogHeader, ListFilter, pack_catalog
from hub.subjects import parse_address, status_subject

if TYPE_CHECKING:
    from hub.client import Client

__all__ = [
    "OwnKey",
    "RequestList",
    "catalog",
    "delete",
    "fetch_result",
    "keep",
    "list_requests",
    "own_content_key",
    "result_handle",
    "result_status",
    "share",
    "tag",
    "unshare",
]

log = structlog.get_logger(__name__)


#: How long one catalog request waits for the node's answer.
CATALOG_TIMEOUT = 5.0


class RequestList(list[RequestRecord]):
    """The records ``fed.requests()`` found (newest first), and the sites that did not
    answer (``unreachable``: site → why)."""

    def __init__(
        self, records: Iterable[RequestRecord] = (), unreachable: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(records)
        self.unreachable: dict[str, str] = dict(unreachable or {})
        #: Sites whose node had more matches than the limit.
        self.truncated: set[str] = set()


async def catalog(
    client: Client,
    op: str,
    site: str,
    request_id: str | None = None,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = CATALOG_TIMEOUT,
) -> bytes:
    """Send one signed catalog message to ``site``; the answer's body, or its typed error."""
    try:
        header = CatalogHeader(
            op=op,
            id=request_id,
            caller=client.identity,
            kid=client.keys.kid,
            time=now(),
            nonce=b64e(secrets.token_bytes(12)),
            args=dict(args or {}),
        )
    except PydanticValidationError as exc:
        raise ConfigError(f"not a valid {op} request: {one_line(exc)}") from exc
    return await ask_service(
        client.nc,
        status_subject(site),
        pack_catalog(header, client.keys.signing_key),
        timeout=timeout,
        unreachable=f"site {site} is not reachable",
        silent=f"site {site} did not answer the {op} request",
    )


def _time(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return format_time(value)


async def list_requests(
    client: Client,
    sites: Iterable[str] | str | None = None,
    *,
    module: str | None = None,
    function: str | None = None,
    status: RequestState | str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    shared: bool | None = None,
    tag: str | None = None,
    query: Query | str | Mapping[str, Any] | None = None,
    limit: int = 1000,
) -> RequestList:
    """My requests (and those shared with me) at ``sites`` (default: every pinned site),
    newest first. ``status`` is a request state or ``"kept"``; ``since``/``until`` bound
    the time the node received it; ``shared`` True lists only what others shared with me;
    ``tag`` keeps those I tagged so; ``query`` (a :class:`hub.query.Query`, its text or
    its JSON form) keeps those it matches. Every filter is applied by the nodes.
    """
    q = _query(query)
    if tag is not None:
        q = Tag(tag) if q is None else Tag(tag) & q
    if isinstance(sites, str):
        sites = [sites]
    chosen = sorted(set(sites) if sites is not None else set(client.trusted_sites))
    try:
        flt = ListFilter(
            module=module,
            function=function,
            state=str(status) if status is not None else None,
            since=_time(since),
            until=_time(until),
            shared=shared,
            query=q.to_json() if q is not None else None,
            limit=limit,
        )
    except PydanticValidationError as exc:
        raise ConfigError(f"bad requests filter: {one_line(exc)}") from exc
    args = flt.model_dump(mode="json", exclude_none=True)

    async def ask(site: str) -> RequestsAnswer:
        data = await catalog(client, "list", site, args=args)
        return parse_answer(RequestsAnswer, data, f"requests answer from {site}")

    answers = await asyncio.gather(*(ask(s) for s in chosen), return_exceptions=True)
    out = RequestList()
    for site, answer in zip(chosen, answers, strict=True):
        if isinstance(answer, NotFoundError | CallTimeoutError):
            out.unreachable[site] = answer.message
            log.warning("client.site_unanswered", site=site, error=answer.message)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            out += answer.requests
            if answer.truncated:
                out.truncated.add(site)
    out.sort(key=lambda r: r.received_time or "", reverse=True)
    return out


def _query(query: Query | str | Mapping[str, Any] | None) -> Query | None:
    if query is None or isinstance(query, Query):
        return query
    if isinstance(query, str):
        return Query.parse(query)
    return Query.from_json(dict(query))


async def result_status(client: Client, site: str, request_id: str) -> RequestRecord:
    """The catalog record of one of my requests, or one shared with me."""
    data = await catalog(client, "status", site, request_id)
    return parse_answer(RequestRecord, data, f"status answer from {site}")


def _sharer_box_key(client: Client, record: RequestRecord) -> bytes:
    """The owner's X25519 key that wrapped my key of a shared result, checked against the
    owner's pinned site key (SignatureError when it does not verify)."""
    if record.sharer_key is None:
        raise NotFoundError(f"request {record.request_id} is not shared with my key")
    key = _verified_person(client, record.sharer_key)
    if key.identity != record.caller:
        raise SignatureError(f"the sharer's key record is {key.identity}'s, not {record.caller}'s")
    return key.box_key_bytes()


async def fetch_result(
    client: Client,
    site: str,
    request_id: str,
    *,
    result_path: Path | None = None,
    record: RequestRecord | None = None,
) -> Any:
    """The kept result of my request, or of one shared with me, opened with my key."""
    if record is None:
        record = await result_status(client, site, request_id)
    if not record.shared_with_me:
        return await client.fetch(site, request_id, result_path=result_path)
    sender = _sharer_box_key(client, record)
    data = await catalog(client, "fetch", site, request_id)
    if data[:4] != REPLY_MAGIC:
        raise CanonicalError(f"site {site} answered the fetch request without a result")
    reply = unpack_reply(data)
    h = reply.header
    if h.kind != "result" or h.id != request_id or h.result_hash != record.result_hash:
        raise IntegrityError(f"site {site} answered the fetch of {request_id} with another result")
    return await client.open_sealed_reply(
        site, reply, sender, what=f"the stored result of {request_id}", result_path=result_path
    )


async def result_handle(
    client: Client, request_id: str, site: str, *, result_path: Path | None = None
) -> CallHandle:
    """A handle on an earlier request (mine, or shared with me): ``await
    handle.result()`` gives its kept result, or raises why there is none."""
    record = await result_status(client, site, request_id)
    loop = asyncio.get_running_loop()
    handle = CallHandle(
        request_id=request_id,
        address=record.address or f"{site}.?.?",
        _client=client,
        _content_key=b"",
        _node_box_key=b"",
        _deadline=loop.time() + client.default_timeout,
        _future=loop.create_future(),
        result_path=result_path,
    )

    async def settle() -> None:
        try:
            value = await fetch_result(
                client, site, request_id, result_path=result_path, record=record
            )
        except FederationError as exc:
            handle._settle(error=exc)
        else:
            handle._settle(value)

    if record.state in (RequestState.FAILED, RequestState.REJECTED):
        handle._settle(error=_ended(record))
    else:
        handle._track(loop.create_task(settle()))
    return handle


def _ended(record: RequestRecord) -> FederationError:
    code = record.code or "remote_error"
    return error_from_code(code, record.reason or f"{record.address} failed ({code})")


async def share(client: Client, site: str, request_id: str, principal: str) -> ShareAnswer:
    """Share the kept result of my request with a person or ``group:NAME``: the content
    key is wrapped for each of their keys (verified against their pinned site keys); the
    node logs ``result.shared``. Nothing is uploaded again."""
    key = (await own_content_key(client, site, request_id)).key
    data = await catalog(client, "keys", site, request_id, {"principal": principal})
    keys = parse_answer(RecipientKeys, data, f"keys answer from {site}")
    wraps: dict[str, str] = {}
    for signed in keys.records:
        record = _verified_person(client, signed)
        wraps[record.kid] = b64e(
            wrap_key(client.keys.box_secret, client.keys.box_public, record.box_key_bytes(), key)
        )
    if not wraps:
        raise NotFoundError(f"no key of {principal} that I can verify")
    data = await catalog(
        client, "share", site, request_id, {"principal": principal, "wraps": wraps}
    )
    return parse_answer(ShareAnswer, data, f"share answer from {site}")


@dataclass(frozen=True)
class OwnKey:
    """The content key of my kept result, the box key of the node that keeps it (and made
    the wrap), and the result's hash as that node logged it."""

    key: bytes
    node_box_key: bytes
    result_hash: str


async def own_content_key(client: Client, site: str, request_id: str) -> OwnKey:
    """The content key of my kept result: the node's wrap for me (``wrap``, owner only),
    opened only if the node key verified for the module (its signed info) made it."""
    data = await catalog(client, "wrap", site, request_id)
    wrap = parse_answer(ResultWrap, data, f"wrap answer from {site}")
    target = parse_address(wrap.address)
    info = await client.module_info(target.site, target.module)
    key = open_content_key(
        {client.keys.kid: b64d(wrap.wrap)},
        client.keys.kid,
        client.keys.box_secret,
        sender=info.node_box_key,
    )
    return OwnKey(key, info.node_box_key, wrap.result_hash)


def _verified_person(client: Client, signed: SignedRecord) -> KeyRecord:
    """A person's key record, verified with the pinned key of the site that vouched."""
    site = next((s for s, k in client.trusted_sites.items() if key_id(k) == signed.signer), None)
    if site is None:
        raise SignatureError(
            f"a key record signed by {signed.signer}, a site key I have not pinned",
            hint="import the colleague's site key: `fedhub keys import site-NAME.pub`",
        )
    record = open_record(signed, KeyRecord, client.trusted_sites[site])
    if record.site != site or record.role != "user" or not record.identity.endswith(f"@{site}"):
        raise SignatureError(f"site {site} vouched for {record.identity}, not one of its people")
    return record


async def keep(client: Client, site: str, request_id: str, keep_for: float) -> KeepAnswer:
    """Ask the node to keep my result only ``keep_for`` seconds after the call completed
    (less than its module's keep-for time; ``result.keep_shortened``)."""
    data = await catalog(client, "keep", site, request_id, {"keep_for": max(1, int(keep_for))})
    return parse_answer(KeepAnswer, data, f"keep answer from {site}")


async def delete(client: Client, site: str, request_id: str) -> DeletedAnswer:
    """Remove the kept result of my request now (``result.deleted``); its state becomes
    ``deleted`` and nobody can fetch it any more."""
    data = await catalog(client, "delete", site, request_id)
    return parse_answer(DeletedAnswer, data, f"delete answer from {site}")


async def tag(
    client: Client,
    site: str,
    request_id: str,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    *,
    shared: bool = False,
) -> TagsAnswer:
    """Add and remove tags of my result: private ones (``shared`` False, only I see them)
    or shared ones (also seen by those I share it with); ``result.tagged``."""
    args = {"scope": "shared" if shared else "private", "add": list(add), "remove": list(remove)}
    data = await catalog(client, "tag", site, request_id, args)
    return parse_answer(TagsAnswer, data, f"tag answer from {site}")


async def unshare(client: Client, site: str, request_id: str, principal: str) -> ShareAnswer:
    """Withdraw a share: the node refuses later fetches by it (``result.unshared``)."""
    data = await catalog(client, "unshare", site, request_id, {"principal": principal})
    return parse_answer(ShareAnswer, data, f"unshare answer from {site}")
