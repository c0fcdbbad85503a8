"""``fedhub-node``: run a site node and administer its log."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel

from hub import __version__
from hub.canonical import b64d
from hub.cli_web import add_web_options, open_console
from hub.cliutil import add_examples, configure_logging, run_main
from hub.errors import ConfigError, StopRequestedError
from hub.records import SignedRecord
from node import projections
from node.bootstrap import open_log
from node.config import NodeConfig, load_config
from node.eventlog import EventLog, StoredEvent

if TYPE_CHECKING:
    from hub.answers import AdminAnswer
    from node.daemon import NodeDaemon

__all__ = ["main"]

_log = structlog.get_logger("node.cli")


def _log_path(args: argparse.Namespace) -> Path:
    """The log named by ``--db``, or the log of the node ``--config`` describes."""
    return Path(args.db) if args.db is not None else load_config(args.config).log_path


def _log_source(parser: argparse.ArgumentParser) -> None:
    """``--db LOG`` or ``--config NODE.toml``: the same choice in every ``log`` action."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", type=Path, help="the node's SQLite log")
    source.add_argument("--config", type=Path, help="the node's config (its log)")


def _open_db(path: Path) -> EventLog:
    """Open an existing log file for reading by an operator (no key needed)."""
    if not path.is_file():
        raise ConfigError(f"no event log at {path}")
    return EventLog.open_readonly(path)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    configure_logging(json_logs=cfg.log.format == "json" or args.log_json, level=cfg.log.level)
    return asyncio.run(_run(cfg, args.grace))


async def _run(cfg: NodeConfig, grace: float) -> int:
    """Serve until SIGINT/SIGTERM: exit 0, also when the signal comes while waiting for
    NATS; exit 1 when the node stopped by itself (its NATS connection closed for good).

    The health and metrics endpoint, when configured, starts first: it answers 503 while
    the node waits for NATS.
    """
    from node.daemon import NodeDaemon
    from node.natslink import quiet_library_logging
    from node.observability import ObservabilityServer

    quiet_library_logging()
    daemon = NodeDaemon(cfg, grace=grace)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.request_stop)
    async with contextlib.AsyncExitStack() as endpoint:
        if cfg.observability.listen:
            await endpoint.enter_async_context(
                ObservabilityServer(daemon, cfg.observability.listen)
            )
        try:
            await _serve(daemon)
        except StopRequestedError:
            _log.info("node.stopped", reason="signal", before="connected to NATS")
            return 0
    if daemon.failure is not None:
        _log.error("node.failed", reason=daemon.failure)
        return 1
    return 0


async def _serve(daemon: NodeDaemon) -> None:
    from node.natslink import safe_url

    cfg = daemon.cfg
    async with daemon:
        tune_collector()
        modules = ", ".join(m.name for m in cfg.modules) or "no modules"
        if cfg.log.format != "json":  # a JSON log stream holds JSON only (node.started says it)
            print(
                f"node {daemon.eventlog.log_id if daemon.eventlog else cfg.identity} serving "
                f"{modules} on {safe_url(daemon.url)}",
                flush=True,
            )
        await daemon.serve()
        await daemon.stop("signal" if daemon.failure is None else "failed")


