"""A version 1 log written by the previous release (committed, never regenerated) still
audits clean, from both of its forms."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub.audit import audit_events
from hub.keys import load_public_file
from hub.logfile import iter_log

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "v1"
EVENTS = 54


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    """The fixture folder copied (SQLite may write beside a database it opens)."""
    folder = tmp_path / "v1"
    shutil.copytree(V1, folder)
    return folder


def _pinned(folder: Path) -> dict[str, bytes]:
    site = load_public_file(folder / "site-hereon.pub")
    return {site.identity.removeprefix("site:"): site.sign_key}


@pytest.mark.parametrize("name", ["events.db", "events.jsonl"])
def test_the_v1_fixture_audits_clean_with_every_signature_checked(v1_copy: Path, name: str) -> None:
    report = audit_events(iter_log(v1_copy / name), trusted_sites=_pinned(v1_copy), threads=1)
    assert report.ok, report.first.line() if report.first else ""
    assert report.events == EVENTS
    assert report.signatures_checked == EVENTS
    assert report.checkpoints >= 2


def test_the_two_forms_of_the_v1_fixture_hold_the_same_events(v1_copy: Path) -> None:
    from_db = [(e.hash, e.sig, e.body) for e in iter_log(v1_copy / "events.db")]
    from_jsonl = [(e.hash, e.sig, e.body) for e in iter_log(v1_copy / "events.jsonl")]
    assert from_db == from_jsonl
    assert all(body[-6:] == b'"v":1}' for _, _, body in from_db)


def test_fedhub_audit_passes_the_v1_fixture(v1_copy: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "--home",
            str(tmp_path / "home"),
            "audit",
            str(v1_copy / "events.db"),
            "--site-key",
            str(v1_copy / "site-hereon.pub"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("audit OK")
