"""The auditor checks the signed records of the federation events a node logs."""

from __future__ import annotations

from pathlib import Path

from helpers.logs import Keys, open_new_log

from hub.audit import audit_events
from hub.canonical import b64e
from hub.clock import now
from hub.events import (
    CheckpointCosigned,
    GrantRecorded,
    GroupUpdated,
    KeyRegistered,
    KeyRevoked,
    KeyRotated,
    NodeStarted,
)
from hub.keys import KeyPair
from hub.logfile import iter_sqlite
from hub.records import (
    Checkpoint,
    Cosignature,
    GrantRecord,
    GroupRecord,
    KeyRecord,
    Revocation,
    sign_record,
)
from node.bootstrap import key_record

OTHER_SITE = KeyPair.generate("site:geomar")
ANNA = KeyPair.generate("anna@hereon")
STARTED = NodeStarted(version="0", pid=1)


def grant(signer: KeyPair, site: str = "hereon") -> GrantRecorded:
    rec = GrantRecord(site=site, principal="klaus@geomar", module="climate", serial=1, time=now())
    return GrantRecorded(record=sign_record(rec, signer.signing_key))


def anna_record(keys: Keys) -> KeyRegistered:
    rec = KeyRecord(
        identity=ANNA.identity,
        role="user",
        site="hereon",
        kid=ANNA.kid,
        sign_key=b64e(ANNA.sign_public),
        box_key=b64e(ANNA.box_public),
        valid_from=now(),
    )
    return KeyRegistered(record=sign_record(rec, keys.site.signing_key))


def group(signer: KeyPair, owner: str = "anna@hereon") -> GroupUpdated:
    rec = GroupRecord(group=f"group:{owner}/b1", owner=owner, members=(), serial=1, time=now())
    return GroupUpdated(record=sign_record(rec, signer.signing_key))


def cosigned(keys: Keys, signer: KeyPair, witness: str = "node:hereon/n1") -> CheckpointCosigned:
    other = KeyPair.generate("node:geomar/n1")
    cp = Checkpoint(log="node:geomar/n1", size=3, root="ab" * 32, time=now(), kid=other.kid)
    signed_cp = sign_record(cp, other.signing_key)
    cosig = Cosignature(
        log=cp.log,
        size=cp.size,
        root=cp.root,
        checkpoint_time=cp.time,
        witness=witness,
        time=now(),
        kid=signer.kid,
    )
    return CheckpointCosigned(
        checkpoint=signed_cp, cosignature=sign_record(cosig, signer.signing_key)
    )


def audit(tmp_path: Path, keys: Keys, *events: object) -> list[tuple[int | None, str, str]]:
    tmp_path.mkdir(exist_ok=True)
    with open_new_log(tmp_path / "events.db", keys) as log:
        log.append_many([STARTED, *events])  # type: ignore[list-item]
    report = audit_events(iter_sqlite(tmp_path / "events.db"), trusted_sites=keys.trusted)
    return [(f.seq, f.check, f.message) for f in report.findings]


def test_honest_grant_group_and_cosignature_events_audit_clean(tmp_path: Path) -> None:
    keys = Keys.generate()
    events = [grant(keys.site), anna_record(keys), group(ANNA), cosigned(keys, keys.node)]
    assert audit(tmp_path, keys, *events) == []


def test_a_grant_signed_by_another_site_is_a_trust_finding(tmp_path: Path) -> None:
    keys = Keys.generate()
    [(seq, check, message)] = audit(tmp_path, keys, grant(OTHER_SITE, site="hereon"))
    assert (seq, check) == (3, "trust") and "does not verify" in message


def test_another_sites_grant_in_this_log_is_a_trust_finding(tmp_path: Path) -> None:
    keys = Keys.generate()
    [(seq, check, message)] = audit(tmp_path, keys, grant(keys.site, site="geomar"))
    assert (seq, check) == (3, "trust") and "of site geomar" in message


def test_a_group_signed_by_an_unregistered_or_wrong_key_is_a_trust_finding(tmp_path: Path) -> None:
    keys = Keys.generate()
    found = audit(tmp_path, keys, group(ANNA), anna_record(keys), group(ANNA, owner="bob@hereon"))
    assert [(seq, check) for seq, check, _ in found] == [(3, "trust"), (5, "trust")]
    assert "never registered" in found[0][2]


def test_a_cosignature_not_made_by_this_node_is_a_trust_finding(tmp_path: Path) -> None:
    keys = Keys.generate()
    found = audit(
        tmp_path, keys, cosigned(keys, keys.other_node), cosigned(keys, keys.node, "node:hereon/n9")
    )
    assert [(seq, check) for seq, check, _ in found] == [(3, "trust"), (4, "trust")]


def test_a_group_signed_by_a_revoked_or_rotated_key_of_its_owner_is_a_trust_finding(
    tmp_path: Path,
) -> None:
    """A node counts a group record only from an unrevoked key of its owner: a log showing
    one applied after the key's revocation, or after anna moved to a new key, is refused."""
    keys = Keys.generate()
    revoked = Revocation(identity=ANNA.identity, kid=ANNA.kid, time=now(), reason="lost")
    found = audit(
        tmp_path / "revoked",
        keys,
        anna_record(keys),
        group(ANNA),
        KeyRevoked(revocation=sign_record(revoked, keys.site.signing_key)),
        group(ANNA),
    )
    assert [(seq, check) for seq, check, _ in found] == [(6, "trust")]
    assert f"signed by key {ANNA.kid} of anna@hereon, revoked" in found[0][2]
    new = KeyPair.generate(ANNA.identity)
    moved = KeyRotated(
        identity=ANNA.identity,
        old_kid=ANNA.kid,
        record=sign_record(key_record(new, "hereon", "user"), keys.site.signing_key),
    )
    db = tmp_path / "rotated.db"
    with open_new_log(db, keys) as log:
        log.append_many([STARTED, anna_record(keys)])
        log.append(moved)  # every key.rotated is a commit of its own (docs/log-format.md)
        log.append_many([group(ANNA), group(new)])
    report = audit_events(iter_sqlite(db), trusted_sites=keys.trusted)
    assert [(f.seq, f.check) for f in report.findings] == [(5, "trust")]
    assert f"signed by key {ANNA.kid} of anna@hereon, rotated" in report.findings[0].message


def test_a_group_signed_by_a_key_its_owner_replaced_is_a_trust_finding(tmp_path: Path) -> None:
    """A key record that ``replaces`` an older key of the same person retires it, as a node's
    directory does: a group signed by the old key after that was not counted."""
    keys = Keys.generate()
    new = KeyPair.generate(ANNA.identity)
    rec = key_record(new, "hereon", "user").model_copy(update={"replaces": ANNA.kid})
    replacing = KeyRegistered(
        record=sign_record(KeyRecord.model_validate(rec.model_dump()), keys.site.signing_key)
    )
    found = audit(
        tmp_path, keys, anna_record(keys), group(ANNA), replacing, group(ANNA), group(new)
    )
    assert [(seq, check) for seq, check, _ in found] == [(6, "trust")]
    assert f"signed by key {ANNA.kid} of anna@hereon, rotated" in found[0][2]
