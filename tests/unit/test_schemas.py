"""The committed schemas/ folder must say what the models say (regenerate on purpose).

The export runs as the real CLI in a child process (module loading registers modules by
name, which must not clash with the test fixtures' modules of the same name).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub.schemas import protocol_schemas, render

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
HINT = "run: fedhub-node schemas export -o schemas --config configs/site-hereon.toml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("schemas")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "schemas",
            "export",
            "-o",
            str(out),
            "--config",
            str(ROOT / "configs" / "site-hereon.toml"),
        ],
        check=True,
        capture_output=True,
    )
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*.json")}


def test_committed_schemas_match_the_models(exported: dict[str, str]) -> None:
    committed = {str(p.relative_to(SCHEMAS)): p.read_text() for p in SCHEMAS.rglob("*.json")}
    missing = sorted(set(exported) - set(committed))
    stale = sorted(set(committed) - set(exported))
    drifted = sorted(n for n in set(exported) & set(committed) if exported[n] != committed[n])
    assert not (missing or stale or drifted), (
        f"schemas/ is out of date: missing {missing}, stale {stale}, drifted {drifted} ({HINT})"
    )


def test_export_covers_every_protocol_type_and_the_example_module(exported: dict[str, str]) -> None:
    for name in protocol_schemas():
        assert f"{name}.json" in exported
    assert "modules/hereon.climate/compute_sum.arguments.json" in exported


def test_signed_types_declare_no_floats() -> None:
    """Canonical encoding refuses floats, so no signed type may declare one."""
    text = "".join(render(s) for s in protocol_schemas().values())
    assert '"type": "number"' not in text
