"""``fedhub``: the federation's command line (keys, audit, and calls)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from hub import __version__
from hub.audit import audit_events, verdict
from hub.canonical import b64d
from hub.cliutil import configure_logging, read_passphrase, run_main
from hub.errors import CanonicalError, ConfigError
from hub.keys import KeyStore, PublicKeys, load_public_file
from hub.logfile import LogUnreadableError, iter_log
from hub.records import SignedRecord
from hub.subjects import validate_identity

__all__ = ["main"]


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(args.home)


# --- keys -------------------------------------------------------------------------------


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


def cmd_keys_vouch(args: argparse.Namespace) -> int:
    from hub.canonical import b64e
    from hub.clock import now
    from hub.records import KeyRecord, sign_record

    store = _store(args)
    subject = load_public_file(args.pub) if args.pub else store.public(args.name)
    if args.pub and subject.identity != args.name:
        raise ConfigError(f"{args.pub} holds keys of {subject.identity}, not {args.name}")
    site_id = args.site if args.site.startswith("site:") else f"site:{args.site}"
    passphrase = read_passphrase(args.passphrase_file)
    site = store.load(site_id, passphrase)
    site_name = site_id.removeprefix("site:")
    kind = validate_identity(subject.identity).kind
    if kind == "user" and not subject.identity.endswith(f"@{site_name}"):
        raise ConfigError(f"{site_id} can vouch only for its own people (name@{site_name})")
    record = KeyRecord(
        identity=subject.identity,
        role=kind,
        site=site_name,
        kid=subject.kid,
        sign_key=b64e(subject.sign_key),
        box_key=b64e(subject.box_key),
        valid_from=now(),
        groups=tuple(g for g in (args.groups or "").split(",") if g),
        replaces=args.replaces,
    )
    signed = sign_record(record, site.signing_key)
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


# --- audit ------------------------------------------------------------------------------


def _site_keys(specs: list[str], store: KeyStore) -> dict[str, bytes]:
    """Pinned site keys from --site-key specs (file, key store name, or site=BASE64)."""
    pinned: dict[str, bytes] = {}
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            site, _, b64 = spec.partition("=")
            try:
                key = b64d(b64)
            except CanonicalError as exc:
                raise ConfigError(f"--site-key {spec}: not base64") from exc
            pinned[site.removeprefix("site:")] = key
            continue
        path = Path(spec)
        keys = load_public_file(path) if path.exists() else store.public(spec)
        if not keys.identity.startswith("site:"):
            raise ConfigError(f"--site-key {spec} is {keys.identity}, not a site key")
        pinned[keys.identity.removeprefix("site:")] = keys.sign_key
    if not specs:
        for keys in store.list():
            if keys.identity.startswith("site:"):
                pinned[keys.identity.removeprefix("site:")] = keys.sign_key
    return pinned


def _load_receipt(path: Path) -> SignedRecord:
    try:
        data = json.loads(path.read_text())
        return SignedRecord.model_validate(data.get("signed", data))
    except (OSError, ValueError, AttributeError) as exc:
        raise LogUnreadableError(f"cannot read checkpoint {path}: {exc}") from exc


def cmd_audit(args: argparse.Namespace) -> int:
    if args.proof is not None or args.consistency is not None:
        return cmd_audit_proof(args)
    from_hub = bool(args.site or args.all)
    if args.path is None and not from_hub:
        raise ConfigError("give the log to audit (or --proof FILE, or --consistency FILE)")
    store = _store(args)
    trusted = None if args.trust_log_keys else _site_keys(args.site_key, store)
    if trusted is not None and not trusted:
        raise ConfigError(
            "no site key is pinned, so nothing can be trusted",
            hint="pass --site-key site:NAME or a .pub file; --trust-log-keys trusts the log's own",
        )
    if from_hub:
        from hub.fedaudit import cmd_audit_hub

        return cmd_audit_hub(args, trusted)
    receipts = [_load_receipt(path) for path in args.checkpoint]
    limit = args.max_seconds if args.max_seconds > 0 else None
    events = iter_log(args.path, max_seconds=limit)
    started = time.perf_counter()
    report = audit_events(
        events,
        trusted_sites=trusted,
        receipts=receipts,
        verify_signatures=not args.chain_only,
        threads=args.threads,
    )
    seconds = time.perf_counter() - started
    if args.json:
        out: dict[str, Any] = report.to_json()
        out["seconds"] = round(seconds, 3)
        print(json.dumps(out, indent=2))
    else:
        print(verdict(report, args.path, seconds))
    return 0 if report.ok else 1


def cmd_audit_proof(args: argparse.Namespace) -> int:
    """``fedhub audit --proof FILE`` / ``--consistency FILE``: check a proof offline.
    Exit 0 proven, 1 failed (or a fork shown), 2 unreadable."""
    from hub.errors import IntegrityError
    from hub.proofs import (
        ConsistencyProof,
        EventProof,
        parse_proof,
        verify_consistency_proof,
        verify_event_proof,
    )

    if args.proof is not None and args.consistency is not None:
        raise ConfigError("give --proof or --consistency, not both")
    path: Path = args.proof if args.proof is not None else args.consistency
    want = EventProof if args.proof is not None else ConsistencyProof
    try:
        proof = parse_proof(path.read_bytes())
    except OSError as exc:
        raise LogUnreadableError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except CanonicalError as exc:
        raise LogUnreadableError(f"{path}: {exc.message}") from exc
    if not isinstance(proof, want):
        raise LogUnreadableError(
            f"{path} is a {proof.kind}, not a {want.model_fields['kind'].default}"
        )
    trusted = None if args.trust_log_keys else _site_keys(args.site_key, _store(args))
    if trusted is not None and not trusted:
        raise ConfigError(
            "no site key is pinned, so nothing can be trusted",
            hint="pass --site-key site:NAME or a .pub file; --trust-log-keys trusts the "
            "proof's own",
        )
    try:
        if isinstance(proof, EventProof):
            verdict: Any = verify_event_proof(proof, trusted, args.trust_log_keys)
        else:
            verdict = verify_consistency_proof(proof, trusted, args.trust_log_keys)
    except IntegrityError as exc:
        if args.json:
            print(json.dumps({"ok": False, "kind": proof.kind, "error": exc.diagnostics()}))
        else:
            print(f"proof FAILED  {path}: {exc.diagnostics()}")
        return 1
    if args.json:
        out = verdict.to_json()
        print(json.dumps(out, indent=2))
        return 0 if out["ok"] else 1
    fork = getattr(verdict, "fork", None)
    if fork is None:
        print(f"proof OK  {verdict.diagnostics()}")
        return 0
    print(f"proof FAILED  {verdict.diagnostics()}")
    for name, size, root, signed in (
        ("old", fork.old_size, fork.old_root, fork.old),
        ("new", fork.new_size, fork.new_root, fork.new),
    ):
        print(f"  {name}  size {size}  root {root}  signed {signed.model_dump_json()}")
    return 1


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedhub", description="fedhub: federated, end-to-end encrypted remote procedures."
    )
    parser.add_argument("--version", action="version", version=f"fedhub {__version__}")
    parser.add_argument(
        "--home", type=Path, help="key store home (default $FEDHUB_HOME or ~/.config/fedhub)"
    )
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="create and show identities' keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = ksub.add_parser("new", help="create keys for NAME (name@site, site:NAME, node:SITE/NAME)")
    new.add_argument("name")
    new.add_argument(
        "--passphrase", action="store_true", help="protect the key file with a passphrase (asks)"
    )
    new.add_argument("--passphrase-file", type=Path, help="read the passphrase from this file")
    new.set_defaults(func=cmd_keys_new)
    show = ksub.add_parser("show", help="show the public keys and key id of NAME")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_keys_show)
    lst = ksub.add_parser("list", help="list the identities in the key store")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_keys_list)

    vouch = ksub.add_parser("vouch", help="as a site, sign the key record of NAME (writes JSON)")
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
    revoke = ksub.add_parser("revoke", help="as a site, sign a revocation of key KID")
    revoke.add_argument("kid")
    revoke.add_argument("--identity", required=True, help="whose key it is")
    revoke.add_argument("--site", required=True, help="the revoking site (site:NAME)")
    revoke.add_argument("--reason", default="revoked")
    revoke.add_argument("--passphrase-file", type=Path)
    revoke.add_argument("-o", "--output", type=Path)
    revoke.set_defaults(func=cmd_keys_revoke)
    imp = ksub.add_parser("import", help="add a public key file (pin a site, know a colleague)")
    imp.add_argument("file", type=Path)
    imp.set_defaults(func=cmd_keys_import)

    audit = sub.add_parser(
        "audit",
        help="replay a node's log (SQLite or exported JSONL) and verify it",
        description="Exit 0 when the log is complete and untampered, 1 naming the first bad "
        "event otherwise, 2 when the input cannot be read.",
    )
    audit.add_argument(
        "path", type=Path, nargs="?", help="the node's SQLite log or an exported .jsonl"
    )
    audit.add_argument(
        "--site",
        action="append",
        metavar="NAME",
        help="audit site NAME's logs from the hub's copy (with --url; repeatable)",
    )
    audit.add_argument(
        "--all", action="store_true", help="audit every site the hub copies: one verdict each"
    )
    audit.add_argument("--url", help="the hub's NATS URL (an auditor's login) for --site/--all")
    audit.add_argument(
        "--site-key",
        action="append",
        default=[],
        metavar="KEY",
        help="pinned site key: site:NAME from the key store, a .pub file, or NAME=BASE64 "
        "(default: every site key in the key store)",
    )
    audit.add_argument(
        "--trust-log-keys",
        action="store_true",
        help="UNSAFE: trust the site key the log names itself (proves consistency, not origin)",
    )
    audit.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a checkpoint obtained earlier that the log must extend (repeatable: all are checked)",
    )
    audit.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        metavar="S",
        help="give up on input that has not ended after S seconds, e.g. a pipe that stays "
        "open (default 300; 0: no limit)",
    )
    audit.add_argument(
        "--chain-only",
        action="store_true",
        help="skip per-event signatures (hashes, chain, checkpoints, lifecycle)",
    )
    audit.add_argument(
        "--threads",
        type=int,
        default=None,
        help="signature workers, this process included (default: cores)",
    )
    audit.add_argument("--json", action="store_true", help="print the full report as JSON")
    audit.set_defaults(func=cmd_audit)
    _add_proof_options(audit)
    _add_call_commands(sub)
    _add_federation_commands(sub)
    return parser


def _add_proof_options(audit: argparse.ArgumentParser) -> None:
    """``--proof`` and ``--consistency``: check a proof file instead of a whole log."""
    audit.add_argument(
        "--proof", type=Path, metavar="FILE", help="check an event proof (fedhub-node log prove)"
    )
    audit.add_argument(
        "--consistency",
        type=Path,
        metavar="FILE",
        help="check a consistency proof of two checkpoints (or show the fork)",
    )


def _add_call_commands(sub: Any) -> None:
    """The caller's commands: call and fetch (:mod:`hub.cli_calls`), ls, stub and status
    (:mod:`hub.cli_lookup`), requests and result (:mod:`hub.cli_results`), web
    (:mod:`hub.cli_web`)."""
    from hub import cli_calls, cli_lookup, cli_results, cli_web

    cli_calls.add_commands(sub)
    cli_lookup.add_commands(sub)
    cli_results.add_commands(sub)
    cli_web.add_commands(sub)


def _add_federation_commands(sub: Any) -> None:
    """``fedhub federation init|add-site`` live in :mod:`hub.federation_cli`."""
    from hub import federation_cli

    federation_cli.add_commands(sub)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json_logs=args.log_json, level=args.log_level)
    try:
        return int(args.func(args))
    except LogUnreadableError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedhub``."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
