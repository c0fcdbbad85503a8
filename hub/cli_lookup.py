"""The caller's commands of ``fedhub`` that look things up: ``ls``, ``stub`` and ``status``.

They share the connection options, the client and the deadlines of :mod:`hub.cli_calls`.
See docs/calling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import nats.errors
import structlog

from hub.cli_calls import (
    COMMAND_TIMEOUT,
    DISCOVERY_WINDOW,
    check_request_target,
    client_for,
    connection_options,
    deadline_of,
    default_identity,
    default_url,
    module_info,
    quiet_nats,
    run_command,
)
from hub.cliutil import examples, notice
from hub.errors import ConfigError, NotFoundError, TransportError
from hub.keys import KeyStore
from hub.lifecycle import RequestState
from hub.nats.connection import auth_options
from hub.nats.generate import nats_inbox_prefix
from hub.stub import generate_stub
from hub.subjects import DISCOVERY_SUBJECT, validate_identity, validate_module, validate_site

__all__ = ["add_commands", "discover", "group_answers"]

log = structlog.get_logger(__name__)


# --- fedhub ls --------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    """``fedhub ls [SITE[.MODULE]]``."""
    site, _, module = (args.target or "").partition(".")
    if site:
        validate_site(site)
    if module:
        validate_module(module)
        return run_command(_ls_module(args, site, module), deadline_of(args))
    return run_command(_ls(args, site or None))


async def discover(nc: Any, window: float) -> list[dict[str, Any]]:
    """Collect ``$SRV.INFO`` answers of fedhub services (at every site) for ``window`` s."""
    answers: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        meta = data.get("metadata") or {} if isinstance(data, dict) else {}
        if isinstance(meta, dict) and meta.get("fedhub.site") and meta.get("fedhub.module"):
            answers.append(data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    try:
        # Own site's services answer $SRV.INFO; on a hub with an account per site, the
        # other sites' services answer it through the hub as DISCOVERY_SUBJECT.
        await nc.publish("$SRV.INFO", b"", reply=inbox)
        await nc.publish(DISCOVERY_SUBJECT, b"", reply=inbox)
        await nc.flush(timeout=max(1.0, window))
        await asyncio.sleep(window)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return answers


def group_answers(answers: list[dict[str, Any]], site: str | None) -> list[dict[str, Any]]:
    """One entry per site and module: nodes, functions, description."""
    modules: dict[tuple[str, str], dict[str, Any]] = {}
    for answer in answers:
        meta = answer["metadata"]
        key = (str(meta["fedhub.site"]), str(meta["fedhub.module"]))
        if site is not None and key[0] != site:
            continue
        entry = modules.setdefault(
            key,
            {
                "site": key[0],
                "module": key[1],
                "description": str(answer.get("description") or ""),
                "version": str(answer.get("version") or ""),
                "nodes": [],
                "functions": [],
            },
        )
        node = str(meta.get("fedhub.node") or "")
        if node and node not in entry["nodes"]:
            entry["nodes"].append(node)
        names = [f for f in str(meta.get("fedhub.functions") or "").split(",") if f]
        entry["functions"] = sorted(set(entry["functions"]) | set(names))
    for entry in modules.values():
        entry["nodes"].sort()
    return [modules[key] for key in sorted(modules)]


def _ls_auth(args: argparse.Namespace) -> dict[str, Any]:
    """Credentials, TLS and (when the caller is known) the caller's own NATS inboxes."""
    options = auth_options(args.creds)
    try:
        user = validate_identity(default_identity(args.identity, KeyStore(args.home))).name
    except ConfigError:
        if args.creds or "nkeys_seed" in options or "user_credentials" in options:
            # a caller's credentials may only hear its own inboxes: name the caller
            raise
        return options
    options["inbox_prefix"] = nats_inbox_prefix("caller", user)
    return options


