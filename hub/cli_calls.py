"""The caller's commands of ``fedhub`` that call: ``call`` and ``fetch``; and what every
caller's command shares (the connection options, the client, deadlines, output).

Every command takes ``--url`` (default ``$FEDHUB_URL``, else ``nats://127.0.0.1:4222``),
``--as IDENTITY`` (default ``$FEDHUB_IDENTITY``, else the only person key in the key
store), ``--passphrase-file``, ``--creds`` (a NATS credentials file, default
``$FEDHUB_CREDS``) and ``--timeout``. Errors print one line and exit 1 (see
:func:`hub.cliutil.run_main`); Ctrl-C during ``fedhub call`` asks the node to cancel the
call and exits 130. See docs/calling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import datetime as dt
import enum
import json
import logging
import os
import pprint
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import numpy as np
import structlog

from hub.agent_host import Connection, connect_with, connected, running_in_agent
from hub.argfiles import as_declared, parse_cli_argument, write_result
from hub.bulk import SavedTo
from hub.call_handle import ModuleInfo
from hub.cli_progress import ProgressBar, tick
from hub.client import CallHandle, Client
from hub.cliutil import examples, notice, read_passphrase
from hub.defaults import DEFAULT_URL, default_identity, default_url
from hub.errors import (
    ArgumentError,
    CallTimeoutError,
    ConfigError,
    FederationError,
    NotFoundError,
    TransportError,
)
from hub.infocache import keep_info, kept_info
from hub.keys import KeyStore
from hub.lifecycle import FINAL
from hub.subjects import (
    parse_address,
    validate_site,
)

__all__ = [
    "COMMAND_TIMEOUT",
    "DEFAULT_URL",
    "DISCOVERY_WINDOW",
    "add_commands",
    "check_request_target",
    "client_for",
    "connection_of",
    "connection_options",
    "deadline_of",
    "default_identity",
    "default_url",
    "guarded",
    "module_info",
    "passphrase_prompt",
    "prepare_call",
    "prepare_fetch",
    "quiet_nats",
    "run_command",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How long ``fedhub ls`` collects micro service answers by default (seconds).
DISCOVERY_WINDOW = 0.5
#: Default deadline of ``ls SITE.MODULE``, ``stub`` and ``status`` (seconds).
COMMAND_TIMEOUT = 30.0
#: How long Ctrl-C keeps asking the node to cancel a call it has not started yet (s).
CANCEL_WINDOW = 5.0
#: Keyword names ``Client.submit`` keeps for itself (they cannot be remote arguments yet).
_CLIENT_OPTIONS = frozenset(
    {"timeout", "on_progress", "on_transfer", "result_path", "compress", "keep"}
)
#: What request ids look like (``hub.envelopes``' rule).
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


# --- connecting -------------------------------------------------------------------------


def quiet_nats(args: argparse.Namespace) -> None:
    """Keep nats-py's own error log (a traceback per failed connect) off the terminal.

    Failures reach the user as one error line; ``--log-level debug`` shows them all.
    """
    if str(getattr(args, "log_level", "warning")).lower() != "debug":
        nats_log = logging.getLogger("nats")
        nats_log.addHandler(logging.NullHandler())
        nats_log.propagate = False


def _key_prompt(store: KeyStore, identity: str) -> str | None:
    """The prompt for ``identity``'s passphrase (None: its key has none)."""
    if store.exists(identity) and store.has_passphrase(identity):
        return f"passphrase for {identity}: "
    return None


def passphrase_prompt(args: argparse.Namespace) -> str | None:
    """The prompt a command would ask the key's passphrase with on the terminal (None:
    no need to ask: no passphrase, or given by file or environment)."""
    if args.passphrase_file is not None or os.environ.get("FEDHUB_PASSPHRASE"):
        return None
    store = KeyStore(args.home)
    return _key_prompt(store, default_identity(args.identity, store))


def connection_of(args: argparse.Namespace) -> Connection:
    """The resolved connection of a command (may ask for the passphrase on a terminal)."""
    store = KeyStore(args.home)
    identity = default_identity(args.identity, store)
    prompt = _key_prompt(store, identity)
    ca = os.environ.get("FEDHUB_CA")
    return Connection(
        url=default_url(args.url, store),
        identity=identity,
        home=store.home.absolute(),
        passphrase=read_passphrase(args.passphrase_file, prompt=prompt),
        creds=str(args.creds.absolute()) if args.creds else None,
        ca=str(Path(ca).absolute()) if ca else None,
        timeout=args.timeout if args.timeout is not None else 300.0,
    )


