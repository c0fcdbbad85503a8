"""The requests catalog and sharing: a caller's signed catalog messages, answered.

A catalog message (:mod:`hub.results_wire`) arrives on ``fh.status.<site>`` beside the
control messages and is answered from the node's projections (``requests``,
``result_shares``) and its directory. Every answer is about the asker's own requests, or
ones shared with the asker; anything else is answered as if it did not exist
(NotFoundError), so a stranger learns nothing about other people's requests.

* ``list``: the asker's requests (and those shared with it) matching a
  :class:`~hub.results_wire.ListFilter`, newest first;
* ``status``: one of them (a shared reader also gets the key record of the sharer);
* ``wrap``: the owner's wrapped content key of a kept result, to share it;
* ``keys``: the key records of a person or a group's members (the owner wraps for them);
* ``share`` / ``unshare``: logged as ``result.shared`` (with the owner's wraps) and
  ``result.unshared``; the node checks that every wrap is made by the owner's key, for a
  valid key of the principal;
* ``fetch``: the kept result, with the wrap for the asker's key (owner or reader); logged
  as ``result.fetched``. A reader may be a node of any site (``node:SITE/NAME``, fetching
  a result passed to a call by reference): it sends its key record signed by its site,
  and is answered only for a call the owner shared the result with it for
  (``for_call``);
* ``tag``: the owner adds and removes tags of a result, private or shared with its
  readers (``result.tagged``); ``list`` takes a :class:`hub.query.Query` over the
  records and the asker's tags;
* ``keep``: the owner asks for a shorter keep-for time (``result.keep_shortened``);
* ``provenance``: the request's events with proofs of inclusion (:mod:`node.provenance`),
  for the owner and its readers;
* ``delete``: the owner removes the kept result now (:mod:`node.retention`,
  ``result.deleted``);
* ``slice`` / ``describe``: the owner lets the node open the kept result for this one
  message and gets part of it, or its layout (:mod:`node.slicing`, ``result.sliced``).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from pydantic import BaseModel
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
)
from hub.canonical import b64d
from hub.clock import parse_time
from hub.crypto import key_id, verify
from hub.errors import (
    FederationError,
    NodeError,
    NotFoundError,
    UnauthorizedError,
    ValidationError,
)
from hub.events import ResultKeepShortened, ResultShared, ResultTagged, ResultUnshared
from hub.lifecycle import RequestState
from hub.query import Query, record_fields
from hub.records import KeyRecord, SignedRecord, one_line, open_record
from hub.results_wire import (
    DOMAIN_CATALOG,
    CatalogHeader,
    KeepArgs,
    ListFilter,
    ShareArgs,
    TagArgs,
    parse_catalog_bytes,
    split_catalog,
    validate_catalog_header,
)
from node.provenance import provenance_of
from node.replay import ReplayGuard
from node.retention import asked_keep
from node.slicing import Slicer
from node.staging import shared_for_call

if TYPE_CHECKING:
    from node.control import Control
    from node.pipeline import Pipeline

__all__ = ["Catalog", "CatalogAnswer"]

#: What a catalog message is answered with (a fetch: the result frame; a refusal raises).
CatalogAnswer = BaseModel | bytes

log = structlog.get_logger(__name__)

#: The ``requests`` columns a catalog record is made of.
_COLUMNS = (
    "request_id, caller, address, state, code, reason, received_time, updated_time,"
    " result_hash, result_size, result_object"
)


class Catalog:
    """Answers catalog messages for one node's :class:`~node.pipeline.Pipeline`."""

    def __init__(self, pipeline: Pipeline, control: Control) -> None:
        self.p = pipeline
        self.control = control
        self.replay = ReplayGuard(pipeline.calls.replay_window)
        self.slicer = Slicer(pipeline, control)

    def reader(self) -> sqlite3.Connection:
        """The pipeline's read connection to the log's projections."""
        return self.p._read()

    async def answer(self, data: bytes) -> CatalogAnswer:
        """Verify a catalog message and answer it; raises the typed error of a refusal."""
        p = self.p
        try:
            header_bytes, sig = split_catalog(data)
            claimed = parse_catalog_bytes(header_bytes)
            if str(claimed["caller"]).startswith("node:"):  # a node fetching a reference
                args = claimed.get("args")
                record = self.node_key(
                    args.get("node_key") if isinstance(args, dict) else None, claimed
                )
            else:
                record = p.directory.caller(str(claimed["caller"]), str(claimed["kid"]))
            verify(record.sign_key_bytes(), DOMAIN_CATALOG, header_bytes, sig)
            q = validate_catalog_header(claimed)
        except UnauthorizedError:
            raise
        except (FederationError, KeyError, TypeError) as exc:
            raise UnauthorizedError(f"catalog message refused: {exc}") from exc
        self.replay.check_and_remember(q.nonce, parse_time(q.time).timestamp())
        if q.op == "list":
            return self._list(q, record)
        if q.id is None:
            raise ValidationError(f"a {q.op} message names a request (id)")
        await p.results.settled(q.id)
        state = await p.request_state(q.id)
        if state is None:
            raise _unknown(q)
        owner = state.get("caller") == q.caller
        if q.op == "fetch" and owner:
            return await self.control.fetch(q.id, q.caller, state)
        if q.op == "provenance" and (owner or self._share_for(q.id, record) is not None):
            return await provenance_of(p, q.id, owner=owner)
        if owner:
            return await self._owner(q, record, state)
        share = self._share_for(q.id, record)
        if share is None or q.op not in ("status", "fetch"):
            raise _unknown(q)  # a stranger learns nothing, not even that it exists
        if record.role == "node" and not await self._shared_for_call(q, record.identity):
            raise _unknown(q)  # shared with this node for other calls than the one it names
        wrap = share["wraps"].get(q.kid)
        if q.op == "status":
            return self._record(
                state,
                shared=True,
                sharer=self._sharer_key(share, wrap),
                tags=self._tags_by_request([q.id]).get(q.id, {}),
            )
        if wrap is None:
            raise UnauthorizedError(
                f"request {q.id} was shared with {share['principal']}, but not with key {q.kid}",
                hint="ask its owner to share it again (your key may be newer than the share)",
            )
        return await self.control.fetch(q.id, q.caller, state, wraps={q.kid: wrap})

    # -- the owner's ops -------------------------------------------------------------------

    async def _owner(
        self, q: CatalogHeader, record: KeyRecord, state: dict[str, Any]
    ) -> CatalogAnswer:
        rid = str(q.id)
        if q.op == "status":
            return self._record(
                state, shares=self._shares_of(rid), tags=self._tags_by_request([rid]).get(rid, {})
            )
        if q.op == "tag":
            return await self._tag(q, state)
        if q.op == "keep":
            return await self._keep(q, state)
        if q.op == "keys":
            principal = _arg_principal(q)
            return RecipientKeys(
                principal=principal,
                records=tuple(
                    self.p.directory.signed_keys[r.kid] for r in self._members(principal)
                ),
            )
        if q.op == "unshare":
            principal = _arg_principal(q)
            if RequestState(state["state"]) != RequestState.COMPLETED:
                raise NotFoundError(f"request {rid} is {state['state']}: nothing to unshare")
            if principal not in self._shares_of(rid):
                raise NotFoundError(f"request {rid} is not shared with {principal}")
            stored = await self.control.append_completed(
                rid, ResultUnshared(request_id=rid, by=q.caller, principal=principal)
            )
            log.info("result.unshared", request_id=rid, principal=principal)
            return ShareAnswer(
                request_id=rid, op="unshare", principal=principal, seq=stored[-1].seq
            )
        name = self._kept(rid, state)
        if q.op in ("slice", "describe"):
            return await self.slicer.answer(q, record, state, name)
        if q.op == "delete":
            retention = self.p.results.retention
            if retention is None:
                raise NodeError(f"this node cannot remove kept results (request {rid})")
            seq = await retention.delete(rid, name, q.caller)
            return DeletedAnswer(request_id=rid, state=RequestState.DELETED, seq=seq)
        if q.op == "wrap":
            head = await self.control.load_head(name)
            wrap = head.wraps.get(q.kid)
            if wrap is None:
                raise NotFoundError(f"the result of {rid} is not wrapped for key {q.kid}")
            return ResultWrap(
                request_id=rid,
                address=str(state.get("address")),
                result_hash=str(state["result_hash"]),
                wrap=wrap,
            )
        assert q.op == "share"
        try:
            args = ShareArgs.model_validate(q.args)
        except PydanticValidationError as exc:
            raise ValidationError(f"share arguments: {one_line(exc)}") from exc
        if args.principal.startswith("node:"):
            node = self.node_key(args.node_key, {"caller": args.principal})
            valid = {node.kid}
        else:
            valid = {r.kid for r in self._members(args.principal)}
        strangers = sorted(set(args.wraps) - valid)
        if strangers:
            raise UnauthorizedError(
                f"keys {', '.join(strangers)} are no valid keys of {args.principal} here"
            )
        mine = record.box_key_bytes()
        if any(b64d(w)[:32] != mine for w in args.wraps.values()):
            raise UnauthorizedError(f"a wrap for {args.principal} was not made by key {q.kid}")
        stored = await self.control.append_completed(
            rid,
            ResultShared(
                request_id=rid,
                by=q.caller,
                recipients=tuple(sorted(args.wraps)),
                principal=args.principal,
                key_wraps=tuple(w for _, w in sorted(args.wraps.items())),
                for_call=args.for_call,
            ),
        )
        log.info("result.shared", request_id=rid, principal=args.principal)
        return ShareAnswer(
            request_id=rid,
            op="share",
            principal=args.principal,
            recipients=tuple(sorted(args.wraps)),
            seq=stored[-1].seq,
        )

    async def _tag(self, q: CatalogHeader, state: dict[str, Any]) -> TagsAnswer:
        rid = str(q.id)
        try:
            args = TagArgs.model_validate(q.args)
        except PydanticValidationError as exc:
            raise ValidationError(f"tag arguments: {one_line(exc)}") from exc
        if RequestState(state["state"]) != RequestState.COMPLETED:
            raise ValidationError(f"request {rid} is {state['state']}: only results are tagged")
        held = set(self._tags_by_request([rid]).get(rid, {}).get(args.scope, ()))
        tags = tuple(sorted((held | set(args.add)) - set(args.remove)))
        stored = await self.control.append_completed(
            rid, ResultTagged(request_id=rid, by=q.caller, scope=args.scope, tags=tags)
        )
        return TagsAnswer(request_id=rid, scope=args.scope, tags=tags, seq=stored[-1].seq)

    async def _keep(self, q: CatalogHeader, state: dict[str, Any]) -> KeepAnswer:
        rid = str(q.id)
        self._kept(rid, state)
        try:
            args = KeepArgs.model_validate(q.args)
        except PydanticValidationError as exc:
            raise ValidationError(f"keep arguments: {one_line(exc)}") from exc
        retention = self.p.results.retention
        if retention is None:
            raise NodeError(f"this node has no retention rules (request {rid})")
        most = retention.keep_for(_module_of(state.get("address")), None)
        if args.keep_for > most:
            raise ValidationError(
                f"the result of {rid} is kept at most {most:g} s here; ask for less",
                hint="a caller may shorten the keep-for time, not extend it",
            )
        stored = await self.control.append_completed(
            rid, ResultKeepShortened(request_id=rid, by=q.caller, keep_for=args.keep_for)
        )
        expires = retention.expires(state.get("address"), state["updated_time"], args.keep_for)
        return KeepAnswer(
            request_id=rid, keep_for=args.keep_for, expires_time=expires, seq=stored[-1].seq
        )

    def _asked_by_request(self, rids: list[str]) -> dict[str, float]:
        """The keep-for times owners asked for, of those of ``rids`` that have one."""
        return asked_keep(self.reader(), rids)

    def _tags_by_request(self, rids: list[str]) -> dict[str, dict[str, tuple[str, ...]]]:
        """The tags of each of ``rids`` that has some, by scope."""
        out: dict[str, dict[str, tuple[str, ...]]] = {}
        for at in range(0, len(rids), 500):
            part = rids[at : at + 500]
            marks = ",".join("?" * len(part))
            sql = f"SELECT request_id, scope, tags FROM result_tags WHERE request_id IN ({marks})"  # noqa: S608
            for rid, scope, tags in self.reader().execute(sql, part):
                out.setdefault(rid, {})[scope] = tuple(orjson.loads(tags))
        return out

    def node_key(self, signed: object, claimed: dict[str, Any]) -> KeyRecord:
        """The key record of the node ``claimed["caller"]`` (with ``claimed["kid"]`` when
        given), signed by its pinned site key: a node of another site is in no directory,
        so it sends its record along (UnauthorizedError when it does not check)."""
        identity = str(claimed["caller"])
        d = self.p.directory
        try:
            record_ = SignedRecord.model_validate(signed)
            site = next(s for s, k in d.trusted_sites.items() if key_id(k) == record_.signer)
            record = open_record(record_, KeyRecord, d.trusted_sites[site])
        except (PydanticValidationError, StopIteration, FederationError) as exc:
            raise UnauthorizedError(f"no key record of {identity} this site can check") from exc
        if record.role != "node" or record.site != site or record.identity != identity:
            raise UnauthorizedError(f"site {site} vouched for {record.identity}, not {identity}")
        if "kid" in claimed and record.kid != claimed["kid"]:
            raise UnauthorizedError(f"key {claimed['kid']} is not the key of {identity}")
        if record.kid in d.revoked:
            raise UnauthorizedError(f"key {record.kid} of {identity} was revoked")
        return record

    async def _shared_for_call(self, q: CatalogHeader, node: str) -> bool:
        """Whether the owner's shares of ``q.id`` with ``node`` in the log cover the call
        ``q`` names (``args.for_call``; :func:`node.staging.shared_for_call`)."""
        call, rid = q.args.get("for_call"), str(q.id)
        eventlog = self.p.writer.eventlog
        found = await self.p.writer.call(lambda: eventlog.events_for_request(rid))
        assert isinstance(found, list)
        return shared_for_call(found, node, None if call is None else str(call))

    # -- list ------------------------------------------------------------------------------

    def _list(self, q: CatalogHeader, record: KeyRecord) -> RequestsAnswer:
        """The asker's requests and those shared with it that match, newest first.

        The asker's own are read newest first in pages and only until one more than the
        limit matched (a person with a million requests costs what the answer needs).
        """
        try:
            f = ListFilter.model_validate(q.args)
        except PydanticValidationError as exc:
            raise ValidationError(f"list filter: {one_line(exc)}") from exc
        if f.state is not None and f.state != "kept" and f.state not in set(RequestState):
            raise ValidationError(f"{f.state!r} is no request state (nor 'kept')")
        query = Query.from_json(f.query) if f.query is not None else None
        found: list[RequestRecord] = []
        if f.shared is not True:
            where, params = ["caller = ?"], [q.caller]
            if f.since is not None:
                where.append("received_time >= ?")
                params.append(f.since)
            if f.until is not None:
                where.append("received_time < ?")
                params.append(f.until)
            cur = self.reader().execute(
                f"SELECT {_COLUMNS} FROM requests WHERE {' AND '.join(where)}"  # noqa: S608
                " ORDER BY received_time DESC",
                params,
            )
            names = [c[0] for c in cur.description]
            while len(found) <= f.limit and (page := cur.fetchmany(500)):
                rows = [dict(zip(names, row, strict=True)) for row in page]
                found += self._records([r for r in rows if _matches(r, f)], query, shared=False)
            cur.close()
        if f.shared is not False:
            rows = [r for r in self._shared_with(record) if _matches(r, f) and _in_time(r, f)]
            found += self._records(rows, query, shared=True)
        found.sort(key=lambda r: r.received_time or "", reverse=True)
        return RequestsAnswer(
            site=self.p.site,
            node=self.p.node_id,
            requests=tuple(found[: f.limit]),
            truncated=len(found) > f.limit,
        )

    def _records(
        self, rows: list[dict[str, Any]], query: Query | None, *, shared: bool
    ) -> list[RequestRecord]:
        """Catalog records of request rows (shares, tags and keep-for times read in bulk),
        those ``query`` matches."""
        rids = [row["request_id"] for row in rows]
        shares = {} if shared else self._shares_by_request(rids)
        tags, asked = self._tags_by_request(rids), self._asked_by_request(rids)
        records = [
            self._record(
                row,
                shared=shared,
                shares=shares.get(row["request_id"], ()),
                tags=tags.get(row["request_id"], {}),
                asked=asked,
            )
            for row in rows
        ]
        if query is None:
            return records
        return [
            r
            for r in records
            if query.matches(record_fields(r), frozenset((*r.tags, *r.shared_tags)))
        ]

    # -- shares ----------------------------------------------------------------------------

    def principals_of(self, record: KeyRecord) -> set[str]:
        """Every principal ``record``'s person answers to: itself and its groups."""
        d = self.p.directory
        return {
            record.identity,
            *(f"group:{g}" for g in record.groups),
            *d.groups_of(record.identity),
        }

    def _members(self, principal: str) -> list[KeyRecord]:
        """The valid person keys ``principal`` covers (NotFoundError when none)."""
        d = self.p.directory
        found = [
            r
            for r in d.keys.values()
            if r.role == "user"
            and r.kid not in d.revoked
            and r.kid in d.signed_keys
            and principal in self.principals_of(r)
        ]
        if not found:
            raise NotFoundError(f"no valid key of {principal} is known at site {self.p.site}")
        return sorted(found, key=lambda r: r.kid)

    def _share_rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        cur = self.reader().execute(sql, params)
        return [
            {"request_id": rid, "principal": pr, "by": by, "wraps": orjson.loads(wraps)}
            for rid, pr, by, wraps in cur
        ]

    def _shares_of(self, rid: str) -> tuple[str, ...]:
        rows = self._share_rows(
            "SELECT request_id, principal, by, wraps FROM result_shares WHERE request_id = ?"
            " ORDER BY principal",
            [rid],
        )
        return tuple(r["principal"] for r in rows)

    def _shares_by_request(self, rids: list[str]) -> dict[str, tuple[str, ...]]:
        if not rids:
            return {}
        out: dict[str, list[str]] = {}
        for at in range(0, len(rids), 500):
            part = rids[at : at + 500]
            marks = ",".join("?" * len(part))
            sql = (
                "SELECT request_id, principal, by, wraps FROM result_shares"  # noqa: S608
                f" WHERE request_id IN ({marks}) ORDER BY principal"
            )
            for r in self._share_rows(sql, part):
                out.setdefault(r["request_id"], []).append(r["principal"])
        return {rid: tuple(ps) for rid, ps in out.items()}

    def _share_for(self, rid: str, record: KeyRecord) -> dict[str, Any] | None:
        """The share of ``rid`` that covers ``record``'s person (one with a wrap for its
        key first), or None."""
        principals = self.principals_of(record)
        rows = [
            r
            for r in self._share_rows(
                "SELECT request_id, principal, by, wraps FROM result_shares WHERE request_id = ?",
                [rid],
            )
            if r["principal"] in principals
        ]
        rows.sort(key=lambda r: record.kid not in r["wraps"])
        return rows[0] if rows else None

    def _shared_with(self, record: KeyRecord) -> list[dict[str, Any]]:
        """The request rows shared with ``record``'s person."""
        principals = sorted(self.principals_of(record))
        marks = ",".join("?" * len(principals))
        sql = (
            "SELECT request_id, principal, by, wraps FROM result_shares"  # noqa: S608
            f" WHERE principal IN ({marks})"
        )
        rows = self._share_rows(sql, principals)
        rids = list(dict.fromkeys(r["request_id"] for r in rows))
        if not rids:
            return []
        marks = ",".join("?" * len(rids))
        cur = self.reader().execute(
            f"SELECT {_COLUMNS} FROM requests WHERE request_id IN ({marks})",  # noqa: S608
            rids,
        )
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def _sharer_key(self, share: dict[str, Any], wrap: str | None) -> Any:
        """The signed key record of the owner key that made ``wrap`` (None if unknown)."""
        if wrap is None:
            return None
        sender = b64d(wrap)[:32]
        d = self.p.directory
        for kid, r in d.keys.items():
            if r.identity == share["by"] and r.box_key_bytes() == sender:
                return d.signed_keys.get(kid)
        return None

    # -- records ---------------------------------------------------------------------------

    def _record(
        self,
        row: dict[str, Any],
        *,
        shares: tuple[str, ...] = (),
        shared: bool = False,
        sharer: Any = None,
        tags: dict[str, tuple[str, ...]] | None = None,
        asked: dict[str, float] | None = None,
    ) -> RequestRecord:
        """A catalog record of a request row (``asked``: the keep-for times owners asked
        for, by request; looked up when not given)."""
        tags = tags or {}
        expires = None
        retention = self.p.results.retention
        if retention is not None and row.get("result_object") and row.get("updated_time"):
            rid = row["request_id"]
            if asked is None:
                asked = self._asked_by_request([rid])
            expires = retention.expires(row.get("address"), row["updated_time"], asked.get(rid))
        return RequestRecord(
            request_id=row["request_id"],
            site=self.p.site,
            caller=row.get("caller"),
            address=row.get("address"),
            state=RequestState(row["state"]),
            code=row.get("code"),
            reason=row.get("reason"),
            received_time=row.get("received_time"),
            updated_time=row.get("updated_time"),
            result_hash=row.get("result_hash"),
            result_size=row.get("result_size"),
            kept=bool(row.get("result_object")),
            expires_time=expires,
            shared_with_me=shared,
            shares=() if shared else shares,
            tags=() if shared else tags.get("private", ()),
            shared_tags=tags.get("shared", ()),
            sharer_key=sharer,
        )

    @staticmethod
    def _kept(rid: str, state: dict[str, Any]) -> str:
        """Where the result of ``rid`` is kept; NotFoundError when it is not."""
        if RequestState(state["state"]) != RequestState.COMPLETED:
            raise NotFoundError(f"request {rid} has no result: it is {state['state']}")
        name = state.get("result_object")
        if not name:
            why = state.get("reason") or "it was delivered only"
            raise NotFoundError(f"no copy of the result of {rid} was kept ({why})")
        return str(name)