async def _ls(args: argparse.Namespace, site: str | None) -> int:
    window = args.timeout if args.timeout is not None else DISCOVERY_WINDOW
    quiet_nats(args)
    loop = asyncio.get_running_loop()
    until = loop.time() + max(0.0, args.wait)
    while True:  # with --wait: until a module answers (a node just started) or time is up
        url = default_url(args.url, KeyStore(args.home))
        try:
            modules = group_answers(await _discover_at(url, args, window), site)
        except TransportError:
            if loop.time() >= until:
                raise
            modules = []
        if modules or loop.time() >= until:
            break
        await asyncio.sleep(0.2)
    if site is not None and not modules:
        raise NotFoundError(
            f"no module of site {site} answered at {url} within {window:g} s",
            hint="check the site name, that its node runs, and its leaf connection",
        )
    if args.json:
        print(json.dumps(modules, indent=2))
        return 0
    if not modules:
        notice(f"no fedhub module answered at {url} within {window:g} s", "ls.empty", url=url)
        return 0
    for entry in modules:
        nodes = len(entry["nodes"])
        head = f"{entry['site']}.{entry['module']}  ({nodes} node{'s' if nodes != 1 else ''})"
        if entry["description"]:
            head += f"  {entry['description']}"
        print(head)
        for name in entry["functions"]:
            print(f"    {entry['site']}.{entry['module']}.{name}")
    return 0


