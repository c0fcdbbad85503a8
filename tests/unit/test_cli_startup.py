"""The ``fedhub`` command starts at once: ``--help`` and ``--version`` import no heavy module.

Not a timed test (figures: ``scripts/bench_startup.py``); it checks what is imported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from hub.cli import COMMANDS, build_parser

HEAVY = ("numpy", "xarray", "nats", "pydantic", "scipy", "hub.client", "cryptography")


def imported_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        f"or m in {HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return list(json.loads(out.splitlines()[-1]))


def test_importing_hub_cli_imports_no_array_stack_nats_or_models() -> None:
    assert imported_after("import hub.cli") == []


def test_importing_hub_imports_no_client_until_a_client_name_is_used() -> None:
    assert imported_after("import hub; hub.FederationError") == []
    assert "hub.client" in imported_after("import hub; hub.Client")


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_import_no_command_module(argv: list[str]) -> None:
    code = (
        "import sys\nfrom hub.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print()\n"
    )
    assert imported_after(code) == []
    modules = {module for module, _ in COMMANDS.values()}
    probe = code + f"print(sorted(m for m in {sorted(modules)!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.splitlines()[-1] == "[]"


def test_every_command_of_the_table_is_defined_by_its_module() -> None:
    parser = build_parser()  # every module loaded
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)  # type: ignore[attr-defined]


def test_a_commands_help_loads_only_that_commands_module() -> None:
    code = (
        "import sys\nfrom hub.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('hub.cli_calls', 'hub.cli_lookup', 'hub.cli_audit', "
        "'hub.serve') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.splitlines()[-1] == "['hub.serve']"


def test_every_commands_help_has_an_example_and_the_top_help_the_exit_codes() -> None:
    parser = build_parser()
    top = parser.format_help()
    assert "examples:" in top and "exit codes:" in top and "130" in top
    pending = [(("fedhub",), parser)]
    seen = 0
    while pending:
        path, each = pending.pop()
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    pending.append(((*path, name), child))
                    text = child.format_help()
                    assert "example:" in text or "examples:" in text, " ".join((*path, name))
                    assert "  fedhub" in text, " ".join((*path, name))
                    seen += 1
    assert seen >= len(COMMANDS) + 8  # the commands and the actions of keys and federation


def test_log_options_may_follow_the_command() -> None:
    from hub.cli import _chosen_command

    argv = ["call", "hereon.climate.scale", "values=[1]", "--log-json", "--log-level", "info"]
    args = build_parser(_chosen_command(argv)).parse_args(argv)
    assert args.log_json is True and args.log_level == "info"
    argv = ["--log-level", "debug", "keys", "list"]
    args = build_parser(_chosen_command(argv)).parse_args(argv)
    assert args.log_level == "debug" and args.log_json is False


def test_the_client_does_not_load_config_generation_or_tls() -> None:
    """A call needs the connection and object helpers of hub.nats, not the generator of
    federation configs and its certificate authority (cryptography)."""
    loaded = imported_after("import hub.client")
    assert "hub.client" in loaded and "cryptography" not in loaded
    code = (
        "import hub.client, sys\nprint(sorted(m for m in sys.modules if m.startswith('hub.nats.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "hub.nats.federation" not in out and "hub.nats.tlsca" not in out
