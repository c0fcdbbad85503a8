"""Event types of a node's log: the whole life of a node, its requests, results and keys.

An event body is canonical JSON (see docs/events.md)::

    {"v": 2, "log": <node id>, "seq": n, "prev": <hex hash of event n-1>,
     "time": <UTC text>, "type": <event type>, "kid": <signing key id>, "data": {...}}

Its hash is ``leaf_hash(body)`` (:mod:`hub.chain`). Version 1 signed every event (Ed25519
over ``DOMAIN_EVENT || hash``); version 2 signs the last event of every commit (over
``DOMAIN_COMMIT || hash``), which through the chain covers every event before it.
``data`` has one schema per type, given by the models below; a new event type or field is
added with a new version, never by rewriting stored events. The legal order of a
request's events lives in :mod:`hub.lifecycle`. Plaintext of payloads never enters the
log: only hashes, sizes and the caller's signed request header (which proves who asked for
what without saying what).

Version 2 request events (:class:`RequestAccepted` with the signed header,
:class:`RequestCompleted` with where the result is kept, :class:`ResultLost`) leave out
their optional fields when they are None, so a version 1 event reads back byte for byte.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, TypeAdapter, model_serializer

from hub.records import B64, Hex32, IdentityId, Kid, SignedRecord, Time

__all__ = [
    "DOMAIN_COMMIT",
    "DOMAIN_EVENT",
    "EVENT_TYPES",
    "EVENT_VERSION",
    "V1_ONLY_TYPES",
    "V2_ONLY_TYPES",
    "CheckpointConflict",
    "CheckpointCosigned",
    "CheckpointData",
    "EventBody",
    "EventData",
    "GrantAdded",
    "GrantRecorded",
    "GrantRemoved",
    "GroupUpdated",
    "KeyRegistered",
    "KeyRevoked",
    "KeyRotated",
    "LogCreated",
    "NodeStarted",
    "NodeStopped",
    "RequestAccepted",
    "RequestCompleted",
    "RequestFailed",
    "RequestProgress",
    "RequestReceived",
    "RequestRejected",
    "RequestStarted",
    "ResultDeleted",
    "ResultExpired",
    "ResultFetched",
    "ResultKeepShortened",
    "ResultLost",
    "ResultShared",
    "ResultSliced",
    "ResultStored",
    "ResultTagged",
    "ResultUnshared",
    "data_adapter",
]

DOMAIN_EVENT = b"fedhub/event/v1\n"
"""Version 1: every event is signed over ``DOMAIN_EVENT || hash``."""
DOMAIN_COMMIT = b"fedhub/commit/v2\n"
"""Version 2: the last event of a commit is signed over ``DOMAIN_COMMIT || hash``."""
EVENT_VERSION: Final = 2
"""The body version a node writes."""

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _OmitNone(_Data):
    """Data whose optional fields are left out of the body when they are None."""

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        return {k: v for k, v in out.items() if v is not None}


# --- the log and the node ---------------------------------------------------------------


class LogCreated(_Data):
    """Genesis: the node key, vouched for by its site, and the site key it trusts."""

    type: Literal["log.created"] = "log.created"
    node: IdentityId
    site: str
    site_key: B64
    node_key: SignedRecord


class NodeStarted(_Data):
    """The node process started (and will log ``node.stopped`` when it stops cleanly)."""

    type: Literal["node.started"] = "node.started"
    version: str
    pid: int
    modules: tuple[str, ...] = ()
    config_hash: Hex32 | None = None
    recovered: int = Field(0, description="requests found unfinished from a previous run")
    code: dict[str, Hex32] | None = Field(
        None, description="module name: BLAKE2b-256 of its code as this process loaded it"
    )


class NodeStopped(_Data):
    """The node stopped cleanly."""

    type: Literal["node.stopped"] = "node.stopped"
    reason: str = ""


# --- the life of a request --------------------------------------------------------------


class RequestReceived(_Data):
    """Version 1: a signed request arrived; ``header`` is the caller's signed header."""

    type: Literal["request.received"] = "request.received"
    request_id: RequestId
    caller: IdentityId
    address: str
    header: B64
    sig: B64
    nonce: B64
    payload_hash: Hex32
    payload_size: int
    delivery: int = Field(1, description="JetStream delivery count")


class RequestRejected(_Data):
    """A request was refused before running (bad signature, unknown key, not granted...)."""

    type: Literal["request.rejected"] = "request.rejected"
    request_id: str | None = None
    caller: str | None = None
    envelope_hash: Hex32
    code: str
    reason: str


class RequestAccepted(_OmitNone):
    """Verified, authorized and not a replay: the node takes responsibility for it.

    Version 2 carries the caller's signed request header verbatim (``header``, ``sig``):
    who asked for which function, when, with which nonce and the hash and size of the
    sealed arguments are all in it, signed by the caller, so the event repeats none of
    them; ``delivery`` is left out when it is 1. Version 1 had only ``request_id`` (after a
    ``request.received`` with the rest). The code that ran is named once per process, in
    the ``node.started`` before it (``code``), not in every call.
    """

    type: Literal["request.accepted"] = "request.accepted"
    request_id: RequestId
    header: B64 | None = None
    sig: B64 | None = None
    delivery: int | None = Field(None, ge=2, description="JetStream delivery count, if not 1")


