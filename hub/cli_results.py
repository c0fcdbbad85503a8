"""``fedhub requests`` and the ``fedhub result`` noun group: find, get, share kept results.

``fedhub requests`` (also ``fedhub result ls``) lists my requests at every pinned site,
``result get`` fetches a kept result (mine, or one shared with me; with ``--isel`` and
``--var`` only part of my array result, :mod:`hub.slices`), ``result share`` and
``result unshare`` give a colleague or a group access to it and take it back, ``result
tag`` tags it (searched with ``--tag`` and ``--query``), ``result keep`` shortens how
long it is kept, ``result rm`` removes it before it expires. Each is a
signed catalog message (:mod:`hub.results_client`); see docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hub.answers import RequestRecord
from hub.bulk import SavedTo
from hub.cli_calls import (
    COMMAND_TIMEOUT,
    _output,
    check_request_target,
    client_for,
    connection_options,
    deadline_of,
    run_command,
)
from hub.cliutil import add_examples
from hub.clock import format_time
from hub.errors import ConfigError
from hub.query import Query, Tag
from hub.result_formats import FORMATS, render
from hub.results_client import RequestList, fetch_result
from hub.slices import parse_isel, slice_result

__all__ = ["add_commands", "parse_span", "parse_when"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, now: datetime | None = None) -> str:
    """A time given on the command line, in fedhub's text form: ``2h``/``3d`` ago, a
    date (``2026-11-30``) or a date and time (``2026-11-30T10:00``, UTC unless it says)."""
    match = _RELATIVE.match(text.strip())
    if match:
        ago = timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        return format_time((now or datetime.now(UTC)) - ago)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"{text!r} is no time", hint="use 2h, 3d, 2026-11-30 or 2026-11-30T10:00"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_time(moment)


# --- fedhub requests / result ls -----------------------------------------------------------


def cmd_requests(args: argparse.Namespace) -> int:
    """``fedhub requests [--site S ...] [filters] [--json]``."""
    return run_command(_requests(args), deadline_of(args))


def _search(args: argparse.Namespace) -> Query | None:
    """The query of ``--query``, ``--query-file`` and every ``--tag``, ANDed."""
    parts: list[Query] = [Tag(t) for t in args.tag or ()]
    if args.query:
        parts.append(Query.parse(args.query))
    if args.query_file:
        try:
            parts.append(Query.from_json(json.loads(args.query_file.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read a query from {args.query_file}: {exc}") from exc
    if not parts:
        return None
    query = parts[0]
    for part in parts[1:]:
        query = query & part
    return query


async def _requests(args: argparse.Namespace) -> int:
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    shared = True if args.shared else (False if args.mine else None)
    query = _search(args)
    if args.save_query:
        if query is None:
            raise ConfigError("--save-query needs a query (--query, --tag or --query-file)")
        args.save_query.write_text(query.dumps() + "\n")
    async with await client_for(args) as fed:
        found: RequestList = await fed.requests(
            args.site or None,
            module=args.module,
            function=args.function,
            status=args.status,
            since=since,
            until=until,
            shared=shared,
            query=query,
            limit=args.limit,
        )
    for site, why in sorted(found.unreachable.items()):
        print(f"warning: site {site} did not answer: {why}", file=sys.stderr)
    for site in sorted(found.truncated):
        print(f"warning: site {site} has more matches than --limit {args.limit}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.model_dump(mode="json", exclude_none=True) for r in found], indent=2))
        return 0
    _print_table(list(found))
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _print_table(records: list[RequestRecord]) -> None:
    if not records:
        print("no requests", file=sys.stderr)
        return
    rows = [("REQUEST", "ADDRESS", "STATE", "RECEIVED", "SIZE", "KEPT TO", "SHARING", "TAGS")]
    for r in records:
        sharing = f"from {r.caller}" if r.shared_with_me else ", ".join(r.shares)
        tags = [*r.tags, *(f"{t} (shared)" for t in r.shared_tags)]
        rows.append(
            (
                r.request_id,
                r.address or "-",
                r.state.value,
                (r.received_time or "-")[:19].replace("T", " "),
                _size(r.result_size),
                (r.expires_time or "yes")[:10] if r.kept else "no",
                sharing or "-",
                ", ".join(tags) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --- fedhub result get / share / unshare ---------------------------------------------------


def cmd_get(args: argparse.Namespace) -> int:
    """``fedhub result get REQUEST_ID --site SITE [--out PATH | --json]``."""
    check_request_target(args)
    return run_command(_get(args), deadline_of(args))


async def _get(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is not None and args.json:
        raise ConfigError("give --json or --format, not both")
    straight = args.out if fmt in (None, "nc") else None  # a large NetCDF result, streamed
    isel = parse_isel(args.isel or ())
    async with await client_for(args) as fed:
        if isel or args.var:
            value = await slice_result(
                fed,
                args.site,
                args.request_id,
                isel=isel,
                variables=args.var,
                result_path=straight,
            )
        else:
            value = await fetch_result(fed, args.site, args.request_id, result_path=straight)
    if fmt is None or isinstance(value, SavedTo):
        _output(value, args)
        return 0
    text = render(value, fmt, args.out)
    if text is not None:
        sys.stdout.write(text)
    else:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    """``fedhub result share|unshare REQUEST_ID --site SITE --with PRINCIPAL``."""
    check_request_target(args)
    return run_command(_share(args), deadline_of(args))


async def _share(args: argparse.Namespace) -> int:
    async with await client_for(args) as fed:
        if args.unshare:
            answer = await fed.unshare(args.site, args.request_id, args.principal)
            print(f"no longer shared with {answer.principal} (log event {answer.seq})")
        else:
            answer = await fed.share(args.site, args.request_id, args.principal)
            keys = len(answer.recipients)
            print(
                f"shared with {answer.principal} ({keys} key{'s' * (keys != 1)}, "
                f"log event {answer.seq})"
            )
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """``fedhub result tag REQUEST_ID --site SITE [--shared] [--remove] TAG...``."""
    check_request_target(args)
    return run_command(_tag(args), deadline_of(args))


async def _tag(args: argparse.Namespace) -> int:
    add, remove = ((), args.tags) if args.remove else (args.tags, ())
    async with await client_for(args) as fed:
        answer = await fed.tag(args.site, args.request_id, add, remove, shared=args.shared)
    scope = "shared" if args.shared else "private"
    print(f"{scope} tags of {answer.request_id}: {', '.join(answer.tags) or '(none)'}")
    return 0


def parse_span(text: str) -> float:
    """A duration given on the command line: ``90s``, ``30m``, ``12h``, ``2d``, ``1w``."""
    match = _RELATIVE.match(text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is no duration", hint="use 90s, 30m, 12h, 2d or 1w")
    return float(match.group(1)) * _UNITS[match.group(2)]


def cmd_keep(args: argparse.Namespace) -> int:
    """``fedhub result keep REQUEST_ID --site SITE --for SPAN``."""
    check_request_target(args)
    span = parse_span(args.keep_for)
    return run_command(_keep(args, span), deadline_of(args))


async def _keep(args: argparse.Namespace, span: float) -> int:
    async with await client_for(args) as fed:
        answer = await fed.keep_result(args.site, args.request_id, span)
    print(f"the result of {answer.request_id} is kept until {answer.expires_time}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """``fedhub result rm REQUEST_ID --site SITE``."""
    check_request_target(args)
    return run_command(_rm(args), deadline_of(args))


async def _rm(args: argparse.Namespace) -> int:
    async with await client_for(args) as fed:
        answer = await fed.delete_result(args.site, args.request_id)
    print(f"removed the kept result of {answer.request_id} (log event {answer.seq})")
    return 0


def cmd_provenance(args: argparse.Namespace) -> int:
    """``fedhub provenance REQUEST_ID --site SITE [--json | --mermaid | --dot]``."""
    check_request_target(args)
    return run_command(_provenance(args), deadline_of(args))


async def _provenance(args: argparse.Namespace) -> int:
    from hub.provenance import proofs_note

    async with await client_for(args) as fed:
        lineage = await fed.provenance(args.site, args.request_id)
    if args.proofs is not None:
        args.proofs.mkdir(parents=True, exist_ok=True)
        calls, written = [lineage], 0
        while calls:  # this call's proofs, then those of the calls it took results from
            call = calls.pop()
            calls += call.earlier
            for proof in call.proofs:
                path = args.proofs / f"{call.request_id}-{proof.event.seq}.json"
                path.write_text(proof.model_dump_json(indent=2) + "\n")
                written += 1
        print(f"{written} proofs written to {args.proofs}", file=sys.stderr)
        print(proofs_note(lineage), file=sys.stderr)
    if args.json:
        print(json.dumps(lineage.to_json(), indent=2))
    elif args.mermaid:
        sys.stdout.write(lineage.mermaid())
    elif args.dot:
        sys.stdout.write(lineage.dot())
    else:
        print("\n".join(lineage.lines()))
    return 0


# --- the parser ---------------------------------------------------------------------------


def _list_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--site", action="append", help="only this site (repeatable; default: every pinned site)"
    )
    parser.add_argument("--module", help="only calls of this module")
    parser.add_argument("--function", help="only calls of this function (or Class.method)")
    parser.add_argument(
        "--status", help="only requests in this state (completed, failed, ...) or 'kept'"
    )
    parser.add_argument("--since", help="received since: 2h, 3d, 2026-11-30, 2026-11-30T10:00")
    parser.add_argument("--until", help="received before (same forms as --since)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--shared", action="store_true", help="only results shared with me")
    who.add_argument("--mine", action="store_true", help="only my own requests")
    parser.add_argument("--tag", action="append", help="only results I tagged so (repeatable)")
    parser.add_argument(
        "--query",
        metavar="TEXT",
        help="only those matching: tag:x AND (module:climate OR NOT state:failed) AND size>1000",
    )
    parser.add_argument(
        "--query-file", type=Path, metavar="PATH", help="a saved query (its JSON form)"
    )
    parser.add_argument(
        "--save-query", type=Path, metavar="PATH", help="also write the query's JSON form here"
    )
    parser.add_argument("--limit", type=int, default=1000, help="at most this many per site")
    parser.add_argument("--json", action="store_true", help="print JSON records")
    connection_options(parser, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    parser.set_defaults(func=cmd_requests)


def _target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", metavar="REQUEST_ID")
    parser.add_argument("--site", required=True, help="the site the request went to")


def add_commands(sub: Any) -> None:
    """Add ``requests`` and ``result ls|get|share|unshare|tag|keep|rm`` to ``fedhub``."""
    requests = sub.add_parser(
        "requests",
        help="list your requests (and results shared with you) at every site",
        description="Ask every pinned site (or --site) for your requests there: address, "
        "state, times, result size, whether a copy is kept and with whom it is shared. "
        "Each site answers only about your own requests and those shared with you.",
    )
    _list_options(requests)

    result = sub.add_parser("result", help="kept results: ls, get, share, unshare, tag, keep, rm")
    rsub = result.add_subparsers(dest="result_command", required=True, metavar="COMMAND")
    _list_options(rsub.add_parser("ls", help="the same as `fedhub requests`"))

    get = rsub.add_parser(
        "get",
        help="get a kept result (yours, or one shared with you)",
        description="Fetch the kept result of REQUEST_ID from SITE, open it with your key "
        "and print or write it like `fedhub call` does.",
    )
    _target(get)
    get.add_argument("--json", action="store_true", help="print the result as JSON")
    get.add_argument(
        "--out", type=Path, metavar="PATH", help="write the result to PATH (.nc, .npy, .json)"
    )
    get.add_argument(
        "--format",
        choices=FORMATS,
        help="json, csv (tables, small arrays), nc or zarr (xarray; with --out)",
    )
    get.add_argument(
        "--isel",
        action="append",
        metavar="DIM=SPEC",
        help="only these positions of an array result you own: time=0:10, lat=3 "
        "(repeatable; the node opens it for this request: see docs/results.md)",
    )
    get.add_argument(
        "--var", action="append", metavar="NAME", help="only this variable (repeatable)"
    )
    connection_options(get, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    get.set_defaults(func=cmd_get)

    for name, unshare in (("share", False), ("unshare", True)):
        cmd = rsub.add_parser(
            name,
            help=(
                "take back a share: later fetches by it are refused"
                if unshare
                else "let a colleague or a group fetch a kept result (nothing is uploaded)"
            ),
        )
        _target(cmd)
        cmd.add_argument(
            "--with",
            dest="principal",
            required=True,
            metavar="USER|group:NAME",
            help="name@site, or group:NAME",
        )
        connection_options(cmd, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
        cmd.set_defaults(func=cmd_share, unshare=unshare)

    tag = rsub.add_parser(
        "tag",
        help="tag your result (private, or --shared with those you share it with)",
        description="Add TAGs to the kept result of REQUEST_ID (or --remove them). Tags are "
        "private unless --shared: shared tags are seen by whoever the result is shared with.",
    )
    _target(tag)
    tag.add_argument("tags", nargs="+", metavar="TAG", help="letters, digits, _ . -")
    tag.add_argument("--shared", action="store_true", help="tags seen by those you share with")
    tag.add_argument("--remove", action="store_true", help="remove the tags instead")
    connection_options(tag, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    tag.set_defaults(func=cmd_tag)

    prov = sub.add_parser(
        "provenance",
        help="the proven lineage of a result: inputs, function, site, times, log events",
        description="Ask SITE's node for the events of REQUEST_ID with proofs of inclusion "
        "in its signed log, check every proof against the pinned site key, and print the "
        "lineage read from them.",
    )
    _target(prov)
    form = prov.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON")
    form.add_argument("--mermaid", action="store_true", help="print a Mermaid flowchart")
    form.add_argument("--dot", action="store_true", help="print a Graphviz digraph")
    prov.add_argument(
        "--proofs", type=Path, metavar="DIR", help="also write each event's proof to DIR"
    )
    connection_options(prov, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    prov.set_defaults(func=cmd_provenance)

    keep = rsub.add_parser(
        "keep",
        help="keep your result for less than the site would (it is removed sooner)",
        description="Ask SITE's node to keep the result of REQUEST_ID only SPAN after the "
        "call completed; never longer than the module's keep-for time.",
    )
    _target(keep)
    keep.add_argument(
        "--for", dest="keep_for", required=True, metavar="SPAN", help="90s, 30m, 12h, 2d, 1w"
    )
    connection_options(keep, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    keep.set_defaults(func=cmd_keep)

    rm = rsub.add_parser(
        "rm",
        help="remove the kept result of your request now (before it expires)",
        description="Ask SITE's node to remove the kept result of REQUEST_ID (yours): "
        "the node deletes it and logs result.deleted; nobody can fetch it afterwards.",
    )
    _target(rm)
    connection_options(rm, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    rm.set_defaults(func=cmd_rm)
    add_examples(requests, {"": ["fedhub requests --site hereon --since 2d --status failed"]})
    add_examples(prov, {"": ["fedhub provenance --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --mermaid"]})
    add_examples(
        result,
        {
            "": ["fedhub result get --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --out sum.nc"],
            "ls": ["fedhub result ls --tag paper --json"],
            "get": [
                "fedhub result get --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --out sum.nc",
                "fedhub result get --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --isel time=0:10"
                " --var t2m --out part.nc",
            ],
            "share": ["fedhub result share --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --with anna@awi"],
            "unshare": [
                "fedhub result unshare --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --with anna@awi"
            ],
            "tag": ["fedhub result tag --site hereon 6pT3uGQ1dS8h5yqgq1wW1w paper --shared"],
            "keep": ["fedhub result keep --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --for 2d"],
            "rm": ["fedhub result rm --site hereon 6pT3uGQ1dS8h5yqgq1wW1w"],
        },
    )
