"""``fedhub``: the federation's command line (keys, audit, calls, dev mode, federation set-up).

Start-up is kept short: ``fedhub --help`` and ``--version`` import no command module at all,
and a command imports only its own module (the client, NATS and the array stack load only
for the commands that use them). :data:`COMMANDS` names, for every command, the module that
builds its parser (``add_commands(sub)``) and runs it.

``fedhub call`` and ``fetch`` go to the user's resident agent first (docs/agent.md): this
module imports nothing at its top but ``sys``, so that path pays for Python's start, the
standard-library client :mod:`hub.agent_client` and the call.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see main)
if TYPE_CHECKING:
    import argparse

__all__ = ["COMMANDS", "build_parser", "command_help", "main"]

#: command → (the module that defines it, its one line in ``fedhub --help``). A module may
#: define several commands (its ``add_commands`` adds them all).
COMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("hub.cli_keys", "create, show, vouch for, revoke and import identities' keys"),
    "call": ("hub.cli_calls", "call a remote function: fedhub call site.module.function k=v ..."),
    "fetch": ("hub.cli_calls", "get the stored result of one of your earlier calls again"),
    "ls": ("hub.cli_lookup", "list reachable modules and functions (SITE.MODULE: signatures)"),
    "stub": ("hub.cli_lookup", "generate a typed Python client module for SITE.MODULE"),
    "status": ("hub.cli_lookup", "show the node's record of one of your requests"),
    "serve": ("hub.serve", "try a module: serve FILE.py on a throwaway local node (dev mode)"),
    "audit": ("hub.cli_audit", "replay a node's log (SQLite or exported JSONL) and verify it"),
    "federation": ("hub.federation_cli", "generate the NATS configs of a federation"),
    "requests": ("hub.cli_results", "list your requests (and results shared with you)"),
    "result": ("hub.cli_results", "kept results: ls, get, share, unshare, tag, keep, rm"),
    "provenance": ("hub.cli_results", "the proven lineage of a result (inputs, function, log)"),
    "web": ("hub.cli_web", "a local web console: call functions from forms, follow calls, audit"),
    "completion": ("hub.completion", "print the shell completion script (bash)"),
    "agent": ("hub.agent_cli", "the resident agent that makes `fedhub call` start at once"),
}

EXAMPLES = """examples:
  fedhub serve mymodule.py                     try a module on a throwaway local node
  fedhub ls                                    what the federation serves
  fedhub call hereon.climate.compute_sum da=@in.nc --out out.nc
  fedhub audit events.jsonl                    verify a node's signed log

every command has --help with an example; docs/calling.md has the rest.
"""


def command_help(name: str) -> str:
    """The one-line help of command ``name`` (for its module's ``add_parser``)."""
    return COMMANDS[name][1]


def _chosen_command(argv: list[str]) -> str | None:
    """The command named on the line (after the global options), if any."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--home")
    pre.add_argument("--log-level")
    pre.add_argument("--log-json", action="store_true")
    pre.add_argument("--no-agent", action="store_true")
    pre.add_argument("command", nargs="?")
    pre.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        known, _ = pre.parse_known_args(argv)
    except SystemExit:  # a malformed global option: the full parser says what is wrong
        return None
    return known.command if known.command in COMMANDS else None


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser of ``fedhub``: full for ``command`` ("*": every command), the others
    only named (their modules are not imported)."""
    import argparse
    import importlib
    from pathlib import Path

    from hub import __version__
    from hub.cliutil import EXIT_CODES, HelpFormatter

    parser = argparse.ArgumentParser(
        prog="fedhub",
        description="fedhub: federated, end-to-end encrypted remote procedures.",
        epilog=EXAMPLES + "\n" + EXIT_CODES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fedhub {__version__}")
    parser.add_argument(
        "--home", type=Path, help="key store home (default $FEDHUB_HOME or ~/.config/fedhub)"
    )
    parser.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning, error")
    parser.add_argument(
        "--no-agent",
        action="store_true",
        help="run here, not in the resident agent (as FEDHUB_AGENT=off; docs/agent.md)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = COMMANDS[command][0] if command in COMMANDS else None
    loaded: set[str] = set()
    for name, (module, text) in COMMANDS.items():
        if command == "*" or module == chosen:
            if module not in loaded:
                loaded.add(module)
                importlib.import_module(module).add_commands(sub)
        else:
            sub.add_parser(name, help=text, add_help=False)
    for each in _subparsers(parser):
        each.formatter_class = HelpFormatter
        _global_options(each)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's parser below ``parser``, at any depth (``keys new`` too)."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [child, *_subparsers(child)]
    return found


def _global_options(parser: argparse.ArgumentParser) -> None:
    """``--log-json``/``--log-level`` after the command too (``fedhub call ... --log-json``);
    given there, they win over the same option given before the command."""
    import argparse

    known = {option for action in parser._actions for option in action.option_strings}
    if "--log-json" not in known:
        parser.add_argument(
            "--log-json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log as JSON lines on stderr",
        )
    if "--log-level" not in known:
        parser.add_argument(
            "--log-level", default=argparse.SUPPRESS, help="debug, info, warning, error"
        )


def configure_logging(*, json_logs: bool = False, level: str = "warning") -> None:
    """:func:`hub.cliutil.configure_logging`, imported when a command runs, not at start."""
    from hub.cliutil import configure_logging as configure

    configure(json_logs=json_logs, level=level)


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_chosen_command(argv)).parse_args(argv)
    configure_logging(json_logs=args.log_json, level=args.log_level)
    func = getattr(args, "func", None)
    if func is None:  # a command registered without its module: cannot happen on purpose
        build_parser().parse_args(argv)
        return 2
    return int(func(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedhub``. As the program itself (no ``argv``), ``call`` and
    ``fetch`` first go to the user's resident agent (:mod:`hub.agent_client`): this module
    imports nothing else at its top, so that path costs little beyond Python's start."""
    if argv is None:
        from hub.agent_client import run

        code = run(sys.argv[1:])
        if code is not None:  # all its output went out with os.write, nothing is buffered:
            import os

            os._exit(code)  # the interpreter's teardown would cost more than the call
    from hub.cliutil import run_main

    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
