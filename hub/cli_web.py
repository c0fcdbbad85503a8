"""``fedhub web``: start the local web console (:mod:`hub.web`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "cmd_web", "open_console"]


def open_console(settings: Any, port: int, open_browser: bool) -> int:
    """Serve ``settings`` until Ctrl-C; print the link (with its token) when it listens."""
    from hub.web import serve

    async def ready(url: str) -> None:
        print(f"fedhub console: {url}", flush=True)
        print("  (it listens on 127.0.0.1 only; the link's token is the key to it)", flush=True)
        if open_browser:
            webbrowser.open(url)

    try:
        asyncio.run(serve(settings, port, ready))
    except KeyboardInterrupt:
        print("console stopped", file=sys.stderr)
        return 130
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    """``fedhub web``: the console for callers and auditors, acting with your key store."""
    from hub.cli_calls import quiet_nats
    from hub.cliutil import read_passphrase
    from hub.keys import KeyStore
    from hub.web import ConsoleSettings

    quiet_nats(args)
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    settings = ConsoleSettings(
        url=args.url,
        identity=args.identity,
        home=KeyStore(args.home).home,
        passphrase=passphrase,
        creds=str(args.creds) if args.creds else None,
        ca=os.environ.get("FEDHUB_CA"),
        hub_url=args.hub,
        hub_creds=str(args.hub_creds) if args.hub_creds else None,
    )
    return open_console(settings, args.port, args.open)


def add_web_options(parser: argparse.ArgumentParser) -> None:
    """``--port`` and ``--open`` (shared with ``fedhub-node web``)."""
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
    parser.add_argument("--open", action="store_true", help="open the console in a browser")


def add_commands(sub: Any) -> None:
    """Add ``web`` to the ``fedhub`` subcommands."""
    from hub.cli_calls import connection_options
    from hub.cliutil import examples

    web = sub.add_parser(
        "web",
        help="a local web console: call functions from forms, follow calls, audit logs",
        description="Serve the fedhub console on 127.0.0.1 with a random token and print "
        "its link. It acts with your key store (keys never leave this machine). Operators "
        "start it with `fedhub-node web --config NODE.toml` to add the node's pages.",
        epilog=examples(
            "fedhub web --as klaus@geomar --open",
            "fedhub web --hub tls://hub.example.org:4222 --hub-creds auditor.nk",
        ),
    )
    add_web_options(web)
    web.add_argument(
        "--hub", metavar="URL", help="the hub whose copies of the sites' logs auditors read"
    )
    web.add_argument(
        "--hub-creds", type=Path, metavar="FILE", help="the NKey to read the hub's copies with"
    )
    connection_options(web, "default deadline of calls made from the console")
    web.set_defaults(func=cmd_web)
