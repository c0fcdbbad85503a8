"""The published test vectors (tests/vectors/log-v2/index.json) give the verdict fedhub's
auditor reaches: clean for the honest log (its size, signatures and Merkle root), and for
each invalid log the first finding, by check, sequence number and position.

Another implementation checks itself against the same files (docs/audit.md, "Test vectors").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from hub.audit import audit_events
from hub.canonical import b64d
from hub.crypto import key_id
from hub.logfile import iter_log
from hub.records import SignedRecord

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "log-v2"
INDEX = json.loads((VECTORS / "index.json").read_text())


def _audit(vector: dict[str, Any]) -> Any:
    receipts = [
        SignedRecord.model_validate_json((VECTORS / name).read_text())
        for name in vector["receipts"]
    ]
    pinned = {site: b64d(key) for site, key in vector["pinned"].items()}
    return audit_events(iter_log(VECTORS / vector["log"]), trusted_sites=pinned, receipts=receipts)


@pytest.mark.parametrize("vector", INDEX["vectors"], ids=[v["name"] for v in INDEX["vectors"]])
def test_the_auditor_reaches_the_verdict_each_vector_states(vector: dict[str, Any]) -> None:
    report = _audit(vector)
    expect = vector["expect"]
    assert report.ok is expect["ok"], [f.line() for f in report.findings]
    if expect["ok"]:
        assert report.events == expect["events"]
        assert report.signatures_checked == expect["signatures"]
        assert report.root == expect["root"]
    else:
        first = report.first
        assert first is not None
        found = {"check": first.check, "seq": first.seq, "position": first.position}
        assert found == expect["first"], first.line()


def test_the_vectors_cover_an_honest_log_and_every_kind_of_first_finding() -> None:
    checks = {v["expect"]["first"]["check"] for v in INDEX["vectors"] if not v["expect"]["ok"]}
    assert {v["name"] for v in INDEX["vectors"] if v["expect"]["ok"]} == {"honest"}
    expected = {"hash", "sequence", "signature", "format", "time", "key", "lifecycle"}
    assert checks >= expected | {"receipt", "trust"}


def test_the_published_seeds_give_the_published_keys() -> None:
    keys = json.loads((VECTORS / INDEX["keys"]).read_text())
    for entry in keys.values():
        public = bytes(nacl.signing.SigningKey(b64d(entry["seed"])).verify_key)
        assert public == b64d(entry["sign_key"])
        assert key_id(public) == entry["kid"]