#: Allocations between two collections of the youngest generation (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_collector() -> None:
    """Set up the cyclic garbage collector for a long-running node process.

    Everything loaded at start (modules, numpy, xarray, pydantic models) lives as long as
    the process: ``gc.freeze()`` keeps it out of every later scan. And a call allocates
    thousands of short-lived objects, nearly all freed by reference counting, so the young
    generation is collected less often. Measured: ~10 % of a busy node's CPU went to the
    collector before. Only for the ``fedhub-node run`` process, never for a library user's.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def cmd_status(args: argparse.Namespace) -> int:
    from node.daemon import read_status_file

    cfg = load_config(args.config)
    status = read_status_file(cfg.node.data_dir)
    alive = False
    if status is not None:
        try:
            os.kill(int(status["pid"]), 0)
            alive = True
        except (OSError, KeyError, ValueError):
            alive = False
    log_info: dict[str, object] = {}
    if cfg.log_path.exists():
        with EventLog.open_readonly(cfg.log_path) as log:
            head = log.head()
            log_info = {"events": log.size, "checkpoint_size": head and _cp_size(head)}
    out = {"node": cfg.identity, "running": alive, "log": log_info}
    if alive and status is not None:
        out.update({k: status[k] for k in ("url", "modules", "in_flight", "queue") if k in status})
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if alive else 3
    state = f"running (pid {status['pid']})" if alive and status else "not running"
    print(f"node      {cfg.identity}  {state}")
    if alive and status is not None:
        print(f"nats      {status.get('url')}")
        print(f"in flight {status.get('in_flight')}")
        queue = status.get("queue") or {}
        print(f"queue     {queue.get('waiting', '?')} waiting, {queue.get('unacked', '?')} unacked")
        for name, st in (status.get("modules") or {}).items():
            figures = ", ".join(f"{k} {v}" for k, v in st.items())
            print(f"module    {name}: {figures}")
    events, cp = log_info.get("events", 0), log_info.get("checkpoint_size")
    print(f"log       {events} events, last checkpoint at {cp}")
    return 0 if alive else 3


def _cp_size(head: SignedRecord) -> int:
    return int(json.loads(b64d(head.record))["size"])


def cmd_init(args: argparse.Namespace) -> int:
    from node.check import problems, run_checks

    cfg = load_config(args.config)
    found = problems(run_checks(cfg, before_init=True))
    for f in found:
        fix = f" ({f.fix})" if f.fix else ""
        print(f"error: {f.check}: {f.message}{fix}", file=sys.stderr)
    if found:
        return 1
    with open_log(cfg, create=True) as log:
        print(f"node {cfg.identity}: key {log.key.kid}, log {cfg.log_path} ({log.size} events)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from node.check import problems, report_json, run_checks

    cfg = load_config(args.config)
    findings = run_checks(cfg, offline=args.offline)
    bad = problems(findings)
    if args.json:
        print(report_json(cfg.source, findings))
    else:
        for f in findings:
            print(f.line())
        total = len(findings)
        print(f"{len(bad)} of {total} checks failed" if bad else f"all {total} checks passed")
    return 1 if bad else 0


def cmd_log_export(args: argparse.Namespace) -> int:
    with _open_db(_log_path(args)) as log:
        count = log.export(args.output)
    print(f"exported {count} events to {args.output}")
    return 0


def cmd_log_head(args: argparse.Namespace) -> int:
    path = _log_path(args)
    with _open_db(path) as log:
        head = log.head()
        size = log.size
    if head is None:
        raise ConfigError(f"{path} has no checkpoint yet ({size} events)")
    print(json.dumps(head.model_dump(), indent=2))
    return 0


def cmd_log_rebuild(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    with open_log(cfg) as log:
        count = log.rebuild_projections()
    print(f"rebuilt projections from {count} events")
    return 0


def cmd_log_checkpoint(args: argparse.Namespace) -> int:
    """Append a checkpoint to the log of a node that is not running (the running node holds
    its log, and writes one every ``checkpoint_every`` events)."""
    cfg = load_config(args.config)
    cfg.node.data_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.node.data_dir / "node.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"node {cfg.identity} is running and holds its log",
                hint=f"it checkpoints every {cfg.log.checkpoint_every} events; stop it to "
                "checkpoint now",
            ) from None
        with open_log(cfg) as log:
            ev = log.checkpoint()
    print(f"checkpoint at seq {ev.seq} (covers events 1..{ev.seq - 1})")
    return 0


def cmd_log_prove(args: argparse.Namespace) -> int:
    """Write the proof of one event, or that one checkpoint extends another."""
    from node.proving import consistency_proof_of, event_proof_of, read_checkpoint

    if (args.seq is None) == (args.consistency is None):
        raise ConfigError("give SEQ or --consistency OLD.json [NEW.json], not both or neither")
    if args.config is not None:
        cfg = load_config(args.config)
        path, hint = cfg.log_path, f"run: fedhub-node log checkpoint --config {args.config}"
    else:
        path, hint = args.db, "run: fedhub-node log checkpoint --config <the node's config>"
    proof: BaseModel
    with _open_db(path) as log:
        if args.seq is not None:
            proof = event_proof_of(log, args.seq, hint=hint)
            what = f"event {args.seq}"
        else:
            files = args.consistency
            if len(files) > 2:
                raise ConfigError("--consistency takes OLD.json and at most one NEW.json")
            new = read_checkpoint(files[1]) if len(files) == 2 else None
            proof = consistency_proof_of(log, read_checkpoint(files[0]), new)
            what = "consistency"
    text = proof.model_dump_json(indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"{what}: proof written to {args.output}", file=sys.stderr)
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    path = _log_path(args)
    with _open_db(path) as log:
        row = projections.request_status(log.db.conn, args.request_id)
    if row is None:
        raise ConfigError(f"no request {args.request_id} in {path}")
    print(json.dumps(row, indent=2))
    return 0


def cmd_admin_apply(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    try:
        signed = SignedRecord.model_validate_json(args.record.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read signed record {args.record}: {exc}") from exc
    kind = json.loads(b64d(signed.record)).get("kind")
    op = {"key": "register", "revocation": "revoke", "grant": "grant", "group": "group"}.get(kind)
    if op is None:
        raise ConfigError(
            f"{args.record} is a {kind!r} record; key records, revocations, grants and groups"
        )
    return _admin(cfg, op, signed, args)


def cmd_admin_grant(args: argparse.Namespace) -> int:
    """Sign a grant record of this site's module with the site key and apply it."""
    import time

    from hub.clock import now
    from hub.keys import KeyStore
    from hub.records import GrantRecord, sign_record

    cfg = load_config(args.config)
    site = KeyStore(cfg.node.key_home).load(cfg.site_identity, os.environ.get("FEDHUB_PASSPHRASE"))
    record = GrantRecord(
        site=cfg.node.site,
        principal=args.principal,
        module=args.module,
        function=args.function,
        allow=not args.withdraw,
        serial=args.serial if args.serial is not None else time.time_ns() // 1000,
        time=now(),
    )
    return _admin(cfg, "grant", sign_record(record, site.signing_key), args)


