"""Event types of a node's log: the whole life of a node, its requests, results and keys.

An event body is canonical JSON (see docs/events.md)::

    {"v": 1, "log": <node id>, "seq": n, "prev": <hex hash of event n-1>,
     "time": <UTC text>, "type": <event type>, "kid": <signing key id>, "data": {...}}

Its hash is ``leaf_hash(body)`` (:mod:`hub.chain`), its signature Ed25519 over
``DOMAIN_EVENT || hash``. ``data`` has one schema per type, given by the models below; a
new event type or field is added with a new version, never by rewriting stored events.
Plaintext of payloads never enters the log: only hashes, sizes and the caller's signed
request header (which proves who asked for what without saying what).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from hub.records import B64, Hex32, IdentityId, Kid, SignedRecord, Time

__all__ = [
    "DOMAIN_EVENT",
    "EVENT_TYPES",
    "FINAL_REQUEST_TYPES",
    "CheckpointData",
    "EventBody",
    "EventData",
    "GrantAdded",
    "GrantRemoved",
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
    "ResultFetched",
    "ResultShared",
    "ResultStored",
    "data_adapter",
]

DOMAIN_EVENT = b"fedhub/event/v1\n"
EVENT_VERSION = 1

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class NodeStopped(_Data):
    """The node stopped cleanly."""

    type: Literal["node.stopped"] = "node.stopped"
    reason: str = ""


# --- the life of a request --------------------------------------------------------------


class RequestReceived(_Data):
    """A signed request arrived; ``header`` is the caller's signed header, verbatim."""

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


class RequestAccepted(_Data):
    """Verified, authorized and not a replay: the node takes responsibility for it."""

    type: Literal["request.accepted"] = "request.accepted"
    request_id: RequestId


class RequestStarted(_Data):
    """The function started running (``attempt`` counts restarts after a crash)."""

    type: Literal["request.started"] = "request.started"
    request_id: RequestId
    attempt: int = 1


class RequestProgress(_Data):
    """Progress reported by the function; the message itself goes only to the caller."""

    type: Literal["request.progress"] = "request.progress"
    request_id: RequestId
    fraction_ppm: int | None = Field(None, ge=0, le=1_000_000)


class RequestCompleted(_Data):
    """The function returned; the encrypted result has the given hash and size."""

    type: Literal["request.completed"] = "request.completed"
    request_id: RequestId
    result_hash: Hex32
    result_size: int
    duration_us: int


class RequestFailed(_Data):
    """The request ended without a result (``code`` as in :mod:`hub.errors`)."""

    type: Literal["request.failed"] = "request.failed"
    request_id: RequestId
    code: str
    reason: str
    duration_us: int = 0


# --- results ----------------------------------------------------------------------------


class ResultStored(_Data):
    """The encrypted result was stored; ``recipients`` hold wrapped content keys."""

    type: Literal["result.stored"] = "result.stored"
    request_id: RequestId
    object: str
    size: int
    ciphertext_hash: Hex32
    recipients: tuple[Kid, ...]


class ResultFetched(_Data):
    """Someone fetched a stored result."""

    type: Literal["result.fetched"] = "result.fetched"
    request_id: RequestId
    by: IdentityId


class ResultShared(_Data):
    """A holder of a result wrapped its content key for more recipients."""

    type: Literal["result.shared"] = "result.shared"
    request_id: RequestId
    by: IdentityId
    recipients: tuple[Kid, ...]


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
    | ResultFetched
    | ResultShared
    | KeyRegistered
    | KeyRotated
    | KeyRevoked
    | GrantAdded
    | GrantRemoved
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
        ResultFetched,
        ResultShared,
        KeyRegistered,
        KeyRotated,
        KeyRevoked,
        GrantAdded,
        GrantRemoved,
        CheckpointData,
    )
)
FINAL_REQUEST_TYPES = frozenset({"request.completed", "request.failed"})


class EventBody(BaseModel):
    """The signed part of an event (the JSON Schema published in schemas/)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    log: IdentityId
    seq: int = Field(ge=1)
    prev: Hex32
    time: Time
    type: str
    kid: Kid
    data: EventData
