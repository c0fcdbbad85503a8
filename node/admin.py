"""A node's directory from its log and config, and signed directory changes (admin).

Used by the daemon at start and for live changes (``fh.admin.<site>``), and by
``fedhub-node admin`` when no node is running (the change is then appended to the log
directly and takes effect at the next start).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from hub.answers import AdminAnswer
from hub.canonical import b64d
from hub.directory import Directory, Grant
from hub.errors import ConfigError, FederationError, ValidationError
from hub.events import (
    GrantAdded,
    GrantRecorded,
    GrantRemoved,
    GroupUpdated,
    KeyRegistered,
    KeyRevoked,
)
from hub.keys import load_public_file
from hub.records import SignedRecord
from node.config import NodeConfig
from node.eventlog import EventLog, StoredEvent

__all__ = ["DirectoryState", "apply_admin", "directory_events", "load_directory"]

log = structlog.get_logger(__name__)

Append = Callable[..., Awaitable[list[StoredEvent]]]
#: Publishes a record of this site to the federation-wide directory: (kind, record).
Publish = Callable[[str, SignedRecord], Awaitable[None]]
#: Admin ops and the directory record kind each publishes.
_KINDS = {"register": "key", "revoke": "revocation", "grant": "grant", "group": "group"}


class DirectoryState:
    """The directory rebuilt from a log, plus the events that bring it in line with config."""

    def __init__(self, directory: Directory, node_key: SignedRecord, pending: list[BaseModel]):
        self.directory = directory
        self.node_key = node_key
        self.pending = pending


def load_directory(cfg: NodeConfig, eventlog: EventLog) -> DirectoryState:
    """Replay genesis and ``key.*``/``grant.*`` events; diff against the config.

    Returns the directory (already including the config's changes) and the events that
    record those changes, for the caller to append.
    """
    first = next(eventlog.events(after=0, limit=1)).parsed()
    changes = directory_events(eventlog)
    site = cfg.node.site
    trusted = {site: b64d(first["data"]["site_key"])}
    for t in cfg.trust:
        path = cfg.resolve(t.key)
        trusted[t.site] = load_public_file(path).sign_key if path.exists() else b64d(t.key)
    directory = Directory(site, trusted)
    config_grants: set[Grant] = set()
    for data in changes:
        try:
            directory.apply_event(data)
        except FederationError as exc:  # a site no longer trusted: its records lapse
            log.warning("directory.event_skipped", type=data.get("type"), reason=str(exc))
        if data.get("by") == "config":
            g = Grant(data["principal"], data["module"], data["function"])
            if data["type"] == "grant.added":
                config_grants.add(g)
            else:
                config_grants.discard(g)
    pending: list[BaseModel] = []
    for path_text in cfg.users:
        path = cfg.resolve(path_text)
        try:
            signed = SignedRecord.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"users: cannot read key record {path}: {exc}") from exc
        kid = json.loads(b64d(signed.record)).get("kid")
        if kid in directory.keys:
            continue
        try:
            directory.register(signed)
        except FederationError as exc:
            raise ConfigError(f"users: key record {path} is not valid here: {exc}") from exc
        pending.append(KeyRegistered(record=signed))
    wanted = {Grant(g.principal, g.module, f) for g in cfg.grants for f in g.functions}
    for g in sorted(wanted - config_grants, key=str):
        directory.add_grant(g)
        pending.append(
            GrantAdded(principal=g.principal, module=g.module, function=g.function, by="config")
        )
    for g in sorted(config_grants - wanted, key=str):
        directory.remove_grant(g)
        pending.append(
            GrantRemoved(principal=g.principal, module=g.module, function=g.function, by="config")
        )
    # the record callers check the node key against: the genesis one, or the newest
    # rotation's (a rotated-out key must not be served as this node's)
    node_key = SignedRecord.model_validate(first["data"]["node_key"])
    for data in changes:
        if data["type"] == "key.rotated":
            node_key = SignedRecord.model_validate(data["record"])
    return DirectoryState(directory, node_key, pending)


def directory_events(eventlog: EventLog) -> list[dict[str, Any]]:
    """The ``data`` of every directory event of the log (keys, grants, groups), in order."""
    rows = eventlog.db.execute(
        "SELECT body FROM events WHERE type LIKE 'key.%' OR type LIKE 'grant.%' "
        "OR type = 'group.updated' ORDER BY seq"
    ).fetchall()
    return [json.loads(bytes(r[0]))["data"] for r in rows]


def admin_message(op: str, record: SignedRecord) -> bytes:
    """The admin message for ``op`` (register | revoke) carrying a signed record."""
    return json.dumps({"op": op, "record": record.model_dump()}).encode()


async def apply_admin(
    directory: Directory, append: Append, data: bytes, publish: Publish | None = None
) -> AdminAnswer:
    """Verify and apply ``{"op": OP, "record": SignedRecord}``; log it; publish it.

    ``OP`` is ``register`` (a key record), ``revoke`` (a revocation), ``grant`` (a grant
    record signed by this site) or ``group`` (a group record signed by its owner).
    Records authenticate themselves (a key record signed by a trusted site, a revocation
    signed by the key's own site or this node's site, a grant by this site, a group by
    its owner): the sender needs no other authority. With ``publish``, the applied record
    also goes to the federation-wide directory. A malformed message raises
    ValidationError; a record that does not verify, the error of the check that failed.
    """
    try:
        message = json.loads(data)
        op = message["op"]
        signed = SignedRecord.model_validate(message["record"])
    except (ValueError, KeyError, TypeError, PydanticValidationError) as exc:
        raise ValidationError(f"malformed admin message: {exc}".splitlines()[0]) from exc
    event: BaseModel
    if op == "register":
        record = directory.register(signed)
        event, kid, what = KeyRegistered(record=signed), record.kid, record.identity
    elif op == "revoke":
        rev = directory.revoke(signed)
        event, kid, what = KeyRevoked(revocation=signed), rev.kid, rev.identity
    elif op == "grant":
        grant = directory.apply_grant(signed)
        if grant is None:
            raise ValidationError(
                "grant record changes nothing here (another site's, or not newer than held)"
            )
        event, kid, what = GrantRecorded(record=signed), signed.signer, grant.principal
    elif op == "group":
        group = directory.apply_group(signed)
        if group is None:
            raise ValidationError("group record is not newer than the one held")
        event, kid, what = GroupUpdated(record=signed), signed.signer, group.group
    else:
        raise ValidationError(f"unknown admin op {op!r} (register, revoke, grant or group)")
    stored = await append(event)
    log.info("directory.admin_applied", op=op, subject=what, kid=kid)
    if publish is not None:
        await publish(_KINDS[op], signed)
    return AdminAnswer(op=op, kid=kid, seq=stored[-1].seq)
