"""JSON Schemas of every wire message, record and event (the source of ``schemas/``).

``fedhub-node schemas export`` writes them, one file per type, together with the argument
and return schemas of a node's modules; a test fails when the committed files drift from
what the models say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hub import answers, envelopes, events, proofs, records, results_wire

__all__ = ["protocol_schemas", "render", "write_schemas"]

_MODELS: dict[str, type[BaseModel]] = {
    "wire/request-header": envelopes.RequestHeader,
    "wire/reply-header": envelopes.ReplyHeader,
    "wire/control-header": envelopes.ControlHeader,
    "wire/stored-result": envelopes.StoredResult,
    "answers/module-info": answers.ModuleDescription,
    "answers/request-status": answers.RequestStatus,
    "answers/cancel": answers.CancelAnswer,
    "answers/admin": answers.AdminAnswer,
    "answers/request-record": answers.RequestRecord,
    "answers/requests": answers.RequestsAnswer,
    "answers/result-wrap": answers.ResultWrap,
    "answers/recipient-keys": answers.RecipientKeys,
    "answers/share": answers.ShareAnswer,
    "answers/deleted": answers.DeletedAnswer,
    "answers/tags": answers.TagsAnswer,
    "answers/keep": answers.KeepAnswer,
    "answers/provenance": answers.ProvenanceAnswer,
    "wire/catalog-keep-args": results_wire.KeepArgs,
    "wire/catalog-tag-args": results_wire.TagArgs,
    "wire/catalog-header": results_wire.CatalogHeader,
    "wire/catalog-list-filter": results_wire.ListFilter,
    "wire/catalog-share-args": results_wire.ShareArgs,
    "wire/catalog-slice-args": results_wire.SliceArgs,
    "records/key-record": records.KeyRecord,
    "records/revocation": records.Revocation,
    "records/checkpoint": records.Checkpoint,
    "records/signed-record": records.SignedRecord,
    "events/event": events.EventBody,
    "proofs/event-proof": proofs.EventProof,
    "proofs/consistency-proof": proofs.ConsistencyProof,
}


def protocol_schemas() -> dict[str, dict[str, Any]]:
    """Schema name → JSON Schema, for every wire message, record and event type."""
    out = {name: model.model_json_schema() for name, model in _MODELS.items()}
    for data_model in (
        events.LogCreated,
        events.NodeStarted,
        events.NodeStopped,
        events.RequestReceived,
        events.RequestRejected,
        events.RequestAccepted,
        events.RequestStarted,
        events.RequestProgress,
        events.RequestCompleted,
        events.RequestFailed,
        events.ResultStored,
        events.ResultLost,
        events.ResultFetched,
        events.ResultShared,
        events.ResultUnshared,
        events.ResultTagged,
        events.ResultKeepShortened,
        events.ResultExpired,
        events.ResultDeleted,
        events.ResultSliced,
        events.KeyRegistered,
        events.KeyRotated,
        events.KeyRevoked,
        events.GrantAdded,
        events.GrantRemoved,
        events.CheckpointData,
    ):
        kind = data_model.model_fields["type"].default
        out[f"events/{kind}"] = data_model.model_json_schema()
    return out


def render(schema: dict[str, Any]) -> str:
    """The committed text form of a schema (stable: sorted keys, two-space indent)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(target: Path, extra: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """Write every schema below ``target`` (``<name>.json``); return the paths written."""
    written = []
    for name, schema in {**protocol_schemas(), **(extra or {})}.items():
        path = target / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(schema))
        written.append(path)
    return written