async def _discover_at(url: str, args: argparse.Namespace, window: float) -> list[dict[str, Any]]:
    try:
        nc = await nats.connect(
            url,
            **_ls_auth(args),
            connect_timeout=5.0,
            max_reconnect_attempts=1,  # 0 would mean "forever" to nats-py
            reconnect_time_wait=0.2,
            name="fedhub ls",
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise TransportError(f"cannot connect to NATS at {url}: {exc}") from exc
    try:
        return await discover(nc, window)
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await nc.drain()


async def _ls_module(args: argparse.Namespace, site: str, module: str) -> int:
    async with await client_for(args) as fed:
        mi = await module_info(fed, KeyStore(args.home).home, site, module)
    info = mi.info
    functions = mi.functions
    skipped = info.skipped
    if args.json:
        out = {
            "site": site,
            "module": module,
            "node": mi.node,
            "node_kid": mi.node_kid,
            "doc": info.doc,
            "functions": {name: fn.model_dump(mode="json") for name, fn in functions.items()},
            "skipped": skipped,
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"{site}.{module}  served by {mi.node} (key vouched for by site:{site})")
    doc = info.doc.strip()
    if doc:
        print(doc.splitlines()[0])
    print()
    for name, fn in sorted(functions.items()):
        print(f"  {fn.signature or name}")
        summary = fn.summary.strip()
        if summary:
            print(f"      {summary.splitlines()[0]}")
    if skipped:
        print()
        for name, reason in sorted(skipped.items()):
            print(f"  not served: {name} ({reason})")
    return 0


# --- fedhub stub ------------------------------------------------------------------------


def cmd_stub(args: argparse.Namespace) -> int:
    """``fedhub stub SITE.MODULE -o client.py``."""
    site, dot, module = args.target.partition(".")
    if not dot or "." in module:
        raise ConfigError(f"{args.target!r} is not SITE.MODULE", hint="e.g. hereon.climate")
    validate_site(site)
    validate_module(module)
    return run_command(_stub(args, site, module), deadline_of(args))


async def _stub(args: argparse.Namespace, site: str, module: str) -> int:
    async with await client_for(args) as fed:
        mi = await fed.module_info(site, module)
    flavour = "async" if args.use_async else "sync"
    source = generate_stub(
        mi.info.model_dump(mode="json"), site=site, node=mi.node, flavour=flavour
    )
    if args.output is None:
        sys.stdout.write(source)
        return 0
    try:
        args.output.write_text(source, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {args.output}: {exc.strerror}") from exc
    notice(
        f"wrote {args.output}: client of {site}.{module} ({len(mi.functions)} functions)",
        "stub.written",
        path=args.output,
    )
    return 0


# --- fedhub status ----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``fedhub status REQUEST_ID --site SITE``."""
    check_request_target(args)
    return run_command(_status(args), deadline_of(args))


async def _status(args: argparse.Namespace) -> int:
    async with await client_for(args) as fed:
        state = (await fed.status(args.site, args.request_id)).model_dump(mode="json")
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    for label, value in _status_rows(state):
        print(f"{label:<10}{value}")
    return 0


def _status_rows(state: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("request", state.get("request_id")),
        ("address", state.get("address")),
        ("caller", state.get("caller")),
        ("state", state.get("state")),
    ]
    ppm = state.get("progress_ppm")
    if isinstance(ppm, int):
        rows.append(("progress", f"{ppm / 10_000:.0f}%"))
    rows += [
        ("code", state.get("code")),
        ("reason", state.get("reason")),
        ("received", state.get("received_time")),
        ("updated", state.get("updated_time")),
        ("attempts", state.get("attempts")),
    ]
    if state.get("result_hash"):
        kept = "stored" if state.get("result_object") else "delivered, no stored copy"
        if state.get("expires_time"):
            kept = f"stored until {state['expires_time']}"
        if state.get("state") in (RequestState.EXPIRED, RequestState.DELETED):
            kept = f"{state['state']}, no longer kept"
        rows.append(("result", f"{kept}, hash {state['result_hash']}"))
    return [(label, str(value)) for label, value in rows if value not in (None, "")]


def add_commands(sub: Any) -> None:
    """Add ``ls``, ``stub`` and ``status`` to the ``fedhub`` subcommands."""
    from hub.cli import command_help

    ls = sub.add_parser(
        "ls",
        help=command_help("ls"),
        epilog=examples("fedhub ls", "fedhub ls hereon.climate", "fedhub ls --wait 30 --json"),
        description="Without SITE.MODULE, list the modules that answer the NATS micro "
        "service discovery ($SRV.INFO) and their functions; with SITE.MODULE, fetch the "
        "module's info (node key verified against the pinned site key) and show every "
        "function's signature and summary.",
    )
    ls.add_argument("target", nargs="?", metavar="SITE[.MODULE]")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="without MODULE: keep asking until a module answers, up to SECONDS (for a "
        "node that is starting)",
    )
    connection_options(
        ls,
        f"without MODULE: how long to collect discovery answers (default "
        f"{DISCOVERY_WINDOW:g}); with it: deadline (default {COMMAND_TIMEOUT:g})",
    )
    ls.set_defaults(func=cmd_ls)

    stub = sub.add_parser(
        "stub",
        help=command_help("stub"),
        epilog=examples(
            "fedhub stub hereon.climate -o climate_client.py",
            "fedhub stub hereon.climate --async -o climate_aio.py",
        ),
        description="Write a Python module with one typed function per remote function "
        "(real parameter names, types, defaults and docstrings) that calls it.",
    )
    stub.add_argument("target", metavar="SITE.MODULE")
    stub.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    stub.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="coroutines on an asyncio client (default: blocking functions)",
    )
    connection_options(stub, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    stub.set_defaults(func=cmd_stub)

    status = sub.add_parser(
        "status",
        help=command_help("status"),
        epilog=examples("fedhub status --site hereon 6pT3uGQ1dS8h5yqgq1wW1w"),
        description="Ask SITE's node about REQUEST_ID (printed by `fedhub call`): state, "
        "progress, times, and the error code and reason of a failed call.",
    )
    status.add_argument("request_id", metavar="REQUEST_ID")
    status.add_argument("--site", required=True, help="the site the request went to")
    status.add_argument("--json", action="store_true", help="print JSON")
    connection_options(status, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    status.set_defaults(func=cmd_status)
