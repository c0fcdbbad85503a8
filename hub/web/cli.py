"""``fedhub web``: start the console on 127.0.0.1 and print the URL that opens it."""

from __future__ import annotations

import argparse
import secrets
import socket
import webbrowser
from typing import Any

from hub.cliutil import examples
from hub.errors import ConfigError

__all__ = ["add_commands", "cmd_web"]


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the console until Ctrl-C."""
    try:
        import uvicorn

        from hub.web.app import create_app
    except ImportError as exc:
        raise ConfigError(f"the web console needs {exc.name}", hint="install fedhub[web]") from exc
    from hub.cli_calls import client_for

    token = secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", args.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}") from exc
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/?token={token}"
    sock.listen(64)  # connections wait in the backlog until the server accepts them

    def ready() -> None:
        print(f"fedhub web: {url}", flush=True)
        if not args.no_browser:
            webbrowser.open(url)

    app = create_app(lambda: client_for(args), token, on_ready=ready, home=args.home)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def add_commands(sub: Any) -> None:
    """Add ``web`` to the ``fedhub`` subcommands."""
    from hub.cli import command_help
    from hub.cli_calls import connection_options

    web = sub.add_parser(
        "web",
        help=command_help("web"),
        description="Serve the web console on 127.0.0.1, acting with your key store (keys "
        "stay on this machine), and print the URL with its token. Every page's data is also "
        "JSON under /api (send the token as an X-Fedhub-Token header).",
        epilog=examples("fedhub web", "fedhub web --port 8765 --no-browser"),
    )
    web.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    web.add_argument("--no-browser", action="store_true", help="only print the URL")
    connection_options(web, "deadline of each call in seconds (default 300)")
    web.set_defaults(func=cmd_web)
