"""Identities' key pairs and the on-disk key store.

Every identity (user ``name@site``, site ``site:name``, node ``node:site/name``) has an
Ed25519 signing key and an X25519 encryption key. A key store is a directory::

    <home>/keys/<file-name>.key   private key file, mode 0600, JSON (see docs/crypto.md)
    <home>/keys/<file-name>.pub   public part, shareable

``home`` is ``--home``, else ``$FEDHUB_HOME``, else ``$XDG_CONFIG_HOME/fedhub`` (default
``~/.config/fedhub``). A private key file may be protected by a passphrase: the 64 secret
bytes are encrypted with a SecretBox whose key is derived with Argon2id (libsodium's
``pwhash``); a wrong passphrase fails authentication and is reported as such.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import nacl.exceptions
import nacl.public
import nacl.pwhash
import nacl.secret
import nacl.signing

from hub.canonical import b64d, b64e
from hub.clock import now
from hub.crypto import key_id
from hub.errors import CanonicalError, KeyStoreError

__all__ = ["KeyPair", "KeyStore", "PublicKeys", "default_home"]

_IDENTITY = re.compile(
    r"^(?:[a-z0-9][a-z0-9_-]{0,63}@[a-z][a-z0-9_-]{0,31}"
    r"|site:[a-z][a-z0-9_-]{0,31}"
    r"|node:[a-z][a-z0-9_-]{0,31}/[a-z0-9][a-z0-9_-]{0,63})$"
)
_FILE_VERSION = 1


def check_identity(identity: str) -> str:
    """Return ``identity`` if it is a valid id, else raise KeyStoreError naming it."""
    if not _IDENTITY.match(identity):
        raise KeyStoreError(
            f"{identity!r} is not an identity",
            hint="use name@site for people, site:name for sites, node:site/name for nodes",
        )
    return identity


def default_home() -> Path:
    """The key store home: $FEDHUB_HOME, else $XDG_CONFIG_HOME/fedhub, else ~/.config/fedhub."""
    env = os.environ.get("FEDHUB_HOME")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "fedhub"


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """The public half of an identity's keys."""

    identity: str
    sign_key: bytes
    box_key: bytes

    @property
    def kid(self) -> str:
        """Key id: derived from the signing key."""
        return key_id(self.sign_key)

    def to_json(self) -> dict[str, Any]:
        """JSON form used in ``.pub`` files and ``fedhub keys show --json``."""
        return {
            "v": _FILE_VERSION,
            "identity": self.identity,
            "kid": self.kid,
            "sign_key": b64e(self.sign_key),
            "box_key": b64e(self.box_key),
        }

    @classmethod
    def from_json(cls, data: Any) -> PublicKeys:
        """Parse the JSON form; KeyStoreError if fields are missing or malformed."""
        try:
            keys = cls(
                identity=check_identity(str(data["identity"])),
                sign_key=b64d(data["sign_key"]),
                box_key=b64d(data["box_key"]),
            )
        except (KeyError, TypeError, CanonicalError) as exc:
            raise KeyStoreError(f"public key data is malformed: {exc}") from exc
        if len(keys.sign_key) != 32 or len(keys.box_key) != 32:
            raise KeyStoreError("public keys must be 32 bytes each")
        if "kid" in data and data["kid"] != keys.kid:
            raise KeyStoreError(f"key id {data['kid']} does not match the key ({keys.kid})")
        return keys


