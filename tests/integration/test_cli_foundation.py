"""The two command lines end to end, as an operator and an auditor run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.logs import request_events

from hub.events import NodeStarted, NodeStopped
from node.bootstrap import open_log
from node.config import load_config


@dataclass
class Site:
    root: Path
    env: dict[str, str]

    def run(self, tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        module = {"fedhub": "hub.cli", "fedhub-node": "node.cli"}[tool]
        return subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env["FEDHUB_HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A site with its key, an initialized node, some requests, an export and a receipt."""
    root = tmp_path_factory.mktemp("site")
    site = Site(root, _env(root / "home"))
    assert site.run("fedhub", "keys", "new", "site:hereon").returncode == 0
    (root / "site.toml").write_text(
        '[node]\nsite = "hereon"\nname = "n1"\ndata_dir = "data"\nkey_home = "home"\n'
        "[log]\ncheckpoint_every = 8\n"
    )
    init = site.run("fedhub-node", "init", "--config", "site.toml")
    assert init.returncode == 0, init.stderr
    assert "node:hereon/n1" in init.stdout
    with open_log(load_config(root / "site.toml")) as log:
        log.append(NodeStarted(version="0.1.0", pid=1))
        for i in range(4):
            log.append_many(request_events(f"req{i:05d}"))
        log.append(NodeStopped())
    exported = site.run("fedhub-node", "log", "export", "--db", "data/events.db", "-o", "log.jsonl")
    assert exported.returncode == 0, exported.stderr
    head = site.run("fedhub-node", "log", "head", "--db", "data/events.db")
    assert head.returncode == 0, head.stderr
    (root / "receipt.json").write_text(head.stdout)
    return site


def test_keys_new_show_and_list(tmp_path: Path) -> None:
    s = Site(tmp_path, _env(tmp_path / "home"))
    new = s.run("fedhub", "keys", "new", "anna@hereon")
    assert new.returncode == 0, new.stderr
    shown = s.run("fedhub", "keys", "show", "anna@hereon", "--json")
    assert shown.returncode == 0
    public = json.loads(shown.stdout)
    assert public["identity"] == "anna@hereon"
    assert public["kid"] in new.stdout
    listed = s.run("fedhub", "keys", "list")
    assert listed.returncode == 0
    assert "anna@hereon" in listed.stdout and "private" in listed.stdout


def test_a_wrong_passphrase_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    s = Site(tmp_path, _env(tmp_path / "home"))
    (tmp_path / "right").write_text("correct horse\n")
    (tmp_path / "wrong").write_text("battery staple\n")
    made = s.run("fedhub", "keys", "new", "site:hereon", "--passphrase-file", "right")
    assert made.returncode == 0, made.stderr
    (tmp_path / "site.toml").write_text(
        '[node]\nsite = "hereon"\ndata_dir = "data"\nkey_home = "home"\npassphrase_file = "wrong"\n'
    )
    failed = s.run("fedhub-node", "init", "--config", "site.toml")
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("error:")
    assert "wrong passphrase" in lines[0]
    assert "Traceback" not in failed.stderr


def test_a_missing_key_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    s = Site(tmp_path, _env(tmp_path / "home"))
    failed = s.run("fedhub", "keys", "show", "nobody@hereon")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error:")
    assert len(failed.stderr.strip().splitlines()) == 1


def test_the_database_and_its_export_audit_clean(site: Site) -> None:
    for path in ("data/events.db", "log.jsonl"):
        audit = site.run("fedhub", "audit", path, "--checkpoint", "receipt.json")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert audit.stdout.startswith("audit OK")
        assert "(pinned)" in audit.stdout


def test_the_json_report_parses(site: Site) -> None:
    audit = site.run("fedhub", "audit", "log.jsonl", "--json")
    assert audit.returncode == 0
    report = json.loads(audit.stdout)
    assert report["ok"] is True
    assert report["requests"] == {"completed": 4}
    lines = (site.root / "log.jsonl").read_bytes().splitlines()
    signed = [line for line in lines if b'"sig":"",' not in line]
    assert report["signatures_checked"] == len(signed) < report["events"]


def test_a_chain_only_audit_checks_no_signatures_and_says_so_first(site: Site) -> None:
    audit = site.run("fedhub", "audit", "log.jsonl", "--chain-only", "--json")
    assert audit.returncode == 0
    assert json.loads(audit.stdout)["signatures_checked"] == 0
    text = site.run("fedhub", "audit", "log.jsonl", "--chain-only")
    assert text.returncode == 0
    assert "signatures NOT checked" in text.stdout.splitlines()[0]