def _module_of(address: object) -> str:
    parts = str(address or "").split(".")
    return parts[1] if len(parts) >= 3 else ""


def _unknown(q: CatalogHeader) -> NotFoundError:
    return NotFoundError(f"no request {q.id} of {q.caller} at this node")


def _arg_principal(q: CatalogHeader) -> str:
    principal = q.args.get("principal")
    try:
        return ShareArgs.model_validate({"principal": principal, "wraps": {"0" * 20: ""}}).principal
    except PydanticValidationError as exc:
        raise ValidationError(f"{principal!r} is no person (name@site) or group:NAME") from exc


def _matches(row: dict[str, Any], f: ListFilter) -> bool:
    """Whether a request row passes the filter's address and state parts."""
    parts = str(row.get("address") or "").split(".", 2)
    if f.module is not None and (len(parts) < 3 or parts[1] != f.module):
        return False
    if f.function is not None and (len(parts) < 3 or parts[2] != f.function):
        return False
    if f.state is None:
        return True
    if f.state == "kept":
        return bool(row.get("result_object"))
    return bool(row.get("state") == f.state)


def _in_time(row: dict[str, Any], f: ListFilter) -> bool:
    received = str(row.get("received_time") or "")
    if f.since is not None and received < f.since:
        return False
    return not (f.until is not None and received >= f.until)
