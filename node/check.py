"""``fedhub-node check``: a node config against everything it names, one finding per item.

Each check returns :class:`Finding` rows (``ok`` or a problem with what to fix), in this
order: data dir, keys (files, passphrase), the log's genesis (the node key vouched by the
site, the site key matching the pinned one), trust pins, user records, modules (importable)
and grants (naming modules and functions that exist), and NATS: the ``nats-server`` binary
for an embedded server, or the configured URL reachable **and** authorized with the
configured credentials, its JetStream API answering.

``before_init`` relaxes what ``fedhub-node init`` will create (the node key and the log)
and requires what it needs instead (the site key, to vouch once).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from hub.canonical import b64d
from hub.directory import Directory, Grant
from hub.errors import FederationError
from hub.keys import KeyPair, KeyStore, load_public_file
from hub.nats import find_nats_server
from hub.records import KeyRecord, SignedRecord, open_record
from node.bootstrap import node_passphrase
from node.config import NodeConfig
from node.eventlog import EventLog
from node.modules import load_module
from node.natslink import (
    describe_nats_error,
    is_auth_error,
    main_error,
    nats_auth_options,
    nats_tls_options,
    safe_url,
)

__all__ = ["Finding", "check_nats", "check_offline", "problems", "report_json", "run_checks"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: ``ok``, what was found, and for a problem what to do."""

    check: str
    ok: bool
    message: str
    fix: str | None = None

    def line(self) -> str:
        """``ok    keys      ...`` or ``FAIL  nats      ... -> fix``."""
        mark = "ok  " if self.ok else "FAIL"
        fix = f" -> {self.fix}" if self.fix and not self.ok else ""
        return f"{mark}  {self.check:<9} {self.message}{fix}"

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object (``--json``)."""
        return asdict(self)


def _ok(check: str, message: str) -> Finding:
    return Finding(check, True, message)


def _bad(check: str, message: str, fix: str | None = None) -> Finding:
    return Finding(check, False, message, fix)


class _Context:
    """What earlier checks learned that later ones use."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.store = KeyStore(cfg.node.key_home)
        self.passphrase: str | None = None
        self.node_key: KeyPair | None = None
        self.site_key: bytes | None = None  # the own site's signing key, when known
        self.trusted: dict[str, bytes] = {}
        self.functions: dict[str, set[str]] = {}  # module -> functions it serves

    @property
    def run_init(self) -> str:
        return f"run: fedhub-node init --config {self.cfg.source}"


def run_checks(
    cfg: NodeConfig, *, before_init: bool = False, offline: bool = False
) -> list[Finding]:
    """Every check of ``cfg``: the offline ones, then NATS (a URL is tried for real,
    unless ``offline``: e.g. before a start that waits for NATS by itself)."""
    findings = check_offline(cfg, before_init=before_init)
    if cfg.nats.url and not offline:
        findings += asyncio.run(check_nats(cfg))
    return findings


def check_offline(cfg: NodeConfig, *, before_init: bool = False) -> list[Finding]:
    """Every check that needs no network, in the order of the module docstring."""
    ctx = _Context(cfg)
    found = [_data_dir(cfg)]
    found += _keys(ctx, before_init)
    found += _genesis(ctx, before_init)
    found += _trust(ctx)
    found += _users(ctx)
    found += _modules(ctx)
    found += _grants(ctx)
    if not cfg.nats.url:
        found.append(_embedded_server())
    return found


# --- files ---------------------------------------------------------------------------------


