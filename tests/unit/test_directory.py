"""The directory: who is known, who is revoked, who may call what."""

from __future__ import annotations

import pytest

from hub.canonical import b64e
from hub.clock import now
from hub.directory import Directory, Grant
from hub.errors import SignatureError, UnauthorizedError
from hub.keys import KeyPair
from hub.records import KeyRecord, Revocation, sign_record

HEREON = KeyPair.generate("site:hereon")
GEOMAR = KeyPair.generate("site:geomar")
MALLORY_SITE = KeyPair.generate("site:evil")


def record(
    pair: KeyPair, site: KeyPair, *, groups: tuple[str, ...] = (), replaces: str | None = None
):
    name = site.identity.removeprefix("site:")
    return sign_record(
        KeyRecord(
            identity=pair.identity,
            role="user",
            site=name,
            kid=pair.kid,
            sign_key=b64e(pair.sign_public),
            box_key=b64e(pair.box_public),
            valid_from=now(),
            groups=groups,
            replaces=replaces,
        ),
        site.signing_key,
    )


def directory() -> Directory:
    return Directory("hereon", {"hereon": HEREON.sign_public, "geomar": GEOMAR.sign_public})


def test_a_person_vouched_for_by_a_trusted_site_is_known() -> None:
    d, klaus = directory(), KeyPair.generate("klaus@geomar")
    d.register(record(klaus, GEOMAR))
    assert d.caller("klaus@geomar", klaus.kid).identity == "klaus@geomar"


def test_a_record_signed_by_an_untrusted_site_is_refused() -> None:
    eve = KeyPair.generate("eve@evil")
    with pytest.raises(UnauthorizedError):
        directory().register(record(eve, MALLORY_SITE))


def test_a_site_cannot_vouch_for_another_sites_people() -> None:
    fake = KeyPair.generate("klaus@hereon")
    with pytest.raises(SignatureError):
        directory().register(record(fake, GEOMAR))


def test_a_key_under_another_name_is_refused() -> None:
    d, klaus = directory(), KeyPair.generate("klaus@geomar")
    d.register(record(klaus, GEOMAR))
    with pytest.raises(UnauthorizedError, match="belongs to klaus@geomar"):
        d.caller("anna@geomar", klaus.kid)


def test_a_revoked_key_stops_working_and_the_refusal_says_why() -> None:
    d, klaus = directory(), KeyPair.generate("klaus@geomar")
    d.register(record(klaus, GEOMAR))
    rev = Revocation(identity=klaus.identity, kid=klaus.kid, time=now(), reason="laptop lost")
    d.revoke(sign_record(rev, GEOMAR.signing_key))
    with pytest.raises(UnauthorizedError, match="laptop lost"):
        d.caller("klaus@geomar", klaus.kid)


def test_a_serving_site_may_ban_a_foreign_key_locally_but_a_third_site_may_not() -> None:
    d, klaus = directory(), KeyPair.generate("klaus@geomar")
    d.register(record(klaus, GEOMAR))
    rev = Revocation(identity=klaus.identity, kid=klaus.kid, time=now(), reason="ban")
    d.revoke(sign_record(rev, HEREON.signing_key))
    assert klaus.kid in d.revoked
    other = Directory("x", {"hereon": HEREON.sign_public, "evil": MALLORY_SITE.sign_public})
    anna = KeyPair.generate("anna@hereon")
    other.register(record(anna, HEREON))
    with pytest.raises(SignatureError):
        other.revoke(
            sign_record(
                Revocation(identity=anna.identity, kid=anna.kid, time=now(), reason="x"),
                MALLORY_SITE.signing_key,
            )
        )


def test_a_rotated_key_replaces_the_old_one() -> None:
    d, old, new = directory(), KeyPair.generate("klaus@geomar"), KeyPair.generate("klaus@geomar")
    d.register(record(old, GEOMAR))
    d.register(record(new, GEOMAR, replaces=old.kid))
    assert d.caller("klaus@geomar", new.kid)
    with pytest.raises(UnauthorizedError, match="replaced"):
        d.caller("klaus@geomar", old.kid)


def test_grants_cover_named_people_groups_functions_and_class_methods() -> None:
    d, klaus = directory(), KeyPair.generate("klaus@geomar")
    rec = d.register(record(klaus, GEOMAR, groups=("ocean",)))
    with pytest.raises(UnauthorizedError, match=r"may not call climate\.compute_sum"):
        d.authorize(rec, "climate", "compute_sum")
    d.add_grant(Grant("group:ocean", "climate", "compute_sum"))
    d.authorize(rec, "climate", "compute_sum")
    with pytest.raises(UnauthorizedError):
        d.authorize(rec, "climate", "other")
    d.add_grant(Grant("klaus@geomar", "climate", "Station.*"))
    d.authorize(rec, "climate", "Station.describe")
    with pytest.raises(UnauthorizedError):
        d.authorize(rec, "ocean", "Station.describe")
