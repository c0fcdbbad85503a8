"""Make the version 2 log test vectors (the files are committed; tests/unit/test_vectors.py
writes them afresh into a scratch folder and checks they say the same): an honest log
with its keys and a receipt, and invalid logs, each with the first finding a verifier
must report (check and sequence number), listed in index.json.

    python tests/vectors/log-v2/generate.py

Every log is written by the real append path (node.eventlog.EventLog); an invalid one is
the honest log (or a log written for the purpose) with one change, re-hashed and re-signed
with the node key where the change is to a body, so that exactly one rule is broken.
The expected findings below are stated by construction, not computed by the auditor.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hub.canonical import b64d, b64e, canonical_bytes
from hub.chain import leaf_hash, merkle_root
from hub.clock import now
from hub.crypto import sign
from hub.events import (
    DOMAIN_COMMIT,
    DOMAIN_EVENT,
    GrantAdded,
    KeyRegistered,
    KeyRevoked,
    KeyRotated,
    NodeStarted,
    NodeStopped,
    RequestAccepted,
    RequestCompleted,
    RequestProgress,
    RequestRejected,
    ResultFetched,
)
from hub.keys import KeyPair
from hub.logfile import export_line, parse_export_line
from hub.records import Checkpoint, Revocation, sign_record
from node.bootstrap import key_record
from node.eventlog import EventLog

HERE = Path(__file__).resolve().parent
SITE, NODE = "hereon", "node:hereon/n1"


def _accepted(rid: str) -> RequestAccepted:
    header = {
        "caller": "klaus@geomar",
        "function": "compute_sum",
        "id": rid,
        "module": "climate",
        "payload_hash": "ab" * 32,
        "payload_size": 123,
        "site": SITE,
    }
    return RequestAccepted(request_id=rid, header=b64e(canonical_bytes(header)), sig="c2lnbmF0dXJl")


def _completed(rid: str) -> RequestCompleted:
    return RequestCompleted(
        request_id=rid, result_hash="cd" * 32, result_size=9, duration_us=1500, object=rid
    )


def _honest(folder: Path, keys: dict[str, KeyPair]) -> tuple[list[bytes], Any]:
    """The honest log: genesis, a start, a grant, a registered key, two calls in one commit,
    a rejection, a checkpoint, a rotation of the node key and the revocation of the old
    one, one more call under the new key, a stop. Returns its lines and a receipt."""
    site, node, spare = keys["site:hereon"], keys[NODE], keys["spare"]
    db = folder / "honest.db"
    with EventLog(db, node, checkpoint_every=10_000) as log:
        log.initialize(
            SITE, site.sign_public, sign_record(key_record(node, SITE, "node"), site.signing_key)
        )
        log.append(NodeStarted(version="0.2.0", pid=4242))
        log.append(GrantAdded(principal="klaus@geomar", module="climate", by="admin@hereon"))
        other = keys["node:hereon/n2"]
        log.append(
            KeyRegistered(record=sign_record(key_record(other, SITE, "node"), site.signing_key))
        )
        log.append_many(
            [
                _accepted("req00000001"),
                _accepted("req00000002"),
                RequestProgress(request_id="req00000001", fraction_ppm=500_000),
                _completed("req00000001"),
                _completed("req00000002"),
            ]
        )
        log.append_many(
            [
                RequestRejected(
                    request_id="req00000003",
                    caller="mallory@geomar",
                    envelope_hash="ef" * 32,
                    code="denied",
                    reason="not granted",
                ),
                ResultFetched(request_id="req00000001", by="klaus@geomar"),
            ]
        )
        receipt = log.checkpoint()
        log.rotate_key(spare, sign_record(key_record(spare, SITE, "node"), site.signing_key))
        rev = Revocation(identity=NODE, kid=node.kid, time=now(), reason="rotated")
        log.append(KeyRevoked(revocation=sign_record(rev, site.signing_key)))
        log.append_many([_accepted("req00000004"), _completed("req00000004")])
        log.append(NodeStopped(reason="done"))
        log.export(folder / "honest.jsonl")
    lines = (folder / "honest.jsonl").read_bytes().splitlines(keepends=True)
    return lines, receipt.parsed()["data"]["checkpoint"]


def _resigned(line: bytes, key: KeyPair, old: bytes = b"", new: bytes = b"") -> bytes:
    """The line with ``old`` replaced by ``new`` in its body, re-hashed and signed by ``key``."""
    raw = parse_export_line(line, 1)
    body = raw.body.replace(old, new, 1) if old else raw.body
    h = leaf_hash(body)
    domain = DOMAIN_EVENT if body.endswith(b'"v":1}') else DOMAIN_COMMIT
    return export_line(h, sign(key.signing_key, domain, h), body)


def _signed_at(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if parse_export_line(line, 1).sig]


def _appended(lines: list[bytes], key: KeyPair, data: BaseModel) -> list[bytes]:
    """The lines with one more event after the last, of ``data``, named and signed by
    ``key`` as a commit of its own (dated as the last event)."""
    last = parse_export_line(lines[-1], 1)
    head = json.loads(last.body)
    fields = data.model_dump(mode="json")
    body = canonical_bytes(
        {
            "data": fields,
            "kid": key.kid,
            "log": head["log"],
            "prev": last.hash.hex(),
            "seq": head["seq"] + 1,
            "time": head["time"],
            "type": fields["type"],
            "v": 2,
        }
    )
    h = leaf_hash(body)
    return [*lines, export_line(h, sign(key.signing_key, DOMAIN_COMMIT, h), body)]


def _other_site_genesis(folder: Path, keys: dict[str, KeyPair]) -> list[bytes]:
    """A log of node:hereon/n1 whose genesis names site geomar, and geomar's key vouching
    for the node: only hereon may."""
    geomar, node = keys["site:geomar"], keys[NODE]
    with EventLog(folder / "geomar.db", node) as log:
        log.initialize(
            "geomar",
            geomar.sign_public,
            sign_record(key_record(node, "geomar", "node"), geomar.signing_key),
        )
        log.append(NodeStarted(version="0.2.0", pid=4243))
        log.export(folder / "geomar.jsonl")
    return (folder / "geomar.jsonl").read_bytes().splitlines(keepends=True)


def main(out: Path = HERE) -> None:
    """Write the vectors and index.json into ``out`` (a test writes them afresh elsewhere
    and compares: the committed files cannot drift from this script)."""

    def _write(name: str, lines: list[bytes]) -> str:
        (out / name).write_bytes(b"".join(lines))
        return name

    keys = {
        "site:hereon": KeyPair.generate("site:hereon"),
        "site:geomar": KeyPair.generate("site:geomar"),
        NODE: KeyPair.generate(NODE),
        "spare": KeyPair.generate(NODE),
        "node:hereon/n2": KeyPair.generate("node:hereon/n2"),
    }
    work = Path(tempfile.mkdtemp())
    try:
        honest, receipt = _honest(work, keys)
        cross = _other_site_genesis(work, keys)
    finally:
        shutil.rmtree(work)
    node, spare, other = keys[NODE], keys["spare"], keys["node:hereon/n2"]
    pinned = {SITE: b64e(keys["site:hereon"].sign_public)}
    both = {**pinned, "geomar": b64e(keys["site:geomar"].sign_public)}
    (out / "honest-receipt.json").write_text(json.dumps(receipt, indent=2) + "\n")
    signed = _signed_at(honest)
    hashes = [parse_export_line(line, 1).hash for line in honest]
    rotated = next(i for i, line in enumerate(honest) if b'"type":"key.rotated"' in line)
    calls = next(i for i, line in enumerate(honest) if b'"request_id":"req00000002"' in line)
    vectors: list[dict[str, Any]] = [
        {
            "name": "honest",
            "log": _write("honest.jsonl", honest),
            "pinned": pinned,
            "receipts": ["honest-receipt.json"],
            "expect": {
                "ok": True,
                "events": len(honest),
                "signatures": len(signed),
                "root": merkle_root(hashes).hex(),
            },
        }
    ]

    def invalid(
        name: str, lines: list[bytes], check: str, seq: int | None, position: int, **extra: Any
    ) -> None:
        vectors.append(
            {
                "name": name,
                "log": _write(f"{name}.jsonl", lines),
                "pinned": extra.pop("pinned", pinned),
                "receipts": extra.pop("receipts", []),
                "expect": {
                    "ok": False,
                    "first": {"check": check, "seq": seq, "position": position},
                },
                **extra,
            }
        )

    # a byte of a body changed: the stored hash no longer matches (the seq is not trusted)
    lines = list(honest)
    lines[calls] = lines[calls].replace(b'"sig":"c2lnbmF0dXJl"', b'"sig":"c2lnbmF0dXJm"', 1)
    invalid("changed-body", lines, "hash", None, calls + 1)
    # an event deleted: the next one is out of place
    lines = honest[:calls] + honest[calls + 1 :]
    invalid("deleted-event", lines, "sequence", calls + 2, calls + 1)
    # a signature made by another node key the site vouched for
    lines = list(honest)
    lines[signed[1]] = _resigned(honest[signed[1]], other)
    invalid("signature-by-another-key", lines, "signature", signed[1] + 1, signed[1] + 1)
    # the log cut inside a commit: its last events are covered by no signature
    lines = honest[: calls + 2]
    invalid("unsigned-tail", lines, "signature", calls, calls)
    # a body that is valid JSON but not canonical, signed by the node key
    lines = list(honest)
    last = len(lines) - 1
    lines[last] = _resigned(honest[last], spare, b'"reason":"done"', b'"reason": "done"')
    invalid("not-canonical", lines, "format", last + 1, last + 1)
    # an event type no version defines, signed by the node key
    lines = list(honest)
    lines[last] = _resigned(honest[last], spare, b'"node.stopped"', b'"node.paused"')
    lines[last] = _resigned(lines[last], spare, b'"node.stopped"', b'"node.paused"')
    invalid("unknown-type", lines, "format", last + 1, last + 1)
    # a version 1 body after version 2 ones
    lines = list(honest)
    lines[last] = _resigned(honest[last], spare, b'"v":2}', b'"v":1}')
    invalid("version-1-after-2", lines, "format", last + 1, last + 1)
    # an event dated before the one before it
    lines = list(honest)
    time = json.loads(parse_export_line(honest[last], 1).body)["time"].encode()
    lines[last] = _resigned(honest[last], spare, time, b"2000-01-01T00:00:00.000000Z")
    invalid("time-backwards", lines, "time", last + 1, last + 1)
    # an event after the rotation still naming (and signed by) the old key
    lines = list(honest)
    after = rotated + 1
    lines[after] = _resigned(honest[after], node, spare.kid.encode(), node.kid.encode())
    invalid("old-key-after-rotation", lines, "key", after + 1, after + 1)
    # a request completed twice (appended by the node, signed and all)
    lines = list(honest)
    lines[last] = _resigned(
        honest[last],
        spare,
        b'{"data":{"reason":"done","type":"node.stopped"}',
        b'{"data":'
        + json.dumps(
            _completed("req00000004").model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode(),
    )
    lines[last] = _resigned(
        lines[last], spare, b'"type":"node.stopped"', b'"type":"request.completed"'
    )
    invalid("completed-twice", lines, "lifecycle", last + 1, last + 1)
    # a receipt signed by a node key that is not this log's (the other node's, registered)
    cp = Checkpoint(
        log=NODE, size=len(honest), root=merkle_root(hashes).hex(), time=now(), kid=other.kid
    )
    forged = sign_record(cp, other.signing_key).model_dump()
    (out / "forged-receipt.json").write_text(json.dumps(forged, indent=2) + "\n")
    vectors.append(
        {
            "name": "receipt-by-another-node",
            "log": "honest.jsonl",
            "pinned": pinned,
            "receipts": ["forged-receipt.json"],
            "expect": {
                "ok": False,
                "first": {"check": "receipt", "seq": None, "position": len(honest) + 1},
            },
        }
    )
    # the honest log audited with the other site pinned under its name: trust fails at once
    vectors.append(
        {
            "name": "site-key-not-pinned",
            "log": "honest.jsonl",
            "pinned": {SITE: both["geomar"]},
            "receipts": [],
            "expect": {"ok": False, "first": {"check": "trust", "seq": 1, "position": 1}},
        }
    )
    # an event whose prev is not the hash of the one before (re-signed by the node key)
    lines = list(honest)
    prev = json.loads(parse_export_line(honest[last], 1).body)["prev"].encode()
    lines[last] = _resigned(honest[last], spare, prev, b"0" * 64)
    invalid("chain-broken", lines, "chain", last + 1, last + 1)
    # an event naming another log id (the node's second process), re-signed by the node key
    lines = list(honest)
    lines[last] = _resigned(
        honest[last], spare, b'"log":"' + NODE.encode(), b'"log":"' + NODE.encode() + b"#2"
    )
    invalid("another-log", lines, "log", last + 1, last + 1)
    # a checkpoint event whose record (signed by the node key) has another root: the
    # checkpoint check fails there (the next event's prev no longer matches: later)
    at = next(i for i, line in enumerate(honest) if b'"type":"checkpoint","v"' in line)
    event = json.loads(parse_export_line(honest[at], 1).body)
    record = json.loads(b64d(event["data"]["checkpoint"]["record"]))
    bad = sign_record(Checkpoint.model_validate({**record, "root": "00" * 32}), node.signing_key)
    old_cp = json.dumps(event["data"]["checkpoint"], sort_keys=True, separators=(",", ":"))
    new_cp = json.dumps(bad.model_dump(), sort_keys=True, separators=(",", ":"))
    lines = list(honest)
    lines[at] = _resigned(honest[at], node, old_cp.encode(), new_cp.encode())
    invalid("checkpoint-wrong-root", lines, "checkpoint", at + 1, at + 1)
    # after the old node key's revocation, a rotation back to it (with the site's record
    # for it, signed by the current key): a revoked key never signs again
    back = KeyRotated(
        identity=NODE,
        old_kid=spare.kid,
        record=sign_record(key_record(node, SITE, "node"), keys["site:hereon"].signing_key),
    )
    lines = _appended(honest, spare, back)
    invalid("rotation-to-a-revoked-key", lines, "trust", len(lines), len(lines))
    # a node of hereon vouched for by geomar, both sites pinned: only hereon may vouch
    invalid("node-vouched-by-another-site", cross, "trust", 1, 1, pinned=both)
    # an empty log proves nothing
    invalid("empty", [], "format", None, 1)
    public = {
        name: {**pair.public.to_json(), "seed": b64e(bytes(pair.signing_key))}
        for name, pair in keys.items()
    }
    (out / "keys.json").write_text(json.dumps(public, indent=2) + "\n")
    index = {
        "v": 1,
        "about": "fedhub event log version 2 test vectors: docs/audit.md#test-vectors",
        "keys": "keys.json",
        "vectors": vectors,
    }
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
