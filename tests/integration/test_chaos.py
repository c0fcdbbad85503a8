"""Chaos, measured: calls keep their promises while servers and the node fail.

Each test starts a federation of its own from the generated configs (a hub of three
servers, TLS and NKeys), a ``hereon`` node process and a caller at ``geomar`` sending
calls at a steady rate (:class:`support.chaos.ChaosBench`), injects one fault, and checks
that every call the stream confirmed ended exactly once (no call lost, none run twice),
that the node's log audits clean, and that calls completed after the fault ended. The
recovery times are measured, not asserted (``scripts/chaos.py`` prints them with the full
outages: a 30 s hub outage instead of 8 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.chaos import ChaosBench, Tally

pytestmark = pytest.mark.slow


def check(tally: Tally) -> None:
    """The promises every scenario keeps."""
    print(tally)  # the measured figures, for `pytest -s`
    assert tally.accepted > 0
    assert tally.lost == 0, tally
    assert tally.duplicated == 0, tally
    assert tally.audit_ok, tally.audit_findings
    assert tally.recovery_s is not None, f"no call completed after the fault: {tally}"
    assert tally.node_tracebacks == 0, "the node printed a traceback"


async def test_when_one_of_three_hub_servers_dies_calls_continue_and_none_is_lost(
    tmp_path: Path,
) -> None:
    async with ChaosBench(tmp_path) as bench:
        tally = await bench.run(
            "kill one hub server", ChaosBench.kill_hub_server(), before=2, after=4
        )
    check(tally)
    assert tally.refused == tally.failed == 0, tally.failures


async def test_calls_sent_while_the_whole_hub_is_down_complete_once_when_it_returns(
    tmp_path: Path,
) -> None:
    async with ChaosBench(tmp_path) as bench:
        tally = await bench.run("hub down 8 s", ChaosBench.stop_hub(8), before=2, after=4)
    check(tally)
    assert tally.refused == tally.failed == 0, tally.failures


async def test_calls_survive_a_restart_of_the_node_sites_leaf_and_the_node_warns_once(
    tmp_path: Path,
) -> None:
    async with ChaosBench(tmp_path) as bench:
        tally = await bench.run(
            "restart hereon's leaf", ChaosBench.restart_leaf("hereon", 3), before=2, after=4
        )
    check(tally)
    assert tally.refused == tally.failed == 0, tally.failures
    assert tally.node_outage_lines == 1, "one warning line for the one outage"


async def test_a_node_killed_mid_call_is_restarted_and_ends_every_call_it_held_once(
    tmp_path: Path,
) -> None:
    async with ChaosBench(tmp_path) as bench:
        tally = await bench.run("kill -9 the node", ChaosBench.kill_node(), before=2, after=4)
    check(tally)
    assert tally.refused == 0
    # the calls running when it died end as `interrupted` (policy fail: at most once)
    assert set(tally.failures) <= {"interrupted"}, tally.failures
    assert bench.held_at_kill, "the node was killed while it held calls"
    assert tally.failed <= len(bench.held_at_kill)