def _data_dir(cfg: NodeConfig) -> Finding:
    path = cfg.node.data_dir
    if path.exists() and not path.is_dir():
        return _bad("data_dir", f"{path} is not a folder", "point [node] data_dir at a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".fedhub-check-"):
            pass
    except OSError as exc:
        return _bad(
            "data_dir",
            f"cannot write in {probe}: {exc.strerror}",
            f"give the node's user write access to {path} (and its parent to create it)",
        )
    state = "writable" if probe == path else f"will be created (in writable {probe})"
    return _ok("data_dir", f"{path} {state}")


def _keys(ctx: _Context, before_init: bool) -> list[Finding]:
    cfg, store = ctx.cfg, ctx.store
    try:
        ctx.passphrase = node_passphrase(cfg)
    except FederationError as exc:
        return [_bad("keys", exc.message, "fix [node] passphrase_file")]
    found: list[Finding] = []
    if not store.exists(cfg.identity):
        if before_init:
            found.append(_ok("keys", f"no key for {cfg.identity} yet: init creates it"))
        else:
            found.append(_bad("keys", f"no key for {cfg.identity} in {store.dir}", ctx.run_init))
    else:
        try:
            ctx.node_key = store.load(cfg.identity, ctx.passphrase)
        except FederationError as exc:
            found.append(_bad("keys", exc.message, exc.hint or _passphrase_fix()))
        else:
            found.append(_ok("keys", f"node key {cfg.identity} (kid {ctx.node_key.kid}) loads"))
    if before_init and not cfg.log_path.exists():
        try:
            site = store.load(cfg.site_identity, ctx.passphrase)
        except FederationError as exc:
            found.append(
                _bad(
                    "keys",
                    f"the site key {cfg.site_identity} is needed once to vouch for the node "
                    f"key: {exc.message}",
                    exc.hint or _passphrase_fix(),
                )
            )
        else:
            ctx.site_key = site.sign_public
            found.append(_ok("keys", f"site key {cfg.site_identity} loads (to vouch once)"))
    return found


def _passphrase_fix() -> str:
    return "set [node] passphrase_file or FEDHUB_PASSPHRASE to the key's passphrase"


def _genesis(ctx: _Context, before_init: bool) -> list[Finding]:
    """The log's genesis: a node key record signed by the site key it names."""
    cfg = ctx.cfg
    if not cfg.log_path.exists():
        if before_init:
            return [_ok("log", f"no log at {cfg.log_path} yet: init creates it")]
        return [_bad("log", f"no event log at {cfg.log_path}", ctx.run_init)]
    try:
        with EventLog.open_readonly(cfg.log_path) as eventlog:
            first = next(eventlog.events(after=0, limit=1), None)
            genesis = first.parsed()["data"] if first is not None else None
            rotated = [
                json.loads(bytes(row[0]))["data"]["record"]
                for row in eventlog.db.execute(
                    "SELECT body FROM events WHERE type = 'key.rotated' ORDER BY seq"
                ).fetchall()
            ]
    except (FederationError, OSError, ValueError, KeyError) as exc:
        return [_bad("log", f"cannot read {cfg.log_path}: {exc}", "restore it from a backup")]
    if genesis is None:
        return [_bad("log", f"{cfg.log_path} has no genesis event", ctx.run_init)]
    site_key = b64d(genesis["site_key"])
    found: list[Finding] = []
    try:
        record = open_record(SignedRecord.model_validate(genesis["node_key"]), KeyRecord, site_key)
    except (FederationError, ValueError) as exc:
        return [_bad("log", f"the genesis node key record does not verify: {exc}")]
    if (record.identity, record.role, record.site) != (cfg.identity, "node", cfg.node.site):
        found.append(
            _bad(
                "log",
                f"{cfg.log_path} is the log of {record.identity}, not {cfg.identity}",
                "point [node] data_dir at this node's own folder",
            )
        )
    kids = {record.kid}
    for signed in rotated:
        kids.add(json.loads(b64d(signed["record"]))["kid"])
    if ctx.node_key is not None and ctx.node_key.kid not in kids:
        found.append(
            _bad(
                "log",
                f"the node key {ctx.node_key.kid} is not the one the site vouched for in the log "
                f"({', '.join(sorted(kids))})",
                "restore the node's key file, or rotate to it with the site's vouching",
            )
        )
    pinned = _pinned_site_key(ctx)
    if pinned is not None and pinned != site_key:
        found.append(
            _bad(
                "log",
                f"the log's genesis names a site key other than the pinned {cfg.site_identity}",
                "the log or the key store belongs to another site: do not run this node",
            )
        )
    ctx.site_key = site_key
    if not found:
        found.append(_ok("log", f"node key vouched by {cfg.site_identity} in the log's genesis"))
    return found


def _pinned_site_key(ctx: _Context) -> bytes | None:
    try:
        return ctx.store.public(ctx.cfg.site_identity).sign_key
    except FederationError:
        return None


# --- trust and people ------------------------------------------------------------------


def _trust(ctx: _Context) -> list[Finding]:
    cfg = ctx.cfg
    if ctx.site_key is None:
        ctx.site_key = _pinned_site_key(ctx)
    if ctx.site_key is not None:
        ctx.trusted[cfg.node.site] = ctx.site_key
    found: list[Finding] = []
    for t in cfg.trust:
        path = cfg.resolve(t.key)
        try:
            if path.exists():
                public = load_public_file(path)
                if public.identity != f"site:{t.site}":
                    found.append(
                        _bad(
                            "trust",
                            f"trust {t.site}: {path} holds the key of {public.identity}",
                            f"pin the file of site:{t.site}",
                        )
                    )
                    continue
                key = public.sign_key
            elif "/" in t.key or t.key.endswith(".pub"):
                found.append(
                    _bad(
                        "trust",
                        f"trust {t.site}: no key file at {path}",
                        "fix the path (relative to the config file), or paste the base64 key",
                    )
                )
                continue
            else:
                key = b64d(t.key)
                if len(key) != 32:
                    raise ValueError("not 32 bytes")
        except (FederationError, ValueError) as exc:
            found.append(
                _bad(
                    "trust",
                    f"trust {t.site}: {t.key!r} is neither a .pub file nor a base64 Ed25519 "
                    f"key ({exc})",
                    "fix the path (relative to the config file), or paste the base64 key",
                )
            )
            continue
        ctx.trusted[t.site] = key
        found.append(_ok("trust", f"site {t.site} pinned"))
    return found


def _users(ctx: _Context) -> list[Finding]:
    cfg = ctx.cfg
    directory = Directory(cfg.node.site, dict(ctx.trusted))
    found: list[Finding] = []
    for text in cfg.users:
        path = cfg.resolve(text)
        try:
            signed = SignedRecord.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:
            found.append(
                _bad("users", f"cannot read key record {path}: {exc}", "fix the path in users")
            )
            continue
        try:
            record = directory.register(signed)
        except FederationError as exc:
            found.append(
                _bad(
                    "users",
                    f"key record {path} is not valid here: {exc.message}",
                    "pin the vouching site in [[trust]], or get a record its site signed",
                )
            )
            continue
        found.append(_ok("users", f"{record.identity} (kid {record.kid}) vouched by {record.site}"))
    return found


# --- modules and grants ----------------------------------------------------------------


def _modules(ctx: _Context) -> list[Finding]:
    cfg = ctx.cfg
    found: list[Finding] = []
    for mod in cfg.modules:
        try:
            backend = load_module(str(cfg.resolve(mod.path)), name=mod.name, log_skipped=False)
        except FederationError as exc:
            found.append(_bad("modules", exc.message, exc.hint or "fix [[modules]] path"))
            continue
        except Exception as exc:  # the module's own code failed while importing
            found.append(
                _bad(
                    "modules",
                    f"module {mod.name}: importing {mod.path} raised {type(exc).__name__}: {exc}",
                    "fix the module (import it by hand to see the traceback)",
                )
            )
            continue
        ctx.functions[mod.name] = set(backend.functions)
        found.append(_ok("modules", f"{mod.name}: {len(backend.functions)} functions"))
    return found


def _grants(ctx: _Context) -> list[Finding]:
    cfg = ctx.cfg
    configured = {m.name for m in cfg.modules}
    found: list[Finding] = []
    for g in cfg.grants:
        where = f"grant to {g.principal} on {g.module}"
        if g.module not in configured:
            found.append(
                _bad(
                    "grants",
                    f"{where}: no module {g.module} in [[modules]]",
                    f"use one of: {', '.join(sorted(configured)) or '(none)'}",
                )
            )
            continue
        functions = ctx.functions.get(g.module)
        if functions is not None:
            for fn in g.functions:
                if not any(Grant(g.principal, g.module, fn).covers(g.module, f) for f in functions):
                    found.append(
                        _bad(
                            "grants",
                            f"{where}: {g.module} has no function {fn}",
                            f"it has: {', '.join(sorted(functions)) or '(none)'}",
                        )
                    )
        if "@" in g.principal:
            site = g.principal.rpartition("@")[2]
            if site not in ctx.trusted and site != cfg.node.site:
                found.append(
                    _bad(
                        "grants",
                        f"{where}: site {site} is not pinned, so {g.principal} can never call",
                        f"add a [[trust]] entry for site {site}",
                    )
                )
    if cfg.grants and all(f.ok for f in found):
        found.append(_ok("grants", f"{len(cfg.grants)} grants name existing modules and functions"))
    return found


# --- NATS ------------------------------------------------------------------------------


def _embedded_server() -> Finding:
    try:
        exe = find_nats_server()
    except FederationError as exc:
        return _bad("nats", exc.message, exc.hint)
    if not os.access(exe, os.X_OK):
        return _bad("nats", f"{exe} is not executable", f"chmod +x {exe}")
    return _ok("nats", f"no [nats] url: the node starts an embedded {exe}")


async def check_nats(cfg: NodeConfig, timeout: float | None = None) -> list[Finding]:
    """Connect to ``[nats] url`` with the configured credentials, once, and ask JetStream."""
    url, shown = cfg.nats.url, safe_url(cfg.nats.url)
    try:
        auth = nats_auth_options(cfg.resolve(cfg.nats.credentials)) if cfg.nats.credentials else {}
        if cfg.nats.ca is not None:
            auth.update(nats_tls_options(cfg.resolve(cfg.nats.ca)))
    except FederationError as exc:
        return [_bad("nats", exc.message, exc.hint)]
    errors: list[Exception] = []

    async def record(exc: Exception) -> None:
        errors.append(exc)

    options: dict[str, Any] = {
        "connect_timeout": timeout or cfg.nats.connect_timeout,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "error_cb": record,
        "name": f"fedhub-node check {cfg.identity}",
    }
    try:
        nc = await nats.connect(url, **options, **auth)
    except (OSError, nats.errors.Error, TimeoutError, ValueError) as exc:
        cause = main_error([*errors, exc])
        if is_auth_error(cause):
            fix = "check [nats] credentials (and the user on the server)"
        else:
            fix = "start the site's NATS server, or fix [nats] url (and any firewall)"
        return [_bad("nats", f"{shown}: {describe_nats_error(cause)}", fix)]
    try:
        return [_ok("nats", f"{shown}: connected and authorized"), *await _jetstream(cfg, nc)]
    finally:
        await nc.close()


async def _jetstream(cfg: NodeConfig, nc: NatsClient) -> list[Finding]:
    found: list[Finding] = []
    try:
        info = await nc.jetstream().account_info()
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
        return [
            _bad(
                "nats",
                "JetStream does not answer ($JS.API.INFO: no responders)",
                "enable JetStream on the site's server (and for the node's account)",
            )
        ]
    except (nats.errors.Error, TimeoutError) as exc:
        return [
            _bad(
                "nats",
                f"JetStream API did not answer: {describe_nats_error(exc)}",
                "allow the node's user to publish on $JS.API.> (and subscribe to _INBOX.>)",
            )
        ]
    domain = getattr(info, "domain", None)
    if domain not in (None, "", cfg.node.site):
        found.append(
            _bad(
                "nats",
                f"the server's JetStream domain is {domain!r}, not the site's name",
                f"set jetstream {{ domain: {cfg.node.site} }} in the site server's config",
            )
        )
    else:
        where = f"domain {domain}" if domain else "no domain"
        found.append(_ok("nats", f"JetStream answers ({where})"))
    limit = int(nc.max_payload)
    if limit < cfg.calls.max_payload:
        found.append(
            _bad(
                "nats",
                f"the server's max_payload ({limit}) is below [calls] max_payload "
                f"({cfg.calls.max_payload})",
                "raise max_payload in the server's config, or lower [calls] max_payload",
            )
        )
    return found


def problems(findings: list[Finding]) -> list[Finding]:
    """The findings that are not ok."""
    return [f for f in findings if not f.ok]


def report_json(cfg_path: Path | None, findings: list[Finding]) -> str:
    """The ``--json`` report."""
    return json.dumps(
        {
            "config": str(cfg_path) if cfg_path else None,
            "ok": not problems(findings),
            "checks": [f.to_json() for f in findings],
        },
        indent=2,
    )
