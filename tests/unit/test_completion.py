"""``fedhub completion bash``: the generated script completes in a real bash."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from hub.cli import build_parser
from hub.completion import bash_script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")


def complete(*words: str) -> list[str]:
    """What bash offers after ``fedhub WORDS`` (the last word is the one being typed)."""
    line = " ".join(["fedhub", *words])
    script = (
        bash_script(build_parser())
        + f"COMP_WORDS=(fedhub {' '.join(repr(w) for w in words)})\n"
        + f"COMP_CWORD={len(words)}\nCOMP_LINE={line!r}\n_fedhub\n"
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line for line in out.splitlines() if line]


def test_commands_actions_and_options_complete() -> None:
    assert set(complete("")) >= {"keys", "call", "ls", "serve", "audit", "completion"}
    assert complete("se") == ["serve"]
    assert set(complete("keys", "")) == {"new", "show", "list", "vouch", "revoke", "import"}
    assert "--queue" in complete("call", "hereon.climate.scale", "--")
    assert complete("call", "--ou") == ["--out"]
    assert "--site-key" in complete("--home", "/tmp/k", "audit", "--si")


def test_the_script_is_printed_by_the_command() -> None:
    from hub.cli import main

    assert main(["completion", "bash"]) == 0
