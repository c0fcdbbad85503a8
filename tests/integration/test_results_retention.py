"""Retention of kept results: a sweep removes what outlived its keep-for time or what a
module keeps beyond its size (the object gone from the bucket, ``result.expired`` in the
log, the request ``expired``), and the owner removes a result early (``result.deleted``);
nobody else can.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest
from support.hostile import LogView
from support.results import COLLEAGUE, OWNER, THIRD, audit_clean
from support.world import World

from hub.canonical import b64d, parse_canonical
from hub.client import Client
from hub.clock import parse_time
from hub.errors import ArgumentError, NotFoundError, ValidationError
from hub.events import ResultExpired
from hub.lifecycle import RequestState
from hub.logfile import iter_log
from hub.nats import get_object
from hub.subjects import RESULTS_BUCKET
from node.config import NodeConfig, ResultsSection, load_config
from node.daemon import NodeDaemon
from node.retention import Retention, delete_kept

DAY = 86400.0


async def _calls(node: NodeDaemon, world: World, n: int) -> list[str]:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        ids = []
        for i in range(n):
            handle = await fed.submit("hereon.climate.scale", values=[float(i)], timeout=15)
            await handle.result()
            ids.append(handle.request_id)
        return ids


def _retention(node: NodeDaemon) -> Retention:
    retention = node.pipeline.results.retention  # type: ignore[union-attr]
    assert retention is not None
    return retention


async def _object_exists(node: NodeDaemon, name: str) -> bool:
    assert node.nc is not None
    try:
        await get_object(node.nc.jetstream(), RESULTS_BUCKET, name)
    except NotFoundError:
        return False
    return True


def _types(cfg: NodeConfig) -> list[str]:
    return [str(parse_canonical(e.body)["type"]) for e in iter_log(cfg.log_path)]


async def test_a_sweep_after_the_keep_for_time_removes_the_result_and_status_says_expired(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    (rid,) = await _calls(node, world, 1)
    retention = _retention(node)
    assert await retention.sweep() == []  # not due yet: 30 days by default
    assert await _object_exists(node, rid)
    assert await retention.sweep(at=time.time() + 31 * DAY) == [rid]
    assert not await _object_exists(node, rid)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        status = await fed.status("hereon", rid)
        assert status.state == RequestState.EXPIRED
        assert status.reason is not None and "keep-for" in status.reason
        with pytest.raises(NotFoundError, match="expired"):
            await fed.fetch("hereon", rid)
        listed = await fed.requests("hereon", status="kept")
        assert rid not in {r.request_id for r in listed}
    assert await retention.sweep(at=time.time() + 62 * DAY) == []  # removed once
    assert _types(cfg).count("result.expired") == 1
    audit_clean(cfg, world)


async def test_a_module_over_its_size_loses_its_oldest_results_first(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    oldest, middle, newest = await _calls(node, world, 3)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        size = (await fed.status("hereon", newest)).result_size
    assert size
    assert node.nc is not None
    nc = node.nc
    small = Retention(
        node.pipeline.writer,  # type: ignore[union-attr]
        node.pipeline._read,  # type: ignore[union-attr]
        lambda name: delete_kept(nc.jetstream(), name),
        ResultsSection(max_size=2 * size),
    )
    assert sorted(await small.sweep()) == sorted([oldest])
    assert await _object_exists(node, newest) and await _object_exists(node, middle)
    assert not await _object_exists(node, oldest)
    audit_clean(cfg, world)


async def test_the_owner_removes_a_result_early_and_nobody_else_can(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    mine, shared = await _calls(node, world, 2)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        await fed.share("hereon", shared, COLLEAGUE)
    for who in (THIRD, COLLEAGUE):
        async with await Client.connect(node.url, who, home=world.store.home) as other:
            for rid in (mine, shared):
                with pytest.raises(NotFoundError):
                    await other.delete_result("hereon", rid)
    assert await _object_exists(node, mine) and await _object_exists(node, shared)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        answer = await fed.delete_result("hereon", shared)
        assert answer.state == RequestState.DELETED
        assert (await fed.status("hereon", shared)).state == RequestState.DELETED
        with pytest.raises(NotFoundError):
            await fed.delete_result("hereon", shared)  # gone already
    assert not await _object_exists(node, shared)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        for change in (
            fed.unshare("hereon", shared, COLLEAGUE),
            fed.share("hereon", shared, THIRD),
            fed.keep_result("hereon", shared, DAY),
        ):
            with pytest.raises(NotFoundError):  # a removed result takes no more events
                await change
        with pytest.raises(ValidationError):
            await fed.tag("hereon", shared, ["late"])
    async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
        with pytest.raises(NotFoundError):
            await (await anna.result(shared, site="hereon")).result()
    assert _types(cfg).count("result.deleted") == 1
    assert await _retention(node).sweep(at=time.time() + 31 * DAY) == [mine]
    audit_clean(cfg, world)


async def test_the_owner_may_ask_for_less_keeping_never_more_and_nobody_else_may_ask(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    short, default = await _calls(node, world, 2)
    async with await Client.connect(node.url, THIRD, home=world.store.home) as mallory:
        with pytest.raises(NotFoundError):
            await mallory.keep_result("hereon", short, DAY)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        with pytest.raises(ValidationError, match="at most"):
            await fed.keep_result("hereon", short, 60 * DAY)
        answer = await fed.keep_result("hereon", short, DAY)
        records = {r.request_id: r for r in await fed.requests("hereon")}
    assert records[short].expires_time == answer.expires_time
    assert records[default].expires_time is not None
    assert records[short].expires_time < records[default].expires_time
    assert await _retention(node).sweep(at=time.time() + 2 * DAY) == [short]
    assert await _object_exists(node, default)
    assert _types(cfg).count("result.keep_shortened") == 1
    audit_clean(cfg, world)


async def test_a_fetch_racing_a_removal_is_refused_and_the_log_stays_legal(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    (rid,) = await _calls(node, world, 1)
    assert node.pipeline is not None and node.nc is not None
    results = node.pipeline.results
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        async with results.lock:  # a sweep holds it while removing
            fetching = asyncio.create_task(fed.fetch("hereon", rid))
            for _ in range(20):  # let the fetch get as far as it can meanwhile
                await asyncio.sleep(0)
            await delete_kept(node.nc.jetstream(), rid)
            await node.pipeline.writer.append(ResultExpired(request_id=rid, reason="raced"))
        with pytest.raises(NotFoundError):
            await fetching
    types = _types(cfg)
    assert types.count("result.expired") == 1 and "result.fetched" not in types
    audit_clean(cfg, world)


async def test_a_node_started_after_a_result_outlived_its_time_removes_it_while_running(
    world: World, tmp_path: Path
) -> None:
    cfg = world.node_config(
        "hereon", name="short", trust=["geomar"], users=[OWNER], grants=[(OWNER, "climate", "*")]
    )
    assert cfg.source is not None
    with cfg.source.open("a") as fh:
        fh.write("[results]\nkeep_for = 0.001\n")  # due as soon as it is kept
    cfg = load_config(cfg.source)
    async with NodeDaemon(cfg, grace=2) as node:
        (rid,) = await _calls(node, world, 1)
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(node.url, OWNER, home=world.store.home) as fed,
    ):
        for _ in range(200):  # the sweep at start runs beside the node's first steps
            if (await fed.status("hereon", rid)).state == RequestState.EXPIRED:
                break
            await asyncio.sleep(0.05)
        assert (await fed.status("hereon", rid)).state == RequestState.EXPIRED
    assert _types(cfg).count("result.expired") == 1
    audit_clean(cfg, world)  # which refuses a result event while the node is not running


async def test_a_keep_time_asked_when_calling_is_signed_shown_and_swept_and_more_is_capped(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        two_days = await fed.submit(
            "hereon.climate.scale", values=[1.0], keep=timedelta(days=2), timeout=15
        )
        await two_days.result()
        greedy = await fed.submit("hereon.climate.scale", values=[2.0], keep=90 * DAY, timeout=15)
        await greedy.result()
        statuses = {h.request_id: await h.status() for h in (two_days, greedy)}
        records = {r.request_id: r for r in await fed.requests("hereon")}
    short, capped = two_days.request_id, greedy.request_id
    for rid, days in ((short, 2), (capped, 30)):  # 30 days: the site's keep-for time
        status = statuses[rid]
        assert status.updated_time is not None and status.expires_time is not None
        kept = parse_time(status.expires_time) - parse_time(status.updated_time)
        assert kept == timedelta(days=days), rid
        assert records[rid].expires_time == status.expires_time
    # what was asked is in the caller's signed header, logged in request.accepted
    asked = {
        e["data"]["request_id"]: parse_canonical(b64d(e["data"]["header"])).get("keep_for")
        for e in LogView(cfg.log_path).events("request.accepted")
    }
    assert asked == {short: 2 * 86400, capped: 90 * 86400}
    retention = _retention(node)
    assert await retention.sweep(at=time.time() + 3 * DAY) == [short]
    assert await _object_exists(node, capped)
    assert await retention.sweep(at=time.time() + 31 * DAY) == [capped]
    audit_clean(cfg, world)


async def test_keep_zero_when_calling_keeps_no_copy_and_a_negative_keep_is_refused_unsent(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[3.0], keep=0, timeout=15)
        assert await handle.result() == [6.0]
        status = await handle.status()
        with pytest.raises(NotFoundError, match="no copy"):
            await fed.fetch("hereon", handle.request_id)
        with pytest.raises(ArgumentError, match="keep-for"):
            await fed.submit("hereon.climate.scale", values=[3.0], keep=-1)
    assert status.state == RequestState.COMPLETED
    assert status.result_object is None and status.expires_time is None
    assert not await _object_exists(node, handle.request_id)
    (done,) = LogView(cfg.log_path).events("request.completed")
    assert done["data"].get("object") is None
    assert LogView(cfg.log_path).count("request.accepted") == 1  # the refused one never left
    audit_clean(cfg, world)
