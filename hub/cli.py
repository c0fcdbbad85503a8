"""``fedhub``: the federation's command line (keys, audit, and calls)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hub import __version__
from hub.cliutil import configure_logging, run_main
from hub.logfile import LogUnreadableError

__all__ = ["main"]


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

    from hub import cli_audit, cli_keys, serve

    cli_keys.add_commands(sub)
    cli_audit.add_commands(sub)
    serve.add_commands(sub)
    _add_call_commands(sub)
    _add_federation_commands(sub)
    return parser


def _add_call_commands(sub: Any) -> None:
    """The caller's commands: call and fetch (:mod:`hub.cli_calls`), ls, stub and status
    (:mod:`hub.cli_lookup`)."""
    from hub import cli_calls, cli_lookup

    cli_calls.add_commands(sub)
    cli_lookup.add_commands(sub)


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
