"""A node killed with SIGKILL while calls run and wait, then restarted on the same config.

The site's NATS server outlives the node (``fresh_nats_server``), as in production. Calls
the caller had confirmed by JetStream (a publish ack) must not be lost; each must reach
exactly one final outcome in the node's log, per the ``[calls] interrupted`` policy:

- ``fail`` (default): a call that was running when the node died fails with code
  ``interrupted`` and is not run again (at most once);
- ``retry``: it runs again (``request.started`` attempt 2) and completes (at least once).

The first run of a call is its ``request.accepted`` (log v2 has no ``request.started`` for it).

Calls still waiting in the stream when the node died simply run after the restart.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.hostile import LogView, audit_node, wait_until
from support.world import World

from hub.canonical import b64e
from hub.client import CallHandle, Client
from hub.errors import CallCancelledError
from hub.nats import NatsServer
from node.config import NodeConfig

CALLER = "klaus@geomar"
RUNNING = 6  # = max_in_flight: the node takes this many calls at once (4 threads run)
WAITING = 4  # left in the stream behind them


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys: klaus at geomar, vouched by his site."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


def crash_config(world: World, server: NatsServer, policy: str) -> NodeConfig:
    """A hereon node on ``server``; short ack_wait so the server redelivers quickly."""
    return world.node_config(
        "hereon",
        nats_url=server.url,
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
        calls={"ack_wait": 2, "max_in_flight": RUNNING, "interrupted": policy},
    )


async def submit_and_kill(
    world: World, cfg: NodeConfig, fed: Client, seconds: float
) -> tuple[list[CallHandle], list[CallHandle]]:
    """Start a node, submit slow and quick calls, SIGKILL the node once the slow ones run,
    and start it again. Returns (slow handles, quick handles)."""
    node = world.spawn_node(cfg)
    view = LogView(cfg.log_path)
    try:
        slow = [
            await fed.submit("hereon.climate.sleep", seconds=seconds, timeout=60)
            for _ in range(RUNNING)
        ]
        quick = [
            await fed.submit("hereon.climate.scale", values=[float(i)], factor=10.0, timeout=60)
            for i in range(WAITING)
        ]
        await wait_until(lambda: view.counts()["request.accepted"] >= RUNNING, limit=20)
    except BaseException:
        node.kill()
        raise
    node.kill()
    counts = view.counts()
    assert counts["request.accepted"] == RUNNING, "the quick calls waited in the stream"
    assert counts["request.started"] == 0, "no call was run again yet"
    assert counts["request.completed"] + counts["request.failed"] == 0, "killed mid-run"
    restarted = world.spawn_node(cfg)
    try:
        await wait_until(lambda: len(view.finals()) >= RUNNING + WAITING, limit=30)
    finally:
        assert restarted.stop() == 0, restarted.output()
    return slow, quick


def check_log(cfg: NodeConfig, world: World, handles: list[CallHandle]) -> LogView:
    """No accepted call lost, one outcome each, and the log audits clean (CLI and API)."""
    view = LogView(cfg.log_path)
    received = Counter(e["data"]["request_id"] for e in view.events("request.accepted"))
    acked = {h.request_id for h in handles}
    assert set(received) == acked, "every call JetStream confirmed reached the node's log"
    assert all(n == 1 for n in received.values()), received
    finals = view.finals()
    assert set(finals) == acked
    twice = {rid: f for rid, f in finals.items() if len(f) != 1}
    assert not twice, f"calls with more than one outcome: {twice}"

    site_key = world.site("hereon").sign_public
    report = audit_node(cfg, site_key)
    assert report.ok, [f.line() for f in report.findings]
    assert report.unclean_restarts == 1, "the killed node left no node.stopped"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "audit",
            str(cfg.log_path),
            "--site-key",
            f"hereon={b64e(site_key)}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "audit OK" in cli.stdout
    return view


async def test_calls_running_when_the_node_is_killed_fail_as_interrupted_and_none_is_lost(
    world: World, fresh_nats_server: NatsServer
) -> None:
    cfg = crash_config(world, fresh_nats_server, "fail")
    async with await Client.connect(fresh_nats_server.url, CALLER, home=world.store.home) as fed:
        slow, quick = await submit_and_kill(world, cfg, fed, seconds=2.0)
        # The caller stayed connected: the restarted node answers every pending call.
        for handle in slow:
            with pytest.raises(CallCancelledError) as err:
                await handle.result(timeout=10)
            assert err.value.code == "interrupted", err.value
            assert "restart" in err.value.message
        assert [await h.result(timeout=10) for h in quick] == [[10.0 * i] for i in range(WAITING)]

    view = check_log(cfg, world, slow + quick)
    finals = view.finals()
    for h in slow:
        assert [(f["type"], f.get("code")) for f in finals[h.request_id]] == [
            ("request.failed", "interrupted")
        ]
        kinds = [e["type"] for e in view.for_request(h.request_id)]
        assert kinds == ["request.accepted", "request.failed"], (
            "at most once: an interrupted call is not run again"
        )
    for h in quick:
        assert [f["type"] for f in finals[h.request_id]] == ["request.completed"]


async def test_with_the_retry_policy_an_interrupted_call_runs_again_and_completes_once(
    world: World, fresh_nats_server: NatsServer
) -> None:
    cfg = crash_config(world, fresh_nats_server, "retry")
    async with await Client.connect(fresh_nats_server.url, CALLER, home=world.store.home) as fed:
        # 6 retried calls on 4 threads: the last two finish after 2 x 1.5 s, past ack_wait
        # (2 s), so the node must keep telling the server it is still working on them.
        slow, quick = await submit_and_kill(world, cfg, fed, seconds=1.5)
        results = await asyncio.gather(*(h.result(timeout=20) for h in slow + quick))
    assert results == [1.5] * RUNNING + [[10.0 * i] for i in range(WAITING)]

    view = check_log(cfg, world, slow + quick)
    finals = view.finals()
    for h in slow:
        assert [f["type"] for f in finals[h.request_id]] == ["request.completed"]
        attempts = [
            e.get("attempt")
            for e in view.for_request(h.request_id)
            if e["type"] == "request.started"
        ]
        assert attempts == [2], attempts