class RequestStarted(_Data):
    """The function started running again (``attempt`` >= 2, after a node restart); in
    version 1 also the first start (attempt 1)."""

    type: Literal["request.started"] = "request.started"
    request_id: RequestId
    attempt: int = 1


class RequestProgress(_Data):
    """Progress reported by the function; the message itself goes only to the caller."""

    type: Literal["request.progress"] = "request.progress"
    request_id: RequestId
    fraction_ppm: int | None = Field(None, ge=0, le=1_000_000)


class RequestCompleted(_OmitNone):
    """The function returned; the encrypted result has the given hash and size.

    Version 2: ``object`` names where the sealed result is kept (None: delivered only).
    """

    type: Literal["request.completed"] = "request.completed"
    request_id: RequestId
    result_hash: Hex32
    result_size: int
    duration_us: int
    object: str | None = None


class RequestFailed(_Data):
    """The request ended without a result (``code`` as in :mod:`hub.errors`)."""

    type: Literal["request.failed"] = "request.failed"
    request_id: RequestId
    code: str
    reason: str
    duration_us: int = 0


# --- results ----------------------------------------------------------------------------


class ResultStored(_Data):
    """Version 1: the encrypted result was stored; ``recipients`` hold wrapped keys."""

    type: Literal["result.stored"] = "result.stored"
    request_id: RequestId
    object: str
    size: int
    ciphertext_hash: Hex32
    recipients: tuple[Kid, ...]


class ResultLost(_Data):
    """Version 2: the result named by ``request.completed`` could not be kept (the reason
    says why); the caller was answered, but a later fetch finds nothing."""

    type: Literal["result.lost"] = "result.lost"
    request_id: RequestId
    reason: str


class ResultFetched(_Data):
    """Someone fetched a stored result."""

    type: Literal["result.fetched"] = "result.fetched"
    request_id: RequestId
    by: IdentityId


class ResultShared(_OmitNone):
    """A holder of a result wrapped its content key for more recipients.

    Since ``fedhub result share``: ``principal`` names whom (a person or ``group:NAME``)
    and ``key_wraps`` holds the content key wrapped by the owner for each of ``recipients``,
    in the same order (only that key opens it); the node hands it to the recipient on a
    fetch.
    """

    type: Literal["result.shared"] = "result.shared"
    request_id: RequestId
    by: IdentityId
    recipients: tuple[Kid, ...]
    principal: str | None = None
    key_wraps: tuple[B64, ...] | None = None
    #: A share with a node (``node:SITE/NAME``) for one call that takes the result by
    #: reference: that call's request id.
    for_call: RequestId | None = None


class ResultUnshared(_Data):
    """Version 2: the owner withdrew a share; the node refuses later fetches by it."""

    type: Literal["result.unshared"] = "result.unshared"
    request_id: RequestId
    by: IdentityId
    principal: str


class ResultTagged(_Data):
    """Version 2: the owner set the tags of a result: ``tags`` is the whole new set of the
    ``scope`` (``private``: the owner's own; ``shared``: also seen by whoever the result is
    shared with)."""

    type: Literal["result.tagged"] = "result.tagged"
    request_id: RequestId
    by: IdentityId
    scope: Literal["private", "shared"]
    tags: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], ...]


class ResultKeepShortened(_Data):
    """Version 2: the owner asked the node to keep a result for less than its module's
    keep-for time: ``keep_for`` seconds after the call completed."""

    type: Literal["result.keep_shortened"] = "result.keep_shortened"
    request_id: RequestId
    by: IdentityId
    keep_for: int = Field(ge=1)


class ResultExpired(_Data):
    """Version 2: the node removed a kept result by its retention rules (``reason``: which
    one: its keep-for time ran out, or its module's kept results grew past their size)."""

    type: Literal["result.expired"] = "result.expired"
    request_id: RequestId
    reason: str


class ResultDeleted(_Data):
    """Version 2: the owner removed a kept result before it expired."""

    type: Literal["result.deleted"] = "result.deleted"
    request_id: RequestId
    by: IdentityId


class ResultSliced(_Data):
    """Version 2: the owner let the node open its kept result for one request, and the node
    sent part of it, sealed for the owner: ``part`` ``slice`` (the part
    ``selection_hash`` names: BLAKE2b-256 of the canonical JSON ``{"isel", "variables"}``,
    so the log, copied to the hub, names no variable) or ``layout`` (its dimensions,
    coordinates and attributes); ``size`` is the plaintext bytes sent and ``sent_hash``
    the hash of what was sent."""

    type: Literal["result.sliced"] = "result.sliced"
    request_id: RequestId
    by: IdentityId
    part: Literal["slice", "layout"]
    selection_hash: Hex32
    size: int = Field(ge=0)
    sent_hash: Hex32