def cmd_admin_revoke(args: argparse.Namespace) -> int:
    from hub.clock import now
    from hub.keys import KeyStore
    from hub.records import Revocation, sign_record

    cfg = load_config(args.config)
    site = KeyStore(cfg.node.key_home).load(cfg.site_identity, os.environ.get("FEDHUB_PASSPHRASE"))
    rev = Revocation(identity=args.identity, kid=args.kid, time=now(), reason=args.reason)
    return _admin(cfg, "revoke", sign_record(rev, site.signing_key), args)


def _admin(cfg: NodeConfig, op: str, signed: SignedRecord, args: argparse.Namespace) -> int:
    """Send a signed record to the running node, or append it to the log when it is down.

    A running node is reached at the URL it wrote into its status file, as the site's
    operator: ``--creds`` (default ``$FEDHUB_CREDS``, an ``operator-NAME.nk`` seed from
    ``fedhub federation init``) and ``--ca`` (default ``$FEDHUB_CA``) on a secured site."""
    from node.admin import admin_message, apply_admin, load_directory
    from node.daemon import read_status_file

    message = admin_message(op, signed)
    status = read_status_file(cfg.node.data_dir)
    if status is not None and _alive(status):
        auth = _operator_auth(args.creds, args.ca)
        answer = asyncio.run(_send_admin(str(status["url"]), cfg.node.site, message, auth))
        print(f"{op}: applied by the running node (event {answer.seq})")
        return 0
    with open_log(cfg) as log:
        state = load_directory(cfg, log)

        async def append(*events: BaseModel) -> list[StoredEvent]:
            return log.append_many(list(events))

        if state.pending:
            log.append_many(state.pending)
        answer = asyncio.run(apply_admin(state.directory, append, message))
    print(f"{op}: appended to the log (event {answer.seq}); takes effect at the next start")
    return 0


def _alive(status: dict[str, object]) -> bool:
    try:
        os.kill(int(str(status["pid"])), 0)
    except (OSError, KeyError, ValueError):
        return False
    return True


def _operator_auth(creds: Path | None, ca: Path | None) -> dict[str, Any]:
    """Connection options of the site's operator: NKey, CA, and the operator's own inboxes
    (named by the seed file, ``operator-NAME.nk``, as generated)."""
    from hub.nats.connection import CREDS_ENV, auth_options
    from hub.nats.generate import nats_inbox_prefix

    options = auth_options(creds, ca)
    seed = creds or (Path(os.environ[CREDS_ENV]) if os.environ.get(CREDS_ENV) else None)
    if seed is not None and seed.stem.startswith("operator-"):
        options["inbox_prefix"] = nats_inbox_prefix("operator", seed.stem.removeprefix("operator-"))
    return options