@dataclass(frozen=True)
class KeyPair:
    """An identity's private keys. Never logged, never sent."""

    identity: str
    signing_key: nacl.signing.SigningKey = field(repr=False)
    box_secret: bytes = field(repr=False)
    created: str = ""

    @classmethod
    def generate(cls, identity: str) -> KeyPair:
        """Fresh keys for ``identity``."""
        check_identity(identity)
        return cls(
            identity, nacl.signing.SigningKey.generate(), secrets.token_bytes(32), created=now()
        )

    @cached_property
    def public(self) -> PublicKeys:
        """The public half (computed once: X25519 base multiplication is not free)."""
        return PublicKeys(
            self.identity,
            bytes(self.signing_key.verify_key),
            bytes(nacl.public.PrivateKey(self.box_secret).public_key),
        )

    @cached_property
    def kid(self) -> str:
        """Key id of the signing key."""
        return self.public.kid

    @property
    def sign_public(self) -> bytes:
        """Ed25519 public key bytes."""
        return self.public.sign_key

    @property
    def box_public(self) -> bytes:
        """X25519 public key bytes."""
        return self.public.box_key

    def _secret_bytes(self) -> bytes:
        return bytes(self.signing_key) + self.box_secret

    def to_file_json(self, passphrase: str | None = None) -> dict[str, Any]:
        """The private key file's JSON, encrypted with ``passphrase`` when given."""
        data = self.public.to_json()
        data["created"] = self.created
        secret = self._secret_bytes()
        if passphrase:
            salt = secrets.token_bytes(nacl.pwhash.argon2id.SALTBYTES)
            ops = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
            mem = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
            kek = nacl.pwhash.argon2id.kdf(
                nacl.secret.SecretBox.KEY_SIZE, passphrase.encode(), salt, ops, mem
            )
            data["protection"] = {
                "kdf": "argon2id",
                "salt": b64e(salt),
                "opslimit": ops,
                "memlimit": mem,
            }
            data["secret"] = b64e(bytes(nacl.secret.SecretBox(kek).encrypt(secret)))
        else:
            data["protection"] = {"kdf": "none"}
            data["secret"] = b64e(secret)
        return data

    @classmethod
    def from_file_json(
        cls, data: Any, passphrase: str | None = None, *, source: str = "key file"
    ) -> KeyPair:
        """Load from the private key file's JSON; KeyStoreError on any problem."""
        try:
            public = PublicKeys.from_json(data)
            protection = data["protection"]
            raw = b64d(data["secret"])
            if protection["kdf"] == "argon2id":
                if not passphrase:
                    raise KeyStoreError(
                        f"{source} is protected by a passphrase",
                        hint="pass --passphrase-file or set FEDHUB_PASSPHRASE",
                    )
                kek = nacl.pwhash.argon2id.kdf(
                    nacl.secret.SecretBox.KEY_SIZE,
                    passphrase.encode(),
                    b64d(protection["salt"]),
                    int(protection["opslimit"]),
                    int(protection["memlimit"]),
                )
                try:
                    raw = nacl.secret.SecretBox(kek).decrypt(raw)
                except nacl.exceptions.CryptoError as exc:
                    raise KeyStoreError(f"wrong passphrase for {source}") from exc
            elif protection["kdf"] != "none":
                raise KeyStoreError(f"{source}: unknown protection {protection['kdf']!r}")
            if len(raw) != 64:
                raise KeyStoreError(f"{source}: secret has {len(raw)} bytes, expected 64")
            pair = cls(
                public.identity,
                nacl.signing.SigningKey(raw[:32]),
                raw[32:],
                created=str(data.get("created", "")),
            )
        except KeyStoreError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            CanonicalError,
            nacl.exceptions.CryptoError,
        ) as exc:
            raise KeyStoreError(f"{source} is corrupt: {exc}") from exc
        if pair.public != public:
            raise KeyStoreError(f"{source} is corrupt: public keys do not match the secret")
        return pair


def _file_stem(identity: str) -> str:
    return quote(identity, safe="@")


