"""``fedhub keys``: create, show, vouch for, revoke and import identities' keys."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.cliutil import examples, read_passphrase
from hub.errors import ConfigError
from hub.keys import KeyPair, KeyStore, PublicKeys, load_public_file
from hub.subjects import validate_identity

if TYPE_CHECKING:
    from hub.records import SignedRecord

__all__ = ["add_commands", "vouch_record"]


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(args.home)


def cmd_keys_new(args: argparse.Namespace) -> int:
    store = _store(args)
    passphrase = None
    if args.passphrase or args.passphrase_file:
        passphrase = read_passphrase(
            args.passphrase_file, prompt=f"passphrase for {args.name}: ", confirm=True
        )
    pair = store.create(args.name, passphrase)
    print(f"created {pair.identity}  kid {pair.kid}  in {store.dir}")
    return 0


def _print_public(keys: PublicKeys, as_json: bool) -> None:
    if as_json:
        print(json.dumps(keys.to_json(), indent=2))
    else:
        print(f"identity  {keys.identity}")
        print(f"kid       {keys.kid}")
        print(f"sign key  {keys.to_json()['sign_key']}  (Ed25519)")
        print(f"box key   {keys.to_json()['box_key']}  (X25519)")


def cmd_keys_show(args: argparse.Namespace) -> int:
    _print_public(_store(args).public(args.name), args.json)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    store = _store(args)
    keys = store.list()
    if args.json:
        print(json.dumps([k.to_json() for k in keys], indent=2))
        return 0
    if not keys:
        print(f"no keys in {store.dir}")
        return 0
    for k in keys:
        locked = (
            " (passphrase)" if store.exists(k.identity) and store.has_passphrase(k.identity) else ""
        )
        private = "private" if store.exists(k.identity) else "public only"
        print(f"{k.identity:<32} {k.kid}  {private}{locked}")
    return 0


def vouch_record(
    site: KeyPair,
    subject: PublicKeys,
    *,
    groups: tuple[str, ...] = (),
    replaces: str | None = None,
) -> SignedRecord:
    """``site``'s signed key record of ``subject`` (a person of the site, or its node)."""
    from hub.canonical import b64e
    from hub.clock import now
    from hub.records import KeyRecord, sign_record

    site_name = site.identity.removeprefix("site:")
    kind = validate_identity(subject.identity).kind
    if kind == "user" and not subject.identity.endswith(f"@{site_name}"):
        raise ConfigError(f"{site.identity} can vouch only for its own people (name@{site_name})")
    record = KeyRecord(
        identity=subject.identity,
        role=kind,
        site=site_name,
        kid=subject.kid,
        sign_key=b64e(subject.sign_key),
        box_key=b64e(subject.box_key),
        valid_from=now(),
        groups=groups,
        replaces=replaces,
    )
    return sign_record(record, site.signing_key)


def cmd_keys_vouch(args: argparse.Namespace) -> int:
    store = _store(args)
    subject = load_public_file(args.pub) if args.pub else store.public(args.name)
    if args.pub and subject.identity != args.name:
        raise ConfigError(f"{args.pub} holds keys of {subject.identity}, not {args.name}")
    site_id = args.site if args.site.startswith("site:") else f"site:{args.site}"
    site = store.load(site_id, read_passphrase(args.passphrase_file))
    groups = tuple(g for g in (args.groups or "").split(",") if g)
    signed = vouch_record(site, subject, groups=groups, replaces=args.replaces)
    text = json.dumps(signed.model_dump(), indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
        print(f"{site_id} vouched for {subject.identity} (kid {subject.kid}): {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from hub.clock import now
    from hub.records import Revocation, sign_record

    store = _store(args)
    site_id = args.site if args.site.startswith("site:") else f"site:{args.site}"
    site = store.load(site_id, read_passphrase(args.passphrase_file))
    rev = Revocation(identity=args.identity, kid=args.kid, time=now(), reason=args.reason)
    signed = sign_record(rev, site.signing_key)
    text = json.dumps(signed.model_dump(), indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
        print(f"{site_id} revoked key {args.kid} of {args.identity}: {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_keys_import(args: argparse.Namespace) -> int:
    store = _store(args)
    keys = load_public_file(args.file)
    if store.exists(keys.identity):
        raise ConfigError(f"{keys.identity} has a private key in this store; not replacing it")
    store.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = store._path(keys.identity, ".pub")
    target.write_text(json.dumps(keys.to_json(), indent=2) + "\n")
    print(f"imported {keys.identity} (kid {keys.kid})")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``keys`` and its actions to the ``fedhub`` subcommands."""
    from hub.cli import command_help

    keys = sub.add_parser(
        "keys",
        help=command_help("keys"),
        epilog=examples("fedhub keys new klaus@hereon", "fedhub keys list"),
    )
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = ksub.add_parser(
        "new",
        help="create keys for NAME (name@site, site:NAME, node:SITE/NAME)",
        epilog=examples("fedhub keys new klaus@hereon --passphrase"),
    )
    new.add_argument("name")
    new.add_argument(
        "--passphrase", action="store_true", help="protect the key file with a passphrase (asks)"
    )
    new.add_argument("--passphrase-file", type=Path, help="read the passphrase from this file")
    new.set_defaults(func=cmd_keys_new)
    show = ksub.add_parser(
        "show",
        help="show the public keys and key id of NAME",
        epilog=examples("fedhub keys show site:hereon --json > site-hereon.pub"),
    )
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_keys_show)
    lst = ksub.add_parser(
        "list", help="list the identities in the key store", epilog=examples("fedhub keys list")
    )
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_keys_list)

    vouch = ksub.add_parser(
        "vouch",
        help="as a site, sign the key record of NAME (writes JSON)",
        epilog=examples("fedhub keys vouch klaus@hereon --site site:hereon -o klaus.json"),
    )
    vouch.add_argument("name", help="the identity vouched for (name@site or node:site/name)")
    vouch.add_argument("--site", required=True, help="the vouching site (site:NAME), key in store")
    vouch.add_argument("--pub", type=Path, help="NAME's .pub file (default: from the key store)")
    vouch.add_argument("--groups", help="comma-separated group names for grants")
    vouch.add_argument(
        "--replaces", metavar="KID", help="this key rotates KID out (it stops working once seen)"
    )
    vouch.add_argument("--passphrase-file", type=Path)
    vouch.add_argument("-o", "--output", type=Path)
    vouch.set_defaults(func=cmd_keys_vouch)
    revoke = ksub.add_parser(
        "revoke",
        help="as a site, sign a revocation of key KID",
        epilog=examples(
            "fedhub keys revoke 37217437eea054d003b0 --identity klaus@hereon --site site:hereon"
            " -o revoke.json"
        ),
    )
    revoke.add_argument("kid")
    revoke.add_argument("--identity", required=True, help="whose key it is")
    revoke.add_argument("--site", required=True, help="the revoking site (site:NAME)")
    revoke.add_argument("--reason", default="revoked")
    revoke.add_argument("--passphrase-file", type=Path)
    revoke.add_argument("-o", "--output", type=Path)
    revoke.set_defaults(func=cmd_keys_revoke)
    imp = ksub.add_parser(
        "import",
        help="add a public key file (pin a site, know a colleague)",
        epilog=examples("fedhub keys import site-geomar.pub"),
    )
    imp.add_argument("file", type=Path)
    imp.set_defaults(func=cmd_keys_import)