async def _send_admin(url: str, site: str, message: bytes, auth: dict[str, Any]) -> AdminAnswer:
    import nats

    from hub.answers import AdminAnswer, error_from_headers
    from hub.subjects import admin_subject
    from node.natslink import describe_nats_error

    errors: list[Exception] = []

    async def quiet(exc: Exception) -> None:  # one line below, not nats-py's tracebacks
        errors.append(exc)

    try:
        nc = await nats.connect(
            url,
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=quiet,
            **auth,
        )
    except Exception as exc:
        exc = errors[0] if errors else exc
        raise ConfigError(
            f"cannot reach the node's NATS at {url}: {describe_nats_error(exc)}",
            hint="on a secured site, log in as its operator: --creds operator-NAME.nk --ca ca.pem",
        ) from exc
    try:
        reply = await nc.request(admin_subject(site), message, timeout=5)
    except Exception as exc:
        raise ConfigError(
            f"the node did not answer: {describe_nats_error(exc)}",
            hint="only the site's operator may send admin records (--creds operator-NAME.nk)",
        ) from exc
    finally:
        await nc.close()
    refused = error_from_headers(reply.headers)
    if refused is not None:
        raise ConfigError(f"the node refused it: {refused.message}", hint=refused.hint)
    try:
        return AdminAnswer.model_validate_json(reply.data)
    except ValueError as exc:
        raise ConfigError(f"the node's answer is not an admin answer: {exc}") from exc


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from hub.schemas import write_schemas
    from node.modules import load_module

    extra: dict[str, dict[str, object]] = {}
    if args.config:
        cfg = load_config(args.config)
        for mod in cfg.modules:
            backend = load_module(str(cfg.resolve(mod.path)), name=mod.name)
            for fname, spec in backend.functions.items():
                base = f"modules/{cfg.node.site}.{mod.name}/{fname}"
                extra[f"{base}.arguments"] = spec.arguments_schema()
                extra[f"{base}.returns"] = spec.return_schema()
    written = write_schemas(args.output, extra)
    print(f"wrote {len(written)} schemas below {args.output}")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    """``fedhub-node web``: the console, with the operator's pages of this node."""
    from hub.web import ConsoleSettings
    from node.console import NodeView
    from node.daemon import read_embedded_url

    cfg = load_config(args.config)
    # calls from the console go where the CLI's would; a local embedded server is found
    url = os.environ.get("FEDHUB_URL") or read_embedded_url(cfg.node.data_dir)
    settings = ConsoleSettings(url=url, identity=args.identity, home=args.home)
    settings.operator = NodeView(cfg)
    return open_console(settings, args.port, args.open)


