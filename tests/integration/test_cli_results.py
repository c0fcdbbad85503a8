"""``fedhub requests`` and ``fedhub result ls|get|share|unshare`` as real processes.

One node (``fedhub-node run`` with its embedded nats-server) for the whole file; klaus
calls, anna is the colleague he shares with, mallory a third person of the same site.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.results import COLLEAGUE as ANNA
from support.results import OWNER as KLAUS
from support.results import THIRD as MALLORY
from support.results import hereon_node, people_world
from support.world import NodeProcess, World

from hub.cli_results import parse_when
from hub.clock import parse_time


@dataclass
class Site:
    world: World
    node: NodeProcess
    url: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    world = people_world(tmp_path_factory.mktemp("cli-results"))
    node = world.spawn_node(hereon_node(world))
    cfg = node.cfg
    try:
        url = (cfg.node.data_dir / "nats.url").read_text().strip()
        yield Site(world, node, url)
    finally:
        node.stop()


@dataclass
class Run:
    code: int
    out: str
    err: str


def fedhub(site: Site, *args: str, who: str = KLAUS) -> Run:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env.update(FEDHUB_HOME=str(site.world.store.home), FEDHUB_URL=site.url, FEDHUB_IDENTITY=who)
    proc = subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def call(site: Site, *args: str) -> str:
    run = fedhub(site, "call", *args)
    found = re.search(r"^request (\S+)$", run.err, re.MULTILINE)
    assert found, run.err
    return found.group(1)


def one_error(run: Run, phrase: str) -> None:
    assert run.code == 1, (run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], run.err


def listed(site: Site, *args: str, who: str = KLAUS) -> list[dict[str, object]]:
    run = fedhub(site, "requests", "--site", "hereon", "--json", *args, who=who)
    assert run.code == 0, run.err
    records: list[dict[str, object]] = json.loads(run.out)
    return records


def test_requests_lists_my_calls_with_state_size_and_whether_a_copy_is_kept(site: Site) -> None:
    ok = call(site, "hereon.climate.scale", "values=[1, 2]")
    bad = call(site, "hereon.climate.fail", "message=no")
    records = {r["request_id"]: r for r in listed(site)}
    assert records[ok]["state"] == "completed" and records[ok]["kept"] is True
    assert isinstance(records[ok]["result_size"], int) and records[ok]["result_size"] > 0
    assert records[ok]["address"] == "hereon.climate.scale"
    assert records[bad]["state"] == "failed" and records[bad]["kept"] is False
    assert records[bad]["code"] == "function_failed"


def test_requests_filters_by_function_status_and_time(site: Site) -> None:
    ok = call(site, "hereon.climate.scale", "values=[3]")
    bad = call(site, "hereon.climate.fail", "message=no")
    by_function = {r["request_id"] for r in listed(site, "--function", "scale")}
    assert ok in by_function and bad not in by_function
    failed = {r["request_id"] for r in listed(site, "--status", "failed")}
    assert bad in failed and ok not in failed
    kept = {r["request_id"] for r in listed(site, "--status", "kept", "--module", "climate")}
    assert ok in kept and bad not in kept
    assert {ok, bad} <= {r["request_id"] for r in listed(site, "--since", "1h")}
    assert listed(site, "--until", "2000-01-01") == []


def test_requests_without_a_site_asks_every_pinned_site_and_warns_about_silent_ones(
    site: Site,
) -> None:
    ok = call(site, "hereon.climate.scale", "values=[4]")
    run = fedhub(site, "requests")
    assert run.code == 0, run.err
    assert ok in run.out and "hereon.climate.scale" in run.out
    assert "warning: site geomar did not answer" in run.err  # no node serves geomar here


def test_a_share_lets_the_colleague_get_the_result_and_nobody_else_until_it_is_taken_back(
    site: Site,
) -> None:
    rid = call(site, "hereon.climate.scale", "values=[1, 2]", "factor=3")
    shared = fedhub(site, "result", "share", rid, "--site", "hereon", "--with", ANNA)
    assert shared.code == 0, shared.err
    assert shared.out.startswith(f"shared with {ANNA} (1 key")
    got = fedhub(site, "result", "get", rid, "--site", "hereon", "--json", who=ANNA)
    assert got.code == 0, got.err
    assert json.loads(got.out) == [3.0, 6.0]
    mine = listed(site, "--shared", who=ANNA)
    assert [(r["request_id"], r["caller"]) for r in mine] == [(rid, KLAUS)]
    one_error(fedhub(site, "result", "get", rid, "--site", "hereon", who=MALLORY), "NotFound")
    one_error(
        fedhub(site, "result", "share", rid, "--site", "hereon", "--with", MALLORY, who=MALLORY),
        "NotFound",
    )
    assert listed(site, who=MALLORY) == []
    back = fedhub(site, "result", "unshare", rid, "--site", "hereon", "--with", ANNA)
    assert back.code == 0, back.err
    one_error(fedhub(site, "result", "get", rid, "--site", "hereon", who=ANNA), "NotFound")


def test_result_get_and_fetch_give_the_owner_the_same_value(site: Site) -> None:
    rid = call(site, "hereon.climate.scale", "values=[5]")
    got = fedhub(site, "result", "get", rid, "--site", "hereon", "--json")
    fetched = fedhub(site, "fetch", rid, "--site", "hereon", "--json")
    assert got.code == fetched.code == 0, (got.err, fetched.err)
    assert json.loads(got.out) == json.loads(fetched.out) == [10.0]


def test_result_ls_is_the_requests_listing(site: Site) -> None:
    rid = call(site, "hereon.climate.scale", "values=[6]")
    run = fedhub(site, "result", "ls", "--site", "hereon", "--json")
    assert run.code == 0, run.err
    assert rid in {r["request_id"] for r in json.loads(run.out)}


def test_result_rm_removes_my_kept_result_and_status_then_says_deleted(site: Site) -> None:
    rid = call(site, "hereon.climate.scale", "values=[7]")
    one_error(fedhub(site, "result", "rm", rid, "--site", "hereon", who=MALLORY), "NotFound")
    removed = fedhub(site, "result", "rm", rid, "--site", "hereon")
    assert removed.code == 0, removed.err
    assert removed.out.startswith(f"removed the kept result of {rid}")
    status = fedhub(site, "status", rid, "--site", "hereon", "--json")
    assert json.loads(status.out)["state"] == "deleted"
    shown = fedhub(site, "status", rid, "--site", "hereon").out
    assert "state     deleted" in shown and "deleted, no longer kept" in shown
    one_error(fedhub(site, "result", "get", rid, "--site", "hereon"), "deleted")


def test_tags_set_on_the_command_line_are_found_by_tag_by_query_and_by_a_saved_query(
    site: Site, tmp_path: Path
) -> None:
    tagged = call(site, "hereon.climate.scale", "values=[8]")
    other = call(site, "hereon.climate.scale", "values=[9]")
    run = fedhub(site, "result", "tag", tagged, "--site", "hereon", "cli-final", "cli-x")
    assert run.code == 0, run.err
    assert run.out.strip() == f"private tags of {tagged}: cli-final, cli-x"
    removed = fedhub(site, "result", "tag", tagged, "--site", "hereon", "--remove", "cli-x")
    assert removed.out.strip() == f"private tags of {tagged}: cli-final"
    assert {r["request_id"] for r in listed(site, "--tag", "cli-final")} == {tagged}
    query = "cli-final OR (function:scale AND NOT cli-final)"
    saved = tmp_path / "search.json"
    found = {r["request_id"] for r in listed(site, "--query", query, "--save-query", str(saved))}
    assert {tagged, other} <= found
    again = {r["request_id"] for r in listed(site, "--query-file", str(saved))}
    assert again == found
    assert listed(site, "--query", "NOT function:scale AND cli-final") == []
    one_error(fedhub(site, "requests", "--site", "hereon", "--query", "size>big"), "size")
    one_error(
        fedhub(site, "result", "tag", tagged, "--site", "hereon", "stolen", who=MALLORY),
        "NotFound",
    )


def test_provenance_prints_the_lineage_in_every_form_and_its_proofs_pass_the_audit_tool(
    site: Site, tmp_path: Path
) -> None:
    rid = call(site, "hereon.climate.scale", "values=[11]")
    text = fedhub(site, "provenance", rid, "--site", "hereon", "--proofs", str(tmp_path))
    assert text.code == 0, text.err
    assert f"request   {rid}" in text.out and "hereon.climate.scale" in text.out
    assert "the node.started proven the last before the call" in text.err, text.err
    lineage = json.loads(fedhub(site, "provenance", rid, "--site", "hereon", "--json").out)
    assert lineage["code_proven"] is True
    assert [s["type"] for s in lineage["steps"]] == [
        "node.started",
        "request.accepted",
        "request.completed",
    ]
    assert fedhub(site, "provenance", rid, "--site", "hereon", "--mermaid").out.startswith(
        "flowchart LR"
    )
    assert "digraph" in fedhub(site, "provenance", rid, "--site", "hereon", "--dot").out
    proofs = sorted(tmp_path.glob(f"{rid}-*.json"))
    assert len(proofs) == 3  # node.started, request.accepted, request.completed
    for proof in proofs:
        checked = fedhub(site, "audit", "--proof", str(proof), "--site-key", "site:hereon")
        assert checked.code == 0, checked.err
    one_error(fedhub(site, "provenance", rid, "--site", "hereon", who=MALLORY), "NotFound")


def test_a_kept_result_is_an_argument_by_reference_and_provenance_proves_both_calls(
    site: Site, tmp_path: Path
) -> None:
    first = call(site, "hereon.climate.scale", "values=[1, 2]")
    run = fedhub(site, "call", "hereon.climate.scale", f"values=ref:hereon/{first}", "factor=3")
    assert run.code == 0, run.err
    assert json.loads(run.out) == [6.0, 12.0]
    second = re.search(r"^request (\S+)$", run.err, re.MULTILINE)
    assert second is not None
    text = fedhub(
        site, "provenance", second.group(1), "--site", "hereon", "--proofs", str(tmp_path)
    )
    assert text.code == 0, text.err
    assert f"ref       values = hereon/{first}" in text.out
    proofs = sorted(tmp_path.glob(f"{first}-*.json"))
    assert proofs  # the earlier call's steps are proven by the log too
    for proof in proofs:
        checked = fedhub(site, "audit", "--proof", str(proof), "--site-key", "site:hereon")
        assert checked.code == 0, checked.err
    bad = fedhub(site, "call", "hereon.climate.scale", "values=ref:hereon")
    assert bad.code == 2 and bad.err.splitlines() == [
        "error: ArgumentError: 'ref:hereon' is not a reference (write ref:SITE/REQUEST_ID)"
    ]
    taken = fedhub(site, "call", "hereon.climate.scale", f"values=ref:hereon/{first}", who=MALLORY)
    one_error(taken, "NotFound")


def test_result_get_writes_the_formats_that_fit_and_refuses_the_others(
    site: Site, tmp_path: Path
) -> None:
    rid = call(site, "hereon.climate.scale", "values=[1, 2]")
    got = fedhub(site, "result", "get", rid, "--site", "hereon", "--format", "csv")
    assert got.code == 0, got.err
    assert got.out.splitlines() == ["2.0", "4.0"]
    as_json = fedhub(site, "result", "get", rid, "--site", "hereon", "--format", "json")
    assert json.loads(as_json.out) == [2.0, 4.0]
    out = tmp_path / "x.nc"
    refused = fedhub(
        site, "result", "get", rid, "--site", "hereon", "--format", "nc", "--out", str(out)
    )
    one_error(refused, "cannot be written as nc")
    assert "json, csv" in refused.err and not out.exists()


def test_a_bad_time_filter_is_one_error_line(site: Site) -> None:
    one_error(fedhub(site, "requests", "--site", "hereon", "--since", "yesterday"), "no time")


def test_times_on_the_command_line_read_relative_and_absolute_forms() -> None:
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_when("2h", now=at) == "2026-11-30T10:00:00.000000Z"
    assert parse_when("1d", now=at) == "2026-11-29T12:00:00.000000Z"
    assert parse_when("2026-11-30") == "2026-11-30T00:00:00.000000Z"
    assert parse_when("2026-11-30T10:00+01:00") == "2026-11-30T09:00:00.000000Z"


def test_call_keep_asks_for_a_shorter_keep_and_status_and_requests_show_when_it_goes(
    site: Site,
) -> None:
    short = call(site, "hereon.climate.scale", "values=[1]", "--keep", "2d")
    none = call(site, "hereon.climate.scale", "values=[1]", "--keep", "0")
    status = json.loads(fedhub(site, "status", "--site", "hereon", "--json", "--", short).out)
    kept = parse_time(status["expires_time"]) - parse_time(status["updated_time"])
    assert kept == timedelta(days=2)
    records = {r["request_id"]: r for r in listed(site)}
    assert records[short]["expires_time"] == status["expires_time"]
    assert records[none]["kept"] is False and records[none].get("expires_time") is None
    shown = fedhub(site, "status", "--site", "hereon", "--", none)
    assert "delivered, no stored copy" in shown.out, shown.out
    one_error(fedhub(site, "call", "hereon.climate.scale", "values=[1]", "--keep", "2x"), "2x")
