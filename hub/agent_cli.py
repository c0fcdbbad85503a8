"""``fedhub agent start|stop|status``: the resident agent that runs ``fedhub call`` and
``fetch`` with fedhub already imported and connected (docs/agent.md)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from hub import agent_client
from hub.cliutil import examples, notice
from hub.errors import ConfigError

__all__ = ["add_commands"]

#: How long ``start`` and ``stop`` wait for the agent to answer or to go (seconds).
WAIT = 15.0


def _folder() -> str:
    folder = agent_client.agent_dir()
    if folder is None:
        raise ConfigError(
            "the agent's socket path would be too long for a Unix socket",
            hint="set FEDHUB_HOME or XDG_RUNTIME_DIR to a shorter path, or use FEDHUB_AGENT=off",
        )
    return folder


def _status(folder: str) -> dict[str, Any] | None:
    answer = agent_client.ask(folder, "status")
    return json.loads(answer) if answer is not None else None


def cmd_start(args: argparse.Namespace) -> int:
    """Start the agent in the background (or say that one runs) and wait until it answers."""
    folder = _folder()
    if agent_client.disabled([]):
        raise ConfigError("FEDHUB_AGENT is off here", hint="unset it to use the agent")
    status = _status(folder)
    if status is None and os.path.lexists(folder) and not agent_client.private_dir(folder):
        raise ConfigError(
            f"the agent's folder {folder} is not a private directory of yours: refusing to "
            "serve from it",
            hint=f"remove it, or run: chmod 700 {folder}",
        )
    if status is None:
        agent_client.start_agent(folder, idle=args.idle)
        deadline = time.monotonic() + WAIT
        while status is None and time.monotonic() < deadline:
            time.sleep(0.05)
            status = _status(folder)
        if status is None:
            log = Path(folder, "agent.log")
            raise ConfigError(f"the agent did not start in {WAIT:g} s", hint=f"see {log}")
        notice(f"agent {status['pid']} started: {status['socket']}", "agent.started", **status)
    else:
        notice(f"agent {status['pid']} runs: {status['socket']}", "agent.running", **status)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Ask the agent to stop and wait until it has gone."""
    folder = _folder()
    status = _status(folder)
    if status is None:
        notice("no agent runs", "agent.absent")
        return 0
    agent_client.ask(folder, "stop")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(int(status["pid"]), 0)
        except ProcessLookupError:
            notice(f"agent {status['pid']} stopped", "agent.stopped", pid=status["pid"])
            return 0
        time.sleep(0.05)
    os.kill(int(status["pid"]), signal.SIGTERM)
    notice(f"agent {status['pid']} did not stop in {WAIT:g} s: sent SIGTERM", "agent.killed")
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    """Show the agent's pid, socket, idle time-out and connected clients (exit 1: none)."""
    folder = _folder()
    if agent_client.disabled([]):
        print("the agent is off (FEDHUB_AGENT)")
    status = _status(folder)
    if status is None:
        print(f"no agent runs (socket {Path(folder, agent_client.SOCKET_NAME)})")
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            print(f"{key:<17} {value}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``agent`` to the ``fedhub`` subcommands."""
    from hub.cli import command_help

    agent = sub.add_parser(
        "agent",
        help=command_help("agent"),
        description="`fedhub call` and `fetch` run in a resident agent of yours when one "
        "runs (started by the first call, exits after an idle time): fedhub stays imported "
        "and connected, so a call starts at once. FEDHUB_AGENT=off or --no-agent runs "
        "everything in-process. docs/agent.md says what it holds and the trust it implies.",
        epilog=examples("fedhub agent status", "fedhub agent start --idle 3600"),
    )
    actions = agent.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser(
        "start",
        help="start the agent in the background (if none runs)",
        epilog=examples("fedhub agent start --idle 3600"),
    )
    start.add_argument(
        "--idle",
        type=float,
        metavar="SECONDS",
        help="exit after this long without a command (default $FEDHUB_AGENT_IDLE, else 600)",
    )
    start.set_defaults(func=cmd_start)
    stop = actions.add_parser("stop", help="stop the agent", epilog=examples("fedhub agent stop"))
    stop.set_defaults(func=cmd_stop)
    status = actions.add_parser(
        "status",
        help="show the running agent (exit 1 if none)",
        epilog=examples("fedhub agent status --json"),
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_status)