async def client_for(args: argparse.Namespace) -> Client:
    quiet_nats(args)
    return await connect_with(connection_of(args))


def _in_this_context(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` run in the context of the command that made it: a client's callbacks come
    from its reader task, and in the agent, output goes where the command's goes."""
    context = contextvars.copy_context()
    return lambda *args: context.run(fn, *args)


def run_command(coro: Coroutine[Any, Any, T], deadline: float | None = None) -> T:
    """Run a command's coroutine; errors of other libraries become one-line errors."""
    return asyncio.run(guarded(coro, deadline))


async def guarded(coro: Coroutine[Any, Any, T], deadline: float | None = None) -> T:
    """Await a command's coroutine within ``deadline``; errors of other libraries become
    one-line errors (:func:`run_command`; the agent awaits it on its own loop)."""
    try:
        async with asyncio.timeout(deadline):
            return await coro
    except FederationError:
        raise
    except TimeoutError as exc:
        within = f" within {deadline:g} s" if deadline is not None else ""
        raise CallTimeoutError(f"no answer{within}", hint="raise --timeout") from exc
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"NATS failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        log.debug("cli.unexpected_error", exc_info=True)
        text = " ".join(str(exc).split())[:300]
        raise FederationError(
            f"unexpected {type(exc).__name__}: {text}",
            hint="run with --log-level debug to see where",
        ) from exc


def deadline_of(args: argparse.Namespace) -> float:
    """Overall deadline of a command that makes requests (not calls)."""
    return float(args.timeout) if args.timeout is not None else COMMAND_TIMEOUT


# --- fedhub call ------------------------------------------------------------------------


def _call_arguments(texts: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for text in texts:
        key, value = parse_cli_argument(text, stream_files=True)
        if key in kwargs:
            raise ArgumentError(f"argument {key!r} is given twice")
        kwargs[key] = value
    clash = sorted(kwargs.keys() & _CLIENT_OPTIONS)
    if clash:
        raise ArgumentError(
            f"an argument named {clash[0]!r} cannot be passed yet: hub.client's call() "
            "takes that name as its own option",
            hint="use --timeout for the call's deadline",
        )
    return kwargs


def cmd_call(args: argparse.Namespace) -> int:
    """``fedhub call SUBJECT key=value ...``."""
    return run_command(prepare_call(args))


def prepare_call(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    """``fedhub call``'s reading part (address, arguments and their files, connection: all
    that depends on the working directory and environment), and the coroutine that calls.

    The agent runs the first under its caller's directory and environment, then awaits
    the second on its own loop.
    """
    quiet_nats(args)
    target = parse_address(args.subject)
    kwargs = _call_arguments(args.arguments)
    args.keep_seconds = _keep_span(args.keep)
    conn = connection_of(args)
    out = args.out.absolute() if args.out is not None else None
    return guarded(_call(args, conn, out, target.address, target.site, kwargs))


def _keep_span(text: str | None) -> float | None:
    """``--keep SPAN`` in seconds (``0``: keep no copy; None: not asked)."""
    if text is None:
        return None
    from hub.cli_results import parse_span

    return 0.0 if text.strip() == "0" else parse_span(text)


async def _call(
    args: argparse.Namespace,
    conn: Connection,
    out: Path | None,
    address: str,
    site: str,
    kwargs: dict[str, Any],
) -> int:
    show = not args.no_progress and sys.stderr.isatty()
    bar = ProgressBar(sys.stderr, address) if show else None
    async with connected(conn) as fed:
        async with _sigint() as interrupted:
            handle = await _submit(fed, args, conn.home, address, kwargs, out, bar)
            notice(f"request {handle.request_id}", "call.submitted", request_id=handle.request_id)
            if args.queue:
                notice(
                    f"queued; get the result later: fedhub fetch --site {site} {handle.request_id}",
                    "call.queued",
                    request_id=handle.request_id,
                )
                return 0
            if handle.saved is not None:
                notice(
                    f"compressed arguments: {handle.saved:.0%} saved",
                    "call.compressed",
                    saved=round(handle.saved, 3),
                )
            ticker = asyncio.create_task(tick(bar)) if bar is not None else None
            try:
                outcome = await _result_or_interrupt(handle, interrupted)
            finally:
                if ticker is not None:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
                if bar is not None:
                    bar.close()
        if outcome is _INTERRUPTED:  # a second Ctrl-C from here on stops at once
            return await _cancel(handle, site)
        _output(outcome, args, out)
    return 0


_INTERRUPTED = object()


class _InfoChanged(Exception):  # noqa: N818 (a signal inside this module, never raised out)
    """The module's fresh info differs from the one a call was sealed with."""


async def _submit(
    fed: Client,
    args: argparse.Namespace,
    home: Path,
    address: str,
    kwargs: dict[str, Any],
    out: Path | None,
    bar: ProgressBar | None,
    *,
    overlap: bool = True,
) -> CallHandle:
    """Submit ``fedhub call``'s call once its module's node has answered an info request
    (else NotFoundError at once, not a call queued for a node that is down; with
    ``--queue``, the kept info). A client that knows the module already (the resident
    agent's) seals the call while the request is under way, and sends it once the answer
    is the info it sealed with; another answer means the interface changed: sealed again."""
    target = parse_address(address)
    known = fed.cached_info(target.site, target.module) if overlap and not args.queue else None
    if known is not None and target.function not in known.functions:
        known = None  # perhaps new: ask first, as submit's "no such function" would be wrong
    fresh = module_info(fed, home, target.site, target.module, queue=args.queue)
    if known is None:
        info, gate = await fresh, None
    else:
        info, gate = known, asyncio.ensure_future(fresh)
    fn = info.functions.get(target.function)
    declared = as_declared(kwargs, fn.arguments) if fn is not None else kwargs  # else submit says

    async def answered() -> None:
        assert gate is not None
        if await gate is not info:
            raise _InfoChanged

    try:
        return await fed.submit(
            address,
            timeout=args.timeout,
            on_progress=_in_this_context(bar.update) if bar is not None else None,
            on_transfer=_in_this_context(bar.transfer) if bar is not None else None,
            result_path=out,
            compress=args.compress,
            keep=args.keep_seconds,
            gate=answered if gate is not None else None,
            **declared,
        )
    except _InfoChanged:
        return await _submit(fed, args, home, address, kwargs, out, bar, overlap=False)
    finally:
        if gate is not None and not gate.done():
            gate.cancel()  # submit failed before it waited for the answer


async def module_info(
    fed: Client, home: Path, site: str, module: str, *, queue: bool = False
) -> ModuleInfo:
    """The module's info from its node (kept for later), or with ``queue`` while no node
    answers, the info kept from an earlier call (verified again)."""
    try:
        mi = await fed.module_info(site, module, refresh=True)  # fresh, also from the agent
    except (CallTimeoutError, NotFoundError) as exc:
        kept = kept_info(home, site, module) if queue else None
        if kept is None:
            if queue:
                exc.hint = (
                    f"no info of {site}.{module} is kept from an earlier call: run "
                    f"`fedhub ls {site}.{module}` once while its node runs"
                )
            raise
        data, when = kept
        notice(
            f"{site}.{module} does not answer; queueing with its info kept at "
            f"{when:%Y-%m-%d %H:%M} UTC",
            "call.info_kept",
            kept=when.isoformat(),
        )
        return fed.remember_info(site, module, data)
    keep_info(home, site, module, mi.info.model_dump_json().encode())
    return mi


@contextlib.asynccontextmanager
async def _sigint() -> AsyncIterator[asyncio.Event]:
    """An event set by Ctrl-C (SIGINT) while the block runs, instead of KeyboardInterrupt.

    Installed before the call is sent, so an interrupt at any moment after it left finds
    the request id and cancels it at the node.
    """
    host = running_in_agent()
    if host is not None:  # the agent: the caller's Ctrl-C arrives over its socket
        async with host.interrupts() as event:
            yield event
        return
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (not main)
        yield interrupted
        return
    try:
        yield interrupted
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _result_or_interrupt(handle: CallHandle, interrupted: asyncio.Event) -> Any:
    """The call's result, or :data:`_INTERRUPTED` once ``interrupted`` is set."""
    result = asyncio.ensure_future(handle.result())
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({result, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not result.done():
            result.cancel()
    if result.done() and not result.cancelled():
        return result.result()
    return _INTERRUPTED


async def _cancel(handle: CallHandle, site: str) -> int:
    rid = handle.request_id
    state: str | None = None
    try:
        state = await _ask_to_cancel(handle, site)
    except FederationError as exc:
        line = f"could not ask {site} to cancel request {rid}: {exc.diagnostics()}"
    else:
        if state == "cancelling":
            line = f"asked {site} to cancel request {rid}"
        elif state is None:
            line = f"{site} did not confirm cancelling request {rid} (see `fedhub status`)"
        else:
            line = f"request {rid} had already {state} at {site}"
    notice(f"interrupted; {line}", "call.interrupted", request_id=rid, state=state)
    return EXIT_INTERRUPTED


async def _ask_to_cancel(handle: CallHandle, site: str) -> str | None:
    """Ask until the node confirms (``"cancelling"``), the call is over (its final state),
    or :data:`CANCEL_WINDOW` passes (``None``).

    The node cancels only a call it is running; one sent a moment ago may still be on its
    way or being decrypted, so the request is repeated for a short while.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_WINDOW
    while True:
        try:
            answer = await handle.cancel()
        except NotFoundError:  # not received by the node yet
            answer = None
        if answer is not None and answer.cancelling:
            return "cancelling"
        if answer is not None and answer.state in FINAL:
            return str(answer.state)
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(0.05)


def _output(value: Any, args: argparse.Namespace, out: Path | None = None) -> None:
    """Print or write a result (``out``: ``--out`` made absolute; shown as given)."""
    out = out if out is not None else args.out
    if isinstance(value, SavedTo):  # a large result received straight into --out
        shown = args.out or value.path
        notice(f"wrote {shown}", "result.written", path=shown)
    elif out is not None:
        write_result(value, out)
        notice(f"wrote {args.out}", "result.written", path=args.out)
    elif args.json:
        print(json.dumps(value, default=jsonable, indent=2, ensure_ascii=False))
    elif isinstance(value, str):
        print(value)
    elif _is_xarray(value):
        print(repr(value))
    else:
        print(pprint.pformat(value, width=100, sort_dicts=False))


def _is_xarray(value: Any) -> bool:
    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(value, xr.DataArray | xr.Dataset)


def jsonable(value: Any) -> Any:
    """``json.dumps`` default for call results: numpy → lists, xarray → ``to_dict()``.

    Dates and times become ISO 8601 text, durations seconds, bytes base64 text, enums their
    value, sets lists.
    """
    if _is_xarray(value):
        return value.to_dict(data="list")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "mM":
            return value.astype(str).tolist()
        if value.dtype.hasobject:
            return [jsonable(v) if not _json_native(v) else v for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.astype(str).item() if value.dtype.kind in "mM" else value.item()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON")


def _json_native(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


def check_request_target(args: argparse.Namespace) -> None:
    """``--site`` is a site name and ``REQUEST_ID`` looks like a request id."""
    validate_site(args.site)
    if not _REQUEST_ID.fullmatch(args.request_id):
        raise ConfigError(
            f"{args.request_id!r} is not a request id",
            hint="use the id `fedhub call` printed (request <id>)",
        )


def cmd_fetch(args: argparse.Namespace) -> int:
    """``fedhub fetch REQUEST_ID --site SITE [--out PATH | --json]``."""
    return run_command(prepare_fetch(args))


def prepare_fetch(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    """``fedhub fetch``'s reading part and its coroutine (as :func:`prepare_call`)."""
    quiet_nats(args)
    check_request_target(args)
    conn = connection_of(args)
    out = args.out.absolute() if args.out is not None else None
    return guarded(_fetch(args, conn, out), deadline_of(args))


async def _fetch(args: argparse.Namespace, conn: Connection, out: Path | None) -> int:
    async with connected(conn) as fed:
        value = await fed.fetch(args.site, args.request_id, result_path=out)
    _output(value, args, out)
    return 0


# --- the parser -------------------------------------------------------------------------


def connection_options(parser: argparse.ArgumentParser, timeout_help: str) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=None,
        help="NATS URL (default $FEDHUB_URL, else the embedded server of a node running "
        f"here with the same key store, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--as",
        dest="identity",
        metavar="IDENTITY",
        help="who calls, name@site (default $FEDHUB_IDENTITY, else the only person key)",
    )
    group.add_argument(
        "--passphrase-file", type=Path, help="read the key's passphrase from this file"
    )
    group.add_argument(
        "--creds",
        type=Path,
        default=Path(os.environ["FEDHUB_CREDS"]) if os.environ.get("FEDHUB_CREDS") else None,
        help="NATS credentials file (default $FEDHUB_CREDS)",
    )
    group.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser that lets options and ``key=value`` arguments mix.

    Plain argparse stops filling ``key=value ...`` at the first option, so
    ``fedhub call S --json a=1`` would fail; this parses such a line intermixed.
    """

    _intermixing = False
    #: The usage line, formatted once: ``parse_known_intermixed_args`` formats it on every
    #: parse (for its error messages) when ``usage`` is unset, which costs more than the parse
    #: itself in the resident agent.
    _usage_text: str | None = None

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        if self._usage_text is None:
            self._usage_text = self.format_usage().removeprefix("usage: ")
        saved, self.usage = self.usage, self.usage or self._usage_text
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
            self.usage = saved


def add_commands(sub: Any) -> None:
    """Add ``call`` and ``fetch`` to the ``fedhub`` subcommands (``ls``, ``stub`` and
    ``status`` are in :mod:`hub.cli_lookup`)."""
    from hub.cli import command_help

    call = sub.add_parser(
        "call",
        help=command_help("call"),
        epilog=examples(
            "fedhub call hereon.climate.compute_sum da=@in.nc --out out.nc",
            "fedhub call hereon.climate.scale 'values=[1, 2, 3]' factor=3 --json",
            "fedhub call hereon.climate.scale 'values=[1, 2]' --keep 2d",
        ),
        description="Call SUBJECT (site.module.function or site.module.Class.method) with "
        "keyword arguments. key=value is JSON when it parses as JSON, else a string; "
        "key=@PATH reads a file (.nc → xarray, .npy → numpy, .json → JSON, else bytes); "
        "key=@@text is the string '@text'. The request id goes to stderr; Ctrl-C asks the "
        "node to cancel the call (exit 130).",
    )
    call.add_argument("subject", metavar="SUBJECT", help="site.module.function")
    call.add_argument("arguments", nargs="*", metavar="key=value", help="the function's arguments")
    shape = call.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print the result as JSON")
    shape.add_argument(
        "--out", type=Path, metavar="PATH", help="write the result to PATH (.nc, .npy, .json)"
    )
    call.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    call.add_argument(
        "--compress", action="store_true", help="zstd-compress large arguments (per chunk)"
    )
    call.add_argument(
        "--queue",
        action="store_true",
        help="send the call and exit without waiting (the site's stream keeps it, also for "
        "a node that is down now); get the result later with `fedhub fetch`",
    )
    call.add_argument(
        "--keep",
        metavar="SPAN",
        help="keep the result only SPAN after the call (90s, 30m, 12h, 2d, 1w; 0: keep no "
        "copy); the site keeps it no longer than its own keep-for time",
    )
    connection_options(call, "deadline of the call in seconds (default 300)")
    call.set_defaults(func=cmd_call, prepare=prepare_call)
    call.__class__ = _IntermixedParser

    fetch = sub.add_parser(
        "fetch",
        help=command_help("fetch"),
        epilog=examples("fedhub fetch --site hereon 6pT3uGQ1dS8h5yqgq1wW1w --out again.nc"),
        description="Ask SITE's node for the result of REQUEST_ID it kept (sealed for "
        "your key; the node logs result.fetched), open it and print or write it like "
        "`fedhub call` does.",
    )
    fetch.add_argument("request_id", metavar="REQUEST_ID")
    fetch.add_argument("--site", required=True, help="the site the request went to")
    shape = fetch.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print the result as JSON")
    shape.add_argument(
        "--out", type=Path, metavar="PATH", help="write the result to PATH (.nc, .npy, .json)"
    )
    connection_options(fetch, f"deadline in seconds (default {COMMAND_TIMEOUT:g})")
    fetch.set_defaults(func=cmd_fetch, prepare=prepare_fetch)
