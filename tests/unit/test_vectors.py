"""The published test vectors (tests/vectors/log-v2/index.json) give the verdict fedhub's
auditor reaches: clean for the honest log (its size, signatures and Merkle root), and for
each invalid log the first finding, by check, sequence number and position.

Another implementation checks itself against the same files (docs/audit.md, "Test vectors").
"""

from __future__ import annotations

import importlib.util
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


def _audit(vector: dict[str, Any], folder: Path = VECTORS) -> Any:
    receipts = [
        SignedRecord.model_validate_json((folder / name).read_text()) for name in vector["receipts"]
    ]
    pinned = {site: b64d(key) for site, key in vector["pinned"].items()}
    return audit_events(iter_log(folder / vector["log"]), trusted_sites=pinned, receipts=receipts)


@pytest.mark.parametrize("vector", INDEX["vectors"], ids=[v["name"] for v in INDEX["vectors"]])
def test_the_auditor_reaches_the_verdict_each_vector_states(vector: dict[str, Any]) -> None:
    _check(vector, VECTORS)


def _check(vector: dict[str, Any], folder: Path) -> None:
    report = _audit(vector, folder)
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
    expected = {"hash", "sequence", "chain", "log", "signature", "format", "time", "key"}
    expected |= {"checkpoint", "lifecycle"}
    assert checks >= expected | {"receipt", "trust"}


def test_the_published_seeds_give_the_published_keys() -> None:
    keys = json.loads((VECTORS / INDEX["keys"]).read_text())
    for entry in keys.values():
        public = bytes(nacl.signing.SigningKey(b64d(entry["seed"])).verify_key)
        assert public == b64d(entry["sign_key"])
        assert key_id(public) == entry["kid"]


def _shape(index: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What an index says apart from what depends on its keys and times."""
    out = []
    for v in index["vectors"]:
        expect = {k: x for k, x in v["expect"].items() if k != "root"}
        out.append((v["name"], v["log"], sorted(v["pinned"]), v["receipts"], expect))
    return out


def test_the_generator_writes_the_committed_vectors_afresh_with_the_same_verdicts(
    tmp_path: Path,
) -> None:
    """The vectors cannot drift from the script that made them: written again (new keys,
    new times), they list the same logs with the same expected verdicts, every file the
    committed index names exists, and the auditor reaches each fresh verdict too."""
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.main(tmp_path)
    fresh = json.loads((tmp_path / "index.json").read_text())
    assert _shape(fresh) == _shape(INDEX)
    written = {p.name for p in tmp_path.iterdir()}
    committed = {p.name for p in VECTORS.iterdir()} - {"generate.py", "__pycache__"}
    assert written == committed
    for vector in fresh["vectors"]:
        _check(vector, tmp_path)
