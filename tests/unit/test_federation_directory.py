"""Records of the federation-wide directory: who decides grants, groups and people."""

from __future__ import annotations

import pytest
from test_directory import GEOMAR, HEREON, MALLORY_SITE, directory, record

from hub.clock import now
from hub.directory import Directory, Grant, record_token
from hub.errors import SignatureError, UnauthorizedError
from hub.events import GrantRecorded, GroupUpdated, KeyRegistered, KeyRevoked
from hub.keys import KeyPair
from hub.records import GrantRecord, GroupRecord, Revocation, SignedRecord, sign_record

KLAUS = KeyPair.generate("klaus@geomar")
ANNA = KeyPair.generate("anna@geomar")
BOB = KeyPair.generate("bob@hereon")
BEAMTIME = "group:anna@geomar/beamtime-9"
PROPOSAL = "group:anna@geomar/proposal-1"


def grant(
    signer: KeyPair,
    *,
    site: str = "hereon",
    serial: int = 1,
    allow: bool = True,
    principal: str = "klaus@geomar",
) -> SignedRecord:
    rec = GrantRecord(
        site=site,
        principal=principal,
        module="climate",
        function="scale",
        allow=allow,
        serial=serial,
        time=now(),
    )
    return sign_record(rec, signer.signing_key)


def group(
    signer: KeyPair,
    name: str,
    members: tuple[str, ...],
    *,
    owner: str = "anna@geomar",
    serial: int = 1,
) -> SignedRecord:
    rec = GroupRecord(group=name, owner=owner, members=members, serial=serial, time=now())
    return sign_record(rec, signer.signing_key)


def with_people() -> Directory:
    d = directory()
    for pair, site in ((KLAUS, GEOMAR), (ANNA, GEOMAR), (BOB, HEREON)):
        d.apply_published("key", record(pair, site))
    return d


def test_a_grant_signed_by_the_modules_site_lets_the_principal_call() -> None:
    d = with_people()
    signed = grant(HEREON)
    assert d.apply_published("grant", signed) == GrantRecorded(record=signed)
    assert d.authorize(d.keys[KLAUS.kid], "climate", "scale") == Grant(
        "klaus@geomar", "climate", "scale"
    )


def test_a_grant_for_hereons_module_signed_by_another_trusted_site_is_refused() -> None:
    d = with_people()
    with pytest.raises(SignatureError, match="only hereon decides"):
        d.apply_published("grant", grant(GEOMAR))
    with pytest.raises(UnauthorizedError):
        d.authorize(d.keys[KLAUS.kid], "climate", "scale")


def test_a_grant_signed_by_an_unknown_site_key_is_refused() -> None:
    with pytest.raises(UnauthorizedError, match="no trusted site"):
        with_people().apply_published("grant", grant(MALLORY_SITE))


def test_another_sites_grant_is_not_this_nodes_business() -> None:
    d = with_people()
    assert d.apply_published("grant", grant(GEOMAR, site="geomar")) is None
    assert d.grants == set()


def test_only_a_higher_serial_changes_a_grant_and_a_withdrawal_takes_it_away() -> None:
    d = with_people()
    d.apply_published("grant", grant(HEREON, serial=5))
    assert d.apply_published("grant", grant(HEREON, serial=4, allow=False)) is None
    assert d.apply_published("grant", grant(HEREON, serial=5, allow=False)) is None
    assert isinstance(
        d.apply_published("grant", grant(HEREON, serial=6, allow=False)), GrantRecorded
    )
    with pytest.raises(UnauthorizedError):
        d.authorize(d.keys[KLAUS.kid], "climate", "scale")


def test_a_record_about_a_person_counts_only_when_signed_by_their_home_site() -> None:
    d = directory()
    with pytest.raises(SignatureError):
        d.apply_published("key", record(KLAUS, HEREON))  # hereon vouching for klaus@geomar
    assert isinstance(d.apply_published("key", record(KLAUS, GEOMAR)), KeyRegistered)
    assert d.apply_published("key", record(KLAUS, GEOMAR)) is None, "already held"


def test_a_revocation_from_the_home_site_applies_once() -> None:
    d = with_people()
    rev = sign_record(
        Revocation(identity="klaus@geomar", kid=KLAUS.kid, time=now(), reason="left"),
        GEOMAR.signing_key,
    )
    assert isinstance(d.apply_published("revocation", rev), KeyRevoked)
    assert d.apply_published("revocation", rev) is None
    with pytest.raises(UnauthorizedError, match="revoked"):
        d.caller("klaus@geomar", KLAUS.kid)


def test_members_of_a_beamtime_are_members_of_the_proposal_that_lists_it() -> None:
    d = with_people()
    assert isinstance(
        d.apply_published("group", group(ANNA, BEAMTIME, ("klaus@geomar",))), GroupUpdated
    )
    d.apply_published("group", group(ANNA, PROPOSAL, (BEAMTIME,)))
    assert d.groups_of("klaus@geomar") == {BEAMTIME, PROPOSAL}
    d.apply_published("grant", grant(HEREON, principal=PROPOSAL))
    assert d.authorize(d.keys[KLAUS.kid], "climate", "scale").principal == PROPOSAL
    # the owner takes klaus out of the beamtime: the proposal's grant no longer reaches him
    d.apply_published("group", group(ANNA, BEAMTIME, (), serial=2))
    assert d.groups_of("klaus@geomar") == set()
    with pytest.raises(UnauthorizedError):
        d.authorize(d.keys[KLAUS.kid], "climate", "scale")


def test_groups_that_list_each_other_do_not_loop() -> None:
    d = with_people()
    d.apply_published("group", group(ANNA, BEAMTIME, ("klaus@geomar", PROPOSAL)))
    d.apply_published("group", group(ANNA, PROPOSAL, (BEAMTIME,)))
    assert d.groups_of("klaus@geomar") == {BEAMTIME, PROPOSAL}


def test_a_group_signed_by_someone_else_than_its_owner_is_refused() -> None:
    d = with_people()
    with pytest.raises(SignatureError):
        d.apply_published("group", group(KLAUS, BEAMTIME, ("klaus@geomar",)))
    with pytest.raises(SignatureError):  # klaus signing a group in anna's name space
        d.apply_published("group", group(KLAUS, BEAMTIME, ("klaus@geomar",), owner="klaus@geomar"))


def test_a_group_of_an_owner_not_vouched_for_or_revoked_is_refused() -> None:
    d = directory()
    with pytest.raises(UnauthorizedError, match="no valid key"):
        d.apply_published("group", group(ANNA, BEAMTIME, ("klaus@geomar",)))
    d = with_people()
    d.apply_published(
        "revocation",
        sign_record(
            Revocation(identity="anna@geomar", kid=ANNA.kid, time=now(), reason="lost"),
            GEOMAR.signing_key,
        ),
    )
    with pytest.raises(UnauthorizedError):
        d.apply_published("group", group(ANNA, BEAMTIME, ("klaus@geomar",)))


def test_a_record_token_names_exactly_one_record() -> None:
    assert record_token(grant(HEREON)) != record_token(grant(HEREON, serial=2))
    same = grant(HEREON)
    assert record_token(same) == record_token(SignedRecord.model_validate(same.model_dump()))