# --- the directory: keys and grants -----------------------------------------------------


class KeyRegistered(_Data):
    """A key record vouched for by a site was added to the node's directory."""

    type: Literal["key.registered"] = "key.registered"
    record: SignedRecord


class KeyRotated(_Data):
    """A key was replaced; for the node's own key, later events are signed by the new one."""

    type: Literal["key.rotated"] = "key.rotated"
    identity: IdentityId
    old_kid: Kid
    record: SignedRecord


class KeyRevoked(_Data):
    """A site revoked a key; nothing signed by it after ``time`` is valid."""

    type: Literal["key.revoked"] = "key.revoked"
    revocation: SignedRecord


class GrantAdded(_Data):
    """``principal`` (``name@site`` or ``group:name``) may call ``module.function``."""

    type: Literal["grant.added"] = "grant.added"
    principal: str
    module: str
    function: str = "*"
    by: str


class GrantRemoved(_Data):
    """A grant was withdrawn."""

    type: Literal["grant.removed"] = "grant.removed"
    principal: str
    module: str
    function: str = "*"
    by: str


class GrantRecorded(_Data):
    """Version 2: a site-signed :class:`~hub.records.GrantRecord` of this node's site took
    effect here (from the site's operator, or from the federation directory)."""

    type: Literal["grant.recorded"] = "grant.recorded"
    record: SignedRecord


class GroupUpdated(_Data):
    """Version 2: an owner-signed :class:`~hub.records.GroupRecord` took effect here."""

    type: Literal["group.updated"] = "group.updated"
    record: SignedRecord


class CheckpointCosigned(_Data):
    """Version 2: this node, as a witness, countersigned another log's checkpoint: it
    extends every checkpoint of that log the node saw before (``cosignature`` is signed
    by this node's key)."""

    type: Literal["checkpoint.cosigned"] = "checkpoint.cosigned"
    checkpoint: SignedRecord
    cosignature: SignedRecord


class CheckpointConflict(_Data):
    """Version 2: evidence that another log showed two histories (``reason``: ``fork`` or
    ``rollback``): two checkpoints of it, each signed by its node, that no single
    append-only log can both have signed."""

    type: Literal["checkpoint.conflict"] = "checkpoint.conflict"
    log: IdentityId
    reason: Literal["fork", "rollback"]
    earlier: SignedRecord
    later: SignedRecord


class CheckpointData(_Data):
    """A signed checkpoint over the first ``size`` events (those before this one)."""

    type: Literal["checkpoint"] = "checkpoint"
    checkpoint: SignedRecord


EventData = Annotated[
    LogCreated
    | NodeStarted
    | NodeStopped
    | RequestReceived
    | RequestRejected
    | RequestAccepted
    | RequestStarted
    | RequestProgress
    | RequestCompleted
    | RequestFailed
    | ResultStored
    | ResultLost
    | ResultFetched
    | ResultShared
    | ResultUnshared
    | ResultTagged
    | ResultKeepShortened
    | ResultExpired
    | ResultDeleted
    | ResultSliced
    | KeyRegistered
    | KeyRotated
    | KeyRevoked
    | GrantAdded
    | GrantRemoved
    | GrantRecorded
    | GroupUpdated
    | CheckpointCosigned
    | CheckpointConflict
    | CheckpointData,
    Field(discriminator="type"),
]

data_adapter: TypeAdapter[Any] = TypeAdapter(EventData)

EVENT_TYPES: frozenset[str] = frozenset(
    cls.model_fields["type"].default
    for cls in (
        LogCreated,
        NodeStarted,
        NodeStopped,
        RequestReceived,
        RequestRejected,
        RequestAccepted,
        RequestStarted,
        RequestProgress,
        RequestCompleted,
        RequestFailed,
        ResultStored,
        ResultLost,
        ResultFetched,
        ResultShared,
        ResultUnshared,
        ResultTagged,
        ResultKeepShortened,
        ResultExpired,
        ResultDeleted,
        ResultSliced,
        KeyRegistered,
        KeyRotated,
        KeyRevoked,
        GrantAdded,
        GrantRemoved,
        GrantRecorded,
        GroupUpdated,
        CheckpointCosigned,
        CheckpointConflict,
        CheckpointData,
    )
)
#: Types a version 2 body never carries (their work is done by other events).
V1_ONLY_TYPES = frozenset({"request.received", "result.stored"})
#: Types only a version 2 body carries (the federation directory and witnesses).
V2_ONLY_TYPES = frozenset(
    {
        "result.lost",
        "result.unshared",
        "result.tagged",
        "result.keep_shortened",
        "result.expired",
        "result.deleted",
        "result.sliced",
        "grant.recorded",
        "group.updated",
        "checkpoint.cosigned",
        "checkpoint.conflict",
    }
)


class EventBody(BaseModel):
    """The signed part of an event (the JSON Schema published in schemas/)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1, 2] = EVENT_VERSION
    log: IdentityId
    seq: int = Field(ge=1)
    prev: Hex32
    time: Time
    type: str
    kid: Kid
    data: EventData