class KeyStore:
    """A directory of key files."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home if home is not None else default_home()
        self.dir = self.home / "keys"

    def _path(self, identity: str, suffix: str) -> Path:
        return self.dir / f"{_file_stem(identity)}{suffix}"

    def exists(self, identity: str) -> bool:
        """Whether a private key for ``identity`` is stored."""
        return self._path(identity, ".key").exists()

    def create(
        self, identity: str, passphrase: str | None = None, *, overwrite: bool = False
    ) -> KeyPair:
        """Generate and store keys for ``identity``; refuses to overwrite unless told to."""
        check_identity(identity)
        if self.exists(identity) and not overwrite:
            raise KeyStoreError(
                f"a key for {identity} already exists in {self.dir}",
                hint="choose another name or remove the old key file on purpose",
            )
        pair = KeyPair.generate(identity)
        self.save(pair, passphrase)
        return pair

    def save(self, pair: KeyPair, passphrase: str | None = None) -> Path:
        """Write the private key file (0600) and the public file."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(pair.identity, ".key")
        tmp = path.with_suffix(".key.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(pair.to_file_json(passphrase), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o600)
        tmp.replace(path)
        _write_replacing(self._path(pair.identity, ".pub"), pair.public.to_json())
        return path

    def import_public(self, keys: PublicKeys) -> Path:
        """Store someone's public keys (pin a site, know a colleague); returns the file."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(keys.identity, ".pub")
        _write_replacing(path, keys.to_json())
        return path

    def load(self, identity: str, passphrase: str | None = None) -> KeyPair:
        """Load the private keys of ``identity``."""
        check_identity(identity)
        path = self._path(identity, ".key")
        return load_key_file(path, passphrase)

    def public(self, identity: str) -> PublicKeys:
        """The public keys of ``identity`` (from its .pub file)."""
        check_identity(identity)
        path = self._path(identity, ".pub")
        return load_public_file(path)

    def list(self) -> list[PublicKeys]:
        """Public keys of every identity in the store, sorted by identity."""
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob("*.pub")):
            found.append(load_public_file(path))
        return sorted(found, key=lambda k: k.identity)

    def has_passphrase(self, identity: str) -> bool:
        """Whether the key file of ``identity`` is passphrase-protected."""
        data = _read_json(self._path(identity, ".key"), "key file")
        return bool(data.get("protection", {}).get("kdf") == "argon2id")


def _write_replacing(path: Path, data: dict[str, Any]) -> None:
    """Write a public key file as a new file renamed over the old one (never changed in
    place: readers see the old file or the new one, and a new file is a new inode)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


#: Key files parsed before, by path: (what identifies the file's version, its JSON). The
#: resident agent resolves the caller's identity and key for every command; a stat costs a
#: fraction of reading and parsing each file again. Callers never change the JSON.
_parsed: dict[Path, tuple[tuple[int, int, int, int], Any]] = {}


def _read_json(path: Path, what: str) -> Any:
    try:
        st = path.stat()
        version = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = _parsed.get(path)
        if known is not None and known[0] == version:
            return known[1]
        text = path.read_text()
    except FileNotFoundError as exc:
        raise KeyStoreError(
            f"no {what} at {path}", hint="create one with `fedhub keys new`"
        ) from exc
    except OSError as exc:
        raise KeyStoreError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyStoreError(f"{what} {path} is corrupt: not JSON") from exc
    _parsed[path] = (version, data)
    return data


def load_key_file(path: Path, passphrase: str | None = None) -> KeyPair:
    """Load a private key file; refuses files readable by others."""
    if path.exists() and path.stat().st_mode & 0o077:
        raise KeyStoreError(f"key file {path} is readable by others", hint=f"run: chmod 600 {path}")
    return KeyPair.from_file_json(_read_json(path, "key file"), passphrase, source=str(path))


def load_public_file(path: Path) -> PublicKeys:
    """Load a ``.pub`` file (or a private key file, using only its public part)."""
    data = _read_json(path, "public key file")
    try:
        return PublicKeys.from_json(data)
    except KeyStoreError as exc:
        raise KeyStoreError(f"{path}: {exc.message}") from exc


def identity_from_stem(stem: str) -> str:
    """Inverse of the file naming (for listing)."""
    return unquote(stem)
