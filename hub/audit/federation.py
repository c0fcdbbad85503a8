"""The auditor's rules for the federation events a node logs (docs/crypto.md#directory-records).

* ``grant.recorded``: the grant record is signed by the log's site key and names the log's
  site (a node applies only its own site's grants);
* ``group.updated``: the group record is signed by a key the log registered before for
  its owner, not revoked or rotated away since (an owner whose site is not pinned leaves
  it unchecked, as for foreign key records), and the group is in the owner's name space;
* ``checkpoint.cosigned``: the cosignature is signed by the node key valid at that point,
  names this log as the witness and the checkpoint it carries.

Each failure is a ``trust`` finding at the event.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from hub.canonical import b64d
from hub.errors import FederationError
from hub.records import Checkpoint, Cosignature, GrantRecord, GroupRecord, SignedRecord, open_record

from .trust import Key, Trust, site_of

__all__ = ["FEDERATION_TYPES", "federation_event"]

#: The event types checked here.
FEDERATION_TYPES = frozenset({"grant.recorded", "group.updated", "checkpoint.cosigned"})


def federation_event(
    trust: Trust, pos: int, seq: int, kind: str, data: dict[str, Any], log_id: str | None
) -> None:
    """Check one federation event's signed records; a ``trust`` finding if one fails."""
    site_key, site = trust.site_key, trust.report.site
    if site_key is None or site is None:
        return
    try:
        problem = _problem(trust, kind, data, site_key, site, log_id)
    except (FederationError, ValidationError) as exc:
        problem = f"{kind} record does not verify: {exc}".splitlines()[0]
    if problem:
        trust.fail(pos, seq, "trust", problem)


def _problem(
    trust: Trust, kind: str, data: dict[str, Any], site_key: bytes, site: str, log_id: str | None
) -> str:
    if kind == "grant.recorded":
        grant = open_record(data["record"], GrantRecord, site_key)
        if grant.site != site:
            return f"grant.recorded: a grant of site {grant.site} in a log of site {site}"
        return ""
    if kind == "group.updated":
        signed = SignedRecord.model_validate(data["record"])
        owner = _key(trust, signed.signer)
        if owner is None:
            return f"group.updated: signed by key {signed.signer}, which the log never registered"
        if owner.status == "foreign":
            return ""  # signed by someone of a site this audit does not pin
        if owner.status in ("revoked", "rotated"):
            # a node counts a group only from an unrevoked key (hub.directory)
            return f"group.updated: signed by key {owner.kid} of {owner.identity}, {owner.status}"
        group = open_record(signed, GroupRecord, owner.sign_key)
        if group.owner != owner.identity or not group.group.startswith(f"group:{group.owner}/"):
            return f"group.updated: {group.group} of {group.owner} signed by {owner.identity}"
        return ""
    node = trust.node_key
    if node is None:
        return ""
    cosig = open_record(data["cosignature"], Cosignature, node.sign_key)
    cp = Checkpoint.model_validate_json(
        b64d(SignedRecord.model_validate(data["checkpoint"]).record)
    )
    if cosig.witness != log_id or (cosig.log, cosig.size, cosig.root) != (cp.log, cp.size, cp.root):
        return "checkpoint.cosigned: the cosignature is not this log's of the checkpoint it carries"
    if site_of(cp.log) == site:
        return "checkpoint.cosigned: a site does not witness its own logs"
    return ""


def _key(trust: Trust, kid: str) -> Key | None:
    return trust.keys.get(kid)
