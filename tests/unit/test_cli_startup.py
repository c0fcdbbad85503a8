"""The ``fedhub`` command starts at once: ``--help`` and ``--version`` import no heavy module.

Not a timed test (figures: ``scripts/bench_startup.py``); it checks what is imported.
"""

from __future__ import annotations

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