def _operator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--creds", type=Path, help="the site operator's NKey seed (default $FEDHUB_CREDS)"
    )
    parser.add_argument(
        "--ca", type=Path, help="the federation's CA certificate (default $FEDHUB_CA)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhub-node", description="fedhub site node.")
    parser.add_argument("--version", action="version", version=f"fedhub-node {__version__}")
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the site node until SIGINT/SIGTERM")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument(
        "--grace", type=float, default=30.0, help="seconds in-flight calls get to finish on stop"
    )
    run.set_defaults(func=cmd_run)
    st = sub.add_parser("status", help="modules, in-flight calls and log head of a node")
    st.add_argument("--config", type=Path, required=True)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    web = sub.add_parser(
        "web",
        help="the web console with this node's pages: status, queue, events, graphs",
        epilog="example: fedhub-node web --config node.toml --as ops@hereon",
    )
    web.add_argument("--config", type=Path, required=True)
    web.add_argument("--as", dest="identity", help="who calls from the console (name@site)")
    web.add_argument("--home", type=Path, help="key store home of the console's user")
    add_web_options(web)
    web.set_defaults(func=cmd_web)

    init = sub.add_parser(
        "init",
        help="check the config, then create the node key and its event log (needs the site "
        "key once)",
    )
    init.add_argument("--config", type=Path, required=True)
    init.set_defaults(func=cmd_init)

    chk = sub.add_parser(
        "check",
        help="check a config against what it names: keys, log, trust, users, modules, "
        "grants, data dir, NATS (exit 1 on any problem)",
    )
    chk.add_argument("--config", type=Path, required=True)
    chk.add_argument("--json", action="store_true", help="the findings as JSON")
    chk.add_argument(
        "--offline",
        action="store_true",
        help="skip connecting to [nats] url (e.g. before a start: the node waits for NATS)",
    )
    chk.set_defaults(func=cmd_check)

    log = sub.add_parser("log", help="export, inspect and maintain the event log")
    lsub = log.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    exp = lsub.add_parser("export", help="write the log as JSON Lines")
    _log_source(exp)
    exp.add_argument("-o", "--output", type=Path, required=True)
    exp.set_defaults(func=cmd_log_export)
    head = lsub.add_parser("head", help="print the latest signed checkpoint")
    _log_source(head)
    head.set_defaults(func=cmd_log_head)
    reb = lsub.add_parser("rebuild", help="rebuild projections (request status) from the events")
    reb.add_argument("--config", type=Path, required=True)
    reb.set_defaults(func=cmd_log_rebuild)
    cp = lsub.add_parser(
        "checkpoint", help="append a signed checkpoint now (the node must not be running)"
    )
    cp.add_argument("--config", type=Path, required=True)
    cp.set_defaults(func=cmd_log_checkpoint)
    prove = lsub.add_parser(
        "prove",
        help="prove one event (SEQ) or that one checkpoint extends another (--consistency)",
        description="Write a proof that `fedhub audit --proof` / `--consistency` checks "
        "offline (see docs/merkle.md).",
    )
    prove.add_argument("seq", type=int, nargs="?", help="the event's sequence number")
    prove.add_argument(
        "--consistency",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="OLD.json [NEW.json]: signed checkpoints (default NEW: the log's latest)",
    )
    _log_source(prove)
    prove.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")
    prove.set_defaults(func=cmd_log_prove)
    req = lsub.add_parser("request", help="show the projected status of one request")
    _log_source(req)
    req.add_argument("request_id")
    req.set_defaults(func=cmd_request)
    admin = sub.add_parser(
        "admin", help="register or revoke keys, grant, set groups (live when the node runs)"
    )
    asub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    app = asub.add_parser(
        "apply", help="apply a signed key record, revocation, grant or group record (JSON file)"
    )
    app.add_argument("--config", type=Path, required=True)
    _operator_options(app)
    app.add_argument("record", type=Path)
    app.set_defaults(func=cmd_admin_apply)
    rv = asub.add_parser("revoke", help="revoke a key, signed with this site's key")
    rv.add_argument("--config", type=Path, required=True)
    _operator_options(rv)
    rv.add_argument("kid")
    rv.add_argument("--identity", required=True, help="whose key it is (name@site)")
    rv.add_argument("--reason", default="revoked by the site operator")
    rv.set_defaults(func=cmd_admin_revoke)
    gr = asub.add_parser(
        "grant", help="let PRINCIPAL call MODULE here (signed with this site's key; published)"
    )
    gr.add_argument("--config", type=Path, required=True)
    _operator_options(gr)
    gr.add_argument("principal", help="name@site, group:NAME or group:OWNER/NAME")
    gr.add_argument("module")
    gr.add_argument("--function", default="*", help="a function, Class.*, or * (default)")
    gr.add_argument("--withdraw", action="store_true", help="take the grant away")
    gr.add_argument("--serial", type=int, help="order of this grant's records (default: now, µs)")
    gr.set_defaults(func=cmd_admin_grant)

    schemas = sub.add_parser("schemas", help="JSON Schemas of the protocol and modules")
    ssub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    sexp = ssub.add_parser("export", help="write the JSON Schemas (wire, records, events, modules)")
    sexp.add_argument("-o", "--output", type=Path, default=Path("schemas"))
    sexp.add_argument("--config", type=Path, help="also the argument/return schemas of its modules")
    sexp.set_defaults(func=cmd_schemas_export)
    add_examples(parser, EXAMPLES)
    return parser


#: One example per command of ``fedhub-node`` (shown at the end of its ``--help``).
EXAMPLES = {
    "": ["fedhub-node init --config site.toml", "fedhub-node run --config site.toml"],
    "run": ["fedhub-node run --config site.toml --grace 60"],
    "status": ["fedhub-node status --config site.toml --json"],
    "web": ["fedhub-node web --config site.toml --as ops@hereon"],
    "init": ["fedhub-node init --config site.toml"],
    "check": ["fedhub-node check --config site.toml --offline"],
    "log": ["fedhub-node log export --config site.toml -o events.jsonl"],
    "log export": ["fedhub-node log export --config site.toml -o events.jsonl"],
    "log head": ["fedhub-node log head --db data/events.db"],
    "log rebuild": ["fedhub-node log rebuild --config site.toml"],
    "log checkpoint": ["fedhub-node log checkpoint --config site.toml"],
    "log prove": ["fedhub-node log prove 42 --config site.toml -o event-42.json"],
    "log request": ["fedhub-node log request --config site.toml 6pT3uGQ1dS8h5yqgq1wW1w"],
    "admin": ["fedhub-node admin grant --config site.toml klaus@geomar climate"],
    "admin apply": ["fedhub-node admin apply --config site.toml klaus.json"],
    "admin revoke": [
        "fedhub-node admin revoke --config site.toml 37217437eea054d003b0 --identity klaus@hereon"
    ],
    "admin grant": [
        "fedhub-node admin grant --config site.toml group:modellers climate --function '*'"
    ],
    "schemas": ["fedhub-node schemas export -o schemas --config site.toml"],
    "schemas export": ["fedhub-node schemas export -o schemas --config site.toml"],
}


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json_logs=args.log_json, level=args.log_level)
    return int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedhub-node``."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