def test_trust_taken_from_the_log_is_named_unsafe_on_the_first_line(site: Site) -> None:
    audit = site.run("fedhub", "audit", "log.jsonl", "--trust-log-keys")
    assert audit.returncode == 0
    assert "UNSAFE" in audit.stdout.splitlines()[0]


def test_without_a_receipt_the_summary_says_the_tail_is_not_proven(site: Site) -> None:
    audit = site.run("fedhub", "audit", "log.jsonl")
    assert audit.returncode == 0
    assert "a truncated tail can only be ruled out with a receipt" in audit.stdout


def test_a_tampered_export_fails_naming_the_event(site: Site) -> None:
    lines = (site.root / "log.jsonl").read_bytes().splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if b'"duration_us":7' in line)
    lines[n] = lines[n].replace(b'"duration_us":7', b'"duration_us":8')
    (site.root / "tampered.jsonl").write_bytes(b"".join(lines))
    audit = site.run("fedhub", "audit", "tampered.jsonl")
    assert audit.returncode == 1
    assert "audit FAILED" in audit.stdout
    assert f"first bad   entry {n + 1}: hash: body does not hash" in audit.stdout


def test_a_truncated_export_fails_against_a_receipt(site: Site) -> None:
    lines = (site.root / "log.jsonl").read_bytes().splitlines(keepends=True)
    (site.root / "short.jsonl").write_bytes(b"".join(lines[:2]))  # two signed commits
    assert site.run("fedhub", "audit", "short.jsonl").returncode == 0
    audit = site.run("fedhub", "audit", "short.jsonl", "--checkpoint", "receipt.json")
    assert audit.returncode == 1
    assert "truncated" in audit.stdout


@pytest.mark.parametrize("content", [b"not a log\n", b'{"hash": "00"}\n'], ids=["text", "json"])
def test_unreadable_input_exits_2(site: Site, content: bytes) -> None:
    (site.root / "junk").write_bytes(content)
    audit = site.run("fedhub", "audit", "junk")
    assert audit.returncode == 2
    assert audit.stderr.startswith("error:")
    assert "Traceback" not in audit.stderr


def test_a_missing_file_exits_2(site: Site) -> None:
    assert site.run("fedhub", "audit", "missing.jsonl").returncode == 2


def test_an_empty_log_fails_saying_it_proves_nothing(site: Site) -> None:
    (site.root / "empty.jsonl").write_bytes(b"")
    audit = site.run("fedhub", "audit", "empty.jsonl")
    assert audit.returncode == 1
    assert "an empty log proves nothing" in audit.stdout


def test_every_checkpoint_given_is_checked_in_any_order(site: Site) -> None:
    good = json.loads((site.root / "receipt.json").read_text())
    signed = good.get("signed", good)
    bad = dict(
        signed, sig=signed["sig"][:-4] + ("AAAA" if signed["sig"][-4:] != "AAAA" else "BBBA")
    )
    (site.root / "bad-receipt.json").write_text(json.dumps(bad))
    for first, second in (
        ("receipt.json", "bad-receipt.json"),
        ("bad-receipt.json", "receipt.json"),
    ):
        audit = site.run(
            "fedhub", "audit", "log.jsonl", "--checkpoint", first, "--checkpoint", second
        )
        assert audit.returncode == 1, audit.stdout
        assert "receipt: checkpoint signature does not verify" in audit.stdout
    both = site.run(
        "fedhub",
        "audit",
        "log.jsonl",
        "--checkpoint",
        "receipt.json",
        "--checkpoint",
        "receipt.json",
    )
    assert both.returncode == 0, both.stdout
    assert both.stdout.count("contained and extended") == 2


def test_a_pipe_that_never_ends_is_given_up_within_the_time_limit(site: Site) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "audit", "/dev/stdin", "--max-seconds", "2"],
        cwd=site.root,
        env=site.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write((site.root / "log.jsonl").read_bytes()[:1000])
        proc.stdin.flush()
        code = proc.wait(timeout=60)  # the pipe stays open: only the limit ends the audit
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert code == 2
    assert "did not end in time" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_fifo_nobody_writes_to_is_given_up_within_the_time_limit(site: Site) -> None:
    fifo = site.root / "events.fifo"
    os.mkfifo(fifo)
    audit = site.run("fedhub", "audit", fifo, "--max-seconds", "1")
    assert audit.returncode == 2
    assert "did not end in time" in audit.stderr


def test_a_sqlite_log_piped_in_is_refused_in_one_line(site: Site) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hub.cli", "audit", "/dev/stdin"],
        cwd=site.root,
        env=site.env,
        input=(site.root / "data" / "events.db").read_bytes(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert b"a SQLite log must be given as a file" in proc.stderr
