"""The key store: 0600 files, passphrases, and one clear error for every broken key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hub.canonical import b64d, b64e
from hub.errors import KeyStoreError
from hub.keys import KeyPair, KeyStore


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "home")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_key_file_is_readable_by_its_owner_only(store: KeyStore) -> None:
    pair = store.create("klaus@geomar")
    key_file = store.dir / "klaus@geomar.key"
    assert _mode(key_file) == 0o600
    assert _mode(store.dir) == 0o700
    assert store.load("klaus@geomar").kid == pair.kid
    assert store.public("klaus@geomar") == pair.public


def test_keys_of_every_kind_of_identity_are_listed(store: KeyStore) -> None:
    for name in ("site:hereon", "node:hereon/n1", "anna@hereon"):
        store.create(name)
    assert [k.identity for k in store.list()] == ["anna@hereon", "node:hereon/n1", "site:hereon"]


def test_an_existing_key_is_not_overwritten(store: KeyStore) -> None:
    store.create("site:hereon")
    with pytest.raises(KeyStoreError, match="already exists"):
        store.create("site:hereon")


def test_a_passphrase_protects_the_secret_and_round_trips(store: KeyStore) -> None:
    pair = store.create("anna@hereon", passphrase="correct horse")
    text = (store.dir / "anna@hereon.key").read_text()
    assert b64e(bytes(pair.signing_key)) not in text
    assert store.has_passphrase("anna@hereon")
    assert store.load("anna@hereon", "correct horse").kid == pair.kid
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        store.load("anna@hereon", "battery staple")
    with pytest.raises(KeyStoreError, match="protected by a passphrase"):
        store.load("anna@hereon")


def test_a_missing_key_is_one_clear_error(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="no key file") as info:
        store.load("nobody@hereon")
    assert "fedhub keys new" in info.value.diagnostics()


def test_an_invalid_identity_is_refused(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="not an identity"):
        store.create("Not An Id")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_readable_by_group_or_world_is_refused(store: KeyStore, mode: int) -> None:
    store.create("site:hereon")
    path = store.dir / "site%3Ahereon.key"
    path.chmod(mode)
    with pytest.raises(KeyStoreError, match="readable by others"):
        store.load("site:hereon")


def _corrupt(store: KeyStore, edit: object) -> None:
    store.create("site:hereon")
    path = store.dir / "site%3Ahereon.key"
    data = json.loads(path.read_text())
    path.write_text(edit(data) if callable(edit) else str(edit))


def _short_secret(data: dict[str, object]) -> str:
    data["secret"] = b64e(b64d(str(data["secret"]))[:40])
    return json.dumps(data)


def _foreign_public_key(data: dict[str, object]) -> str:
    other = KeyPair.generate("site:hereon").public.to_json()
    data["sign_key"], data["kid"] = other["sign_key"], other["kid"]
    return json.dumps(data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('{"identity": "site:hereon", "sign', "not JSON"),
        (_short_secret, "secret has 40 bytes"),
        (_foreign_public_key, "do not match the secret"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "secret"}), "corrupt"),
    ],
    ids=["truncated json", "wrong secret length", "public key of another secret", "no secret"],
)
def test_a_corrupt_key_file_is_one_clear_error(store: KeyStore, edit: object, message: str) -> None:
    _corrupt(store, edit)
    with pytest.raises(KeyStoreError, match=message):
        store.load("site:hereon")
