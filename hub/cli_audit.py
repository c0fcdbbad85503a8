"""``fedhub audit``: replay a node's log (a file, or the hub's copies) and verify it, or
check a proof file offline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hub.audit import audit_events, verdict
from hub.canonical import b64d
from hub.cliutil import examples, fail
from hub.errors import CanonicalError, ConfigError
from hub.keys import KeyStore, load_public_file
from hub.logfile import LogUnreadableError, iter_log, read_small
from hub.records import SignedRecord

__all__ = ["add_commands", "cmd_audit", "pinned_site_keys"]


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore(args.home)


def pinned_site_keys(specs: list[str], store: KeyStore) -> dict[str, bytes]:
    """Pinned site keys from --site-key specs (file, key store name, or site=BASE64)."""
    pinned: dict[str, bytes] = {}
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            name, _, b64 = spec.partition("=")
            try:
                key = b64d(b64)
            except CanonicalError as exc:
                raise ConfigError(f"--site-key {spec}: not base64") from exc
            if len(key) != 32:
                raise ConfigError(f"--site-key {spec}: not an Ed25519 public key (32 bytes)")
            site = name.removeprefix("site:")
        else:
            path = Path(spec)
            keys = load_public_file(path) if path.exists() else store.public(spec)
            if not keys.identity.startswith("site:"):
                raise ConfigError(f"--site-key {spec} is {keys.identity}, not a site key")
            site, key = keys.identity.removeprefix("site:"), keys.sign_key
        if pinned.setdefault(site, key) != key:
            raise ConfigError(f"--site-key pins two different keys for site:{site}")
    if not specs:
        for keys in store.list():
            if keys.identity.startswith("site:"):
                pinned[keys.identity.removeprefix("site:")] = keys.sign_key
    return pinned


#: The most a receipt file may hold (one is under 1 KB).
RECEIPT_LIMIT = 1 << 16


def _load_receipt(path: Path, max_seconds: float | None) -> SignedRecord:
    """A receipt (``fedhub-node log head`` output), read within the same bounds as a log."""
    try:
        data = json.loads(read_small(path, limit=RECEIPT_LIMIT, max_seconds=max_seconds))
        return SignedRecord.model_validate(data.get("signed", data))
    except (OSError, ValueError, AttributeError) as exc:
        raise LogUnreadableError(f"cannot read checkpoint {path}: {exc}") from exc


def cmd_audit(args: argparse.Namespace) -> int:
    """``fedhub audit``: exit 0 verified, 1 not, 2 when the input cannot be read."""
    try:
        return _audit(args)
    except LogUnreadableError as exc:
        fail(exc, 2)
        return 2


def _audit(args: argparse.Namespace) -> int:
    if args.proof is not None or args.consistency is not None:
        return cmd_audit_proof(args)
    from_hub = bool(args.site or args.all)
    if args.path is None and not from_hub:
        raise ConfigError("give the log to audit (or --proof FILE, or --consistency FILE)")
    store = _store(args)
    trusted = None if args.trust_log_keys else pinned_site_keys(args.site_key, store)
    if trusted is not None and not trusted:
        raise ConfigError(
            "no site key is pinned, so nothing can be trusted",
            hint="pass --site-key site:NAME or a .pub file; --trust-log-keys trusts the log's own",
        )
    if from_hub:
        from hub.fedaudit import cmd_audit_hub

        return cmd_audit_hub(args, trusted)
    limit = args.max_seconds if args.max_seconds > 0 else None
    receipts = [_load_receipt(path, limit) for path in args.checkpoint]
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
    if args.path is not None or args.site or args.all or args.checkpoint:
        raise ConfigError(
            "a proof is checked on its own: give no log, --site, --all or --checkpoint with it"
        )
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
    trusted = None if args.trust_log_keys else pinned_site_keys(args.site_key, _store(args))
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


def add_commands(sub: Any) -> None:
    """Add ``audit`` to the ``fedhub`` subcommands."""
    from hub.cli import command_help

    audit = sub.add_parser(
        "audit",
        help=command_help("audit"),
        epilog=examples(
            "fedhub-node log export --db data/events.db -o events.jsonl",
            "fedhub audit events.jsonl --site-key site:hereon",
            "fedhub audit --site hereon --url tls://hub.example.org:4222",
        ),
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
