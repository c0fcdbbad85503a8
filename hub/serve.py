"""``fedhub serve mymodule.py``: try a module in one command (dev mode).

Makes a throwaway federation of one in a fresh temporary folder: a site ``dev`` with its own
new site key, a node ``node:dev/n1`` and one person ``you@dev`` allowed to call everything;
starts ``fedhub-node run`` on it (an embedded nats-server on a free port of 127.0.0.1, no
leaf connection) and prints the two lines that call the module from another shell. Ctrl-C
stops the node and deletes the folder, keys included.

Nothing of this is ever trusted by a real site: the dev site key is new on every run, lives
only in the temporary folder and is pinned nowhere, so a real node refuses a record vouched
by it (its ``users`` only take records of its own or pinned sites) and every call signed by
``you@dev``. The key store of ``$FEDHUB_HOME`` is not touched.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.cliutil import examples
from hub.errors import ArgumentError, ConfigError, FederationError
from hub.subjects import validate_module

__all__ = ["DEV_SITE", "DEV_USER", "DevNode", "add_commands", "start_dev_node"]

#: The site name of dev mode (its key is new on every run).
DEV_SITE = "dev"
#: The one person of dev mode, allowed to call every function of the served module.
DEV_USER = f"you@{DEV_SITE}"
#: How long the node may take to start serving (seconds).
START_TIMEOUT = 60.0


@dataclass
class DevNode:
    """A running dev node: its folder, key store home, node process and module."""

    root: Path
    home: Path
    module: str
    functions: dict[str, list[str]]
    process: subprocess.Popen[bytes]

    def call_lines(self) -> list[str]:
        """The two shell lines that call the module from another shell."""
        function, params = next(iter(self.functions.items()), ("FUNCTION", ["key"]))
        shown = [p for p in params if p != "progress"]
        arguments = " ".join(f"{p}=..." for p in shown)
        return [
            f"export FEDHUB_HOME={self.home}",
            f"fedhub call {DEV_SITE}.{self.module}.{function} {arguments}".rstrip(),
        ]

    def stop(self, timeout: float = 15.0) -> int:
        """Stop the node (SIGTERM, then SIGKILL) and delete the folder; the node's exit code.

        A node killed before it stopped its embedded server leaves that server running (a
        real node's next start adopts it, with its queued calls); a dev node has no next
        start, so its server is stopped here too."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=5)
            return int(self.process.returncode)
        finally:
            from hub.nats.server import running_server_pid, terminate_server

            pid_file = self.root / "data" / "nats.pid"
            left = running_server_pid(pid_file)
            if left is not None:
                terminate_server(left, pid_file)
            shutil.rmtree(self.root, ignore_errors=True)


def public_functions(path: Path) -> dict[str, list[str]]:
    """Top-level public functions of a module file and their parameter names, read without
    importing it (the node imports it)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise ArgumentError(f"cannot read module {path}: {exc}") from exc
    return {
        node.name: [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.name.startswith("_")
    }


def _write_config(root: Path, module: str, path: Path, executor: str) -> Path:
    config = root / "dev-node.toml"
    lines = [
        'users = ["you.json"]',
        "[node]",
        f'site = "{DEV_SITE}"',
        'name = "n1"',
        'data_dir = "data"',
        'key_home = "keys"',
        "[nats]",
        'url = ""',
        "[log]",
        'level = "warning"',
        "[[modules]]",
        f"name = {json.dumps(module)}",
        f"path = {json.dumps(str(path))}",
        f"executor = {json.dumps(executor)}",
        "[[grants]]",
        f'principal = "{DEV_USER}"',
        f"module = {json.dumps(module)}",
        'functions = ["*"]',
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def _make_keys(root: Path) -> Path:
    """Throwaway keys in ``root/keys``: site, node, the dev person and its record."""
    from hub.cli_keys import vouch_record
    from hub.keys import KeyStore

    store = KeyStore(root / "keys")
    site = store.create(f"site:{DEV_SITE}")
    store.create(f"node:{DEV_SITE}/n1")
    person = store.create(DEV_USER)
    record = vouch_record(site, store.public(person.identity))
    (root / "you.json").write_text(json.dumps(record.model_dump(), indent=2) + "\n")
    return store.home


def start_dev_node(path: Path, *, name: str | None = None, executor: str = "thread") -> DevNode:
    """Set up the throwaway federation for the module file ``path`` and start its node."""
    path = path.expanduser()
    if not path.is_file():
        raise ArgumentError(f"no module file '{path}'", hint="give the path of a .py file")
    module = name or path.stem
    try:
        validate_module(module)
    except ConfigError as exc:
        raise ArgumentError(
            f"{module!r} cannot be a module name: {exc.message}",
            hint="pass --name NAME (lower case letters, digits, _)",
        ) from exc
    functions = public_functions(path)
    root = Path(tempfile.mkdtemp(prefix="fedhub-serve-"))
    try:
        home = _make_keys(root)
        config = _write_config(root, module, path.resolve(), executor)
        env = {k: v for k, v in os.environ.items() if k != "FEDHUB_PASSPHRASE"}
        env["FEDHUB_HOME"] = str(home)
        init = subprocess.run(
            [sys.executable, "-m", "node.cli", "init", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if init.returncode != 0:
            raise ConfigError(f"the dev node cannot start: {init.stderr.strip()}")
        process = subprocess.Popen(  # its output to stderr: stdout holds the two lines
            [sys.executable, "-m", "node.cli", "run", "--config", str(config)],
            env=env,
            stdout=sys.stderr,
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    node = DevNode(root, home, module, functions, process)
    try:
        _wait_until_serving(node, root / "data" / "status.json")
    except BaseException:
        node.stop()
        raise
    return node


def _wait_until_serving(node: DevNode, status: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not status.exists():
        if node.process.poll() is not None:
            raise FederationError(
                f"the dev node stopped (exit {node.process.returncode}) before serving",
                hint="its error is printed above",
            )
        if time.monotonic() > deadline:
            raise FederationError(f"the dev node did not start within {START_TIMEOUT:g} s")
        time.sleep(0.05)


def cmd_serve(args: argparse.Namespace) -> int:
    """``fedhub serve MODULE.py``: serve until Ctrl-C (or SIGTERM), then clean up."""
    node = start_dev_node(args.module, name=args.name, executor=args.executor)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        names = ", ".join(node.functions) or "none found"
        print(
            f"serving {DEV_SITE}.{node.module} ({names}) in dev mode: throwaway keys, "
            "trusted by no real site. Ctrl-C stops.",
            file=sys.stderr,
        )
        print(
            f"call it from another shell (`fedhub ls {DEV_SITE}.{node.module}` shows the "
            "signatures):",
            file=sys.stderr,
        )
        for line in node.call_lines():
            print(f"  {line}", flush=True)
        while not stop and node.process.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        code = node.stop()
    if not stop and code not in (0, -signal.SIGTERM, 130):
        raise FederationError(f"the dev node exited with {code}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``serve`` to the ``fedhub`` subcommands."""
    from hub.cli import command_help

    serve = sub.add_parser(
        "serve",
        help=command_help("serve"),
        description="Serve the functions of FILE.py as site 'dev' on a node of its own with an "
        "embedded nats-server, throwaway keys and one caller (you@dev) allowed everything; "
        "print the two lines that call it. Nothing of dev mode is trusted by a real site. "
        "Ctrl-C stops the node and deletes its keys and log.",
        epilog=examples(
            "fedhub serve mymodule.py",
            "# then, in another shell, the two lines it printed:",
            "export FEDHUB_HOME=/tmp/fedhub-serve-.../keys",
            "fedhub call dev.mymodule.myfunction x=1",
        ),
    )
    serve.add_argument("module", type=Path, metavar="FILE.py", help="the module to serve")
    serve.add_argument("--name", help="the module's name in addresses (default: the file's)")
    serve.add_argument(
        "--executor",
        choices=("thread", "process", "inline"),
        default="thread",
        help="how calls run (as [[modules]] executor; default thread)",
    )
    serve.set_defaults(func=cmd_serve)
