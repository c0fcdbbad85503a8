"""Proofs checked offline: one event under a signed checkpoint, one checkpoint extending
another, and the evidence of a fork -- from logs written by the real append path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.logs import SITE, Keys, build_log, open_new_log, request_events
from pydantic import ValidationError

from hub.canonical import b64d, b64e, canonical_bytes
from hub.chain import leaf_hash, merkle_root
from hub.clock import now
from hub.errors import (
    CanonicalError,
    ChainError,
    CheckpointError,
    ConfigError,
    IntegrityError,
    SignatureError,
)
from hub.events import NodeStarted, NodeStopped
from hub.keys import KeyPair
from hub.proofs import (
    ConsistencyProof,
    EventProof,
    build_consistency_proof,
    build_event_proof,
    parse_proof,
    verify_consistency_proof,
    verify_event_proof,
)
from hub.records import Checkpoint, SignedRecord, sign_record
from node.bootstrap import key_record
from node.eventlog import EventLog
from node.proving import consistency_proof_of, event_proof_of

STARTED = NodeStarted(version="0.2.0", pid=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys, list[SignedRecord]]:
    log = build_log(tmp_path_factory.mktemp("log"), requests=12)
    return log.db, log.keys, log.receipts


def _prove(db: Path, seq: int) -> EventProof:
    with EventLog.open_readonly(db) as log:
        return event_proof_of(log, seq, hint="checkpoint it")


def _covered(db: Path) -> int:
    with EventLog.open_readonly(db) as log:
        head = log.head()
        assert head is not None
        return _size(head)


def _size(signed: SignedRecord) -> int:
    return Checkpoint.model_validate_json(b64d(signed.record)).size


# --- one event ---------------------------------------------------------------------------


def test_every_covered_event_is_proven_offline_signed_or_not(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    db, keys, _ = built
    with EventLog.open_readonly(db) as log:
        events = list(log.events(limit=_covered(db)))
    assert any(not ev.signed for ev in events) and any(ev.signed for ev in events)
    for ev in events:
        text = _prove(db, ev.seq).model_dump_json(indent=2)
        proof = parse_proof(text)
        assert isinstance(proof, EventProof)
        verdict = verify_event_proof(proof, keys.trusted)
        assert (verdict.seq, verdict.type) == (ev.seq, ev.type)
        assert verdict.size >= ev.seq
        assert "(pinned)" in verdict.diagnostics()


def test_a_proof_names_the_first_checkpoint_that_covers_the_event(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    db, _, receipts = built
    sizes = [_size(r) for r in receipts]
    seq = sizes[0] + 1
    proof = _prove(db, seq)
    assert proof.checkpoint == receipts[1]
    assert len(proof.path) >= 1


def test_every_single_flipped_byte_of_a_proof_file_fails(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    db, keys, _ = built
    data = _prove(db, 5).model_dump_json(indent=2).encode()
    verify_event_proof(_parse(data), keys.trusted)  # the untouched file is fine
    passed = []
    for i in range(len(data)):
        for mask in (0x01, 0x20):
            flipped = data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]
            try:
                verify_event_proof(_parse(flipped), keys.trusted)
            except (IntegrityError, ValidationError):
                continue
            passed.append((i, mask, flipped[max(0, i - 20) : i + 20]))
    assert passed == []


def _parse(data: bytes) -> EventProof:
    proof = parse_proof(data)
    assert isinstance(proof, EventProof)
    return proof


def test_a_proof_is_refused_unless_its_site_key_is_pinned(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    db, keys, _ = built
    proof = _prove(db, 3)
    stranger = KeyPair.generate("site:hereon")
    with pytest.raises(SignatureError, match="pinned key"):
        verify_event_proof(proof, {SITE: stranger.sign_public})
    with pytest.raises(SignatureError, match="not pinned"):
        verify_event_proof(proof, {"geomar": keys.site.sign_public})
    with pytest.raises(ConfigError):
        verify_event_proof(proof, None)
    unsafe = verify_event_proof(proof, None, trust_log_keys=True)
    assert "UNSAFE" in unsafe.diagnostics()


def test_a_proof_forged_under_another_site_key_fails_even_when_it_names_that_key(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    """An attacker with a site key of their own vouches for a node key of theirs, signs a
    checkpoint over a made-up event and names their site key: a verifier pinning the real
    site key refuses it."""
    db, keys, _ = built
    real = _prove(db, 3)
    evil_site = KeyPair.generate("site:hereon")
    evil_node = KeyPair.generate("node:hereon/n1")
    path = db.parent / "forged.db"
    with EventLog(path, evil_node, checkpoint_every=1000) as forged:
        forged.initialize(
            SITE,
            evil_site.sign_public,
            sign_record(key_record(evil_node, SITE, "node"), evil_site.signing_key),
        )
        forged.append_many([STARTED, NodeStopped()])
        forged.checkpoint()
        proof = event_proof_of(forged, 3, hint="")
    assert verify_event_proof(proof, {SITE: evil_site.sign_public}).seq == 3
    with pytest.raises(SignatureError):
        verify_event_proof(proof, keys.trusted)
    # the real site key named, the forged node key record kept: its signature fails
    mixed = proof.model_copy(update={"site_key": real.site_key})
    with pytest.raises(SignatureError):
        verify_event_proof(mixed, keys.trusted)
    # the real node key record, the forged checkpoint: not signed by that key
    swapped = proof.model_copy(update={"site_key": real.site_key, "node_key": real.node_key})
    with pytest.raises(SignatureError):
        verify_event_proof(swapped, keys.trusted)


def test_a_proof_with_another_events_body_or_position_fails(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    db, keys, _ = built
    five, six = _prove(db, 5), _prove(db, 6)
    with pytest.raises(ChainError):
        verify_event_proof(
            five.model_copy(update={"event": six.event.model_copy(update={"seq": 5})}),
            keys.trusted,
        )
    with pytest.raises((ChainError, CheckpointError)):
        verify_event_proof(five.model_copy(update={"event": six.event}), keys.trusted)
    with pytest.raises(CheckpointError):
        verify_event_proof(five.model_copy(update={"path": six.path}), keys.trusted)


def test_proving_an_event_no_checkpoint_covers_yet_says_how_to_add_one(tmp_path: Path) -> None:
    keys = Keys.generate()
    with open_new_log(tmp_path / "events.db", keys, checkpoint_every=1000) as log:
        log.append_many([STARTED, NodeStopped()])
        with pytest.raises(ConfigError, match="no checkpoint covers event 2") as err:
            event_proof_of(log, 2, hint="run: fedhub-node log checkpoint --config site.toml")
        assert "fedhub-node log checkpoint" in err.value.diagnostics()
        with pytest.raises(ConfigError, match="not 9"):
            event_proof_of(log, 9, hint="")


def test_a_proof_file_that_is_not_a_proof_is_unreadable() -> None:
    for data in (b"", b"[]", b'{"kind":"event-proof"}', b'{"kind":"other"}', b"\xff"):
        with pytest.raises(CanonicalError):
            parse_proof(data)


# --- two checkpoints -----------------------------------------------------------------------


def test_a_log_that_grew_extends_each_of_its_earlier_checkpoints(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    """The test log rotates its node key halfway: later checkpoints are signed by the new
    key, earlier ones by the old one; both key records travel in the proof."""
    db, keys, receipts = built
    assert {r.signer for r in receipts} == {keys.node.kid, keys.spare.kid}
    with EventLog.open_readonly(db) as log:
        for old in receipts:
            proof = parse_proof(consistency_proof_of(log, old).model_dump_json())
            assert isinstance(proof, ConsistencyProof)
            verdict = verify_consistency_proof(proof, keys.trusted)
            assert verdict.ok, verdict.diagnostics()
            assert verdict.new_size == _size(receipts[-1])
            assert "extends" in verdict.diagnostics()


def test_a_growing_log_proves_each_checkpoint_from_the_last_as_from_all_its_leaves(
    tmp_path: Path,
) -> None:
    """A node proves each new checkpoint from the one before with subtree roots it keeps
    between proofs (so that a proof does not cost more as the log grows); each proof is
    the one built from every leaf, also across a rotation of the node key."""
    keys = Keys.generate()
    with open_new_log(tmp_path / "events.db", keys, checkpoint_every=97) as log:
        proven: list[tuple[SignedRecord, ConsistencyProof]] = []
        last: SignedRecord | None = None
        for i in range(700):
            log.append_many(request_events(f"req{i:05d}"))
            if i == 400:
                log.rotate_key(keys.spare, keys.vouch(keys.spare))
            head = log.head()
            if head is not None and head != last:
                proven.append((last or head, consistency_proof_of(log, last or head, head)))
                last = head
        hashes = [ev.hash for ev in log.events()]
        assert log.size > 1300 and len(proven) > 10
    for old, proof in proven:
        expected = build_consistency_proof(
            log=proof.log,
            site=SITE,
            site_key=keys.site.sign_public,
            node_keys=proof.node_keys,
            old=old,
            new=proof.new,
            leaves=hashes[: _size(proof.new)],
        )
        assert proof == expected
        assert verify_consistency_proof(proof, keys.trusted).ok
    assert {p.new.signer for _, p in proven} == {keys.node.kid, keys.spare.kid}


def _forked(tmp_path: Path, *, same_size: bool) -> tuple[Keys, Path, Path]:
    """Two copies of one log, the same up to a point, then a different event at the same
    seq in each, both checkpointed with the same node key."""
    keys = Keys.generate()
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    with open_new_log(a, keys, checkpoint_every=1000) as log:
        log.append_many([STARTED, *request_events("req00001")])
        log.checkpoint()
    shutil.copyfile(a, b)
    with EventLog(a, keys.node, checkpoint_every=1000) as log:
        log.append_many(request_events("req00002"))
        log.checkpoint()
    with EventLog(b, keys.node, checkpoint_every=1000) as log:
        log.append_many(request_events("req00003"))
        if not same_size:
            log.append_many(request_events("req00004"))
        log.checkpoint()
    return keys, a, b


@pytest.mark.parametrize("same_size", [True, False])
def test_a_forked_log_yields_the_evidence_of_the_fork(tmp_path: Path, same_size: bool) -> None:
    keys, a, b = _forked(tmp_path, same_size=same_size)
    with EventLog.open_readonly(a) as log:
        old = log.head()
    assert old is not None
    with EventLog.open_readonly(b) as log:
        proof = consistency_proof_of(log, old)
    verdict = verify_consistency_proof(proof, keys.trusted)
    assert not verdict.ok
    assert verdict.fork is not None
    assert verdict.fork.old == old and verdict.fork.new == proof.new
    assert verdict.old_root != verdict.new_root
    assert "FORK" in verdict.diagnostics()
    expected = "different roots" if same_size else "does not extend"
    assert expected in verdict.fork.reason


def test_a_consistency_proof_is_refused_unless_both_checkpoints_are_vouched_for(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    db, keys, receipts = built
    with EventLog.open_readonly(db) as log:
        proof = consistency_proof_of(log, receipts[0])
    with pytest.raises(SignatureError):
        verify_consistency_proof(proof, {SITE: KeyPair.generate("site:x").sign_public})
    only_new_key = proof.model_copy(update={"node_keys": proof.node_keys[1:]})
    with pytest.raises(SignatureError, match="no node key"):
        verify_consistency_proof(only_new_key, keys.trusted)
    other_log = proof.model_copy(update={"log": "node:hereon/n2"})
    with pytest.raises(SignatureError):
        verify_consistency_proof(other_log, keys.trusted)
    backwards = proof.model_copy(update={"old": proof.new, "new": proof.old})
    with pytest.raises(CheckpointError, match="larger"):
        verify_consistency_proof(backwards, keys.trusted)


def test_a_site_key_named_in_base64_with_unused_bits_set_is_refused(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    db, keys, _ = built
    proof = _prove(db, 2)
    text = b64e(keys.site.sign_public)
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(text[-1])
    other = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1]
    with pytest.raises(CanonicalError, match="canonical"):
        verify_event_proof(proof.model_copy(update={"site_key": text[:-1] + other}), keys.trusted)


def _synthetic_proof(keys: Keys, signer: KeyPair, record: SignedRecord, log_id: str) -> EventProof:
    """A proof built by the pure builder over three made-up bodies of ``log_id``, its
    checkpoint signed by ``signer`` whose key record is ``record``."""
    bodies = [canonical_bytes({"log": log_id, "seq": i, "type": "x"}) for i in (1, 2, 3)]
    leaves = [leaf_hash(b) for b in bodies]
    cp = Checkpoint(log=log_id, size=3, root=merkle_root(leaves).hex(), time=now(), kid=signer.kid)
    return build_event_proof(
        log=log_id,
        site=SITE,
        site_key=keys.site.sign_public,
        node_key=record,
        checkpoint=sign_record(cp, signer.signing_key),
        seq=2,
        body=bodies[1],
        leaves=leaves,
    )


def test_a_checkpoint_signed_by_another_node_or_a_user_of_the_same_site_is_refused() -> None:
    keys = Keys.generate()
    assert (
        verify_event_proof(
            _synthetic_proof(keys, keys.node, keys.vouch(keys.node), "node:hereon/n1"), keys.trusted
        ).seq
        == 2
    )
    other = _synthetic_proof(keys, keys.other_node, keys.vouch(keys.other_node), "node:hereon/n1")
    with pytest.raises(SignatureError, match="not as a node key of node:hereon/n1"):
        verify_event_proof(other, keys.trusted)
    user = KeyPair.generate("anna@hereon")
    as_user = _synthetic_proof(keys, user, keys.vouch(user, "user"), "node:hereon/n1")
    with pytest.raises(SignatureError, match="user"):
        verify_event_proof(as_user, keys.trusted)


@pytest.mark.parametrize(
    ("log_id", "accepted"),
    [
        ("node:hereon/n1#2", True),
        ("node:hereon/n1#17", True),
        ("node:hereon/n10", False),
        ("node:hereon/n1#", False),
        ("node:hereon/n1#x", False),
        ("node:hereon/n1#02", False),
    ],
)
def test_the_log_of_another_process_of_the_same_node_is_proven_by_its_key_and_nothing_else(
    log_id: str, accepted: bool
) -> None:
    keys = Keys.generate()
    proof = _synthetic_proof(keys, keys.node, keys.vouch(keys.node), log_id)
    if accepted:
        assert verify_event_proof(proof, keys.trusted).log == log_id
    else:
        with pytest.raises(SignatureError):
            verify_event_proof(proof, keys.trusted)


def test_a_proof_file_naming_a_key_twice_is_unreadable(
    built: tuple[Path, Keys, list[SignedRecord]],
) -> None:
    """Parsers disagree on which of two values counts; the verifier reads neither."""
    db, keys, _ = built
    text = _prove(db, 5).model_dump_json()
    verify_event_proof(_parse(text.encode()), keys.trusted)
    twice = '{"log":"node:hereon/n2",' + text[1:]
    with pytest.raises(CanonicalError, match="key 'log' appears twice"):
        parse_proof(twice)
    nested = text.replace('"event":{', '"event":{"seq":1,', 1)
    with pytest.raises(CanonicalError, match="key 'seq' appears twice"):
        parse_proof(nested)


V1 = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "v1"


def test_every_event_of_a_v1_log_continued_in_v2_is_proven_under_its_first_checkpoint(
    tmp_path: Path,
) -> None:
    """The previous release's log (checkpoints signed by the node key before and after its
    rotation), then version 2 commits of this release: every covered event, of either
    version, signed or not, and the checkpoint events themselves."""
    import json

    from hub.keys import load_public_file

    shutil.copytree(V1, tmp_path / "v1")
    db = tmp_path / "v1" / "events.db"
    node_key = KeyPair.from_file_json(json.loads((V1 / "node-key.json").read_text()))
    site = load_public_file(V1 / "site-hereon.pub")
    trusted = {site.identity.removeprefix("site:"): site.sign_key}
    with EventLog(db, node_key, checkpoint_every=1000) as log:
        log.append_many([STARTED, *request_events("v2req00001"), NodeStopped()])
        log.checkpoint()
    with EventLog.open_readonly(db) as log:
        events = list(log.events(limit=_covered(db)))
        signers = {_prove(db, ev.seq).checkpoint.signer for ev in events}
    assert {ev.parsed()["v"] for ev in events} == {1, 2}
    assert any(not ev.signed for ev in events) and len(signers) == 2
    for ev in events:
        verdict = verify_event_proof(_parse(_prove(db, ev.seq).model_dump_json().encode()), trusted)
        assert (verdict.seq, verdict.type) == (ev.seq, ev.type)


def test_events_are_proven_under_checkpoints_of_every_shape_of_tree(tmp_path: Path) -> None:
    """Checkpoints at sizes that are and are not powers of two, commits of one to four
    events: the first event, the last covered one and each in between."""
    keys = Keys.generate()
    db = tmp_path / "events.db"
    with open_new_log(db, keys, checkpoint_every=100_000) as log:
        log.append(STARTED)
        log.checkpoint()  # size 2
        for i in range(24):
            log.append_many(request_events(f"r{i:07d}")[: i % 4 + 1])
            if i % 3 == 0:
                log.checkpoint()
        while log.size < 128:
            log.append(STARTED)
        log.checkpoint()  # size 128
        log.append_many([STARTED] * 3)
        log.checkpoint()
        sizes = [int(s) for (s,) in log.db.execute("SELECT size FROM checkpoints")]
        last = log.size - 1
    assert any(s & (s - 1) == 0 for s in sizes) and any(s & (s - 1) for s in sizes)
    for seq in range(1, last + 1):
        verdict = verify_event_proof(
            _parse(_prove(db, seq).model_dump_json().encode()), keys.trusted
        )
        assert verdict.seq == seq and verdict.size in sizes and verdict.size >= seq


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"signed": 5}',
        '{"kind": "event-proof"}',
        '{"record": "!!", "sig": "x", "signer": "y"}',
        '{"record": "eyJ2IjoxfQ", "sig": "c2ln", "signer": "0123456789abcdef0123"}',
    ],
    ids=[
        "empty",
        "a list",
        "a number",
        "a proof without checkpoint",
        "not base64",
        "no checkpoint",
    ],
)
def test_a_file_that_holds_no_signed_checkpoint_is_refused_in_one_line(
    tmp_path: Path, text: str
) -> None:
    from node.proving import read_checkpoint

    path = tmp_path / "cp.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        read_checkpoint(path)
    line = refused.value.diagnostics()
    assert "\n" not in line and f"cannot read a signed checkpoint from {path}" in line
