"""Tags and search on a real node: the owner's private and shared tags, queries with AND,
OR and NOT (objects, saved JSON, text) evaluated by the node, what a colleague sees of a
shared result's tags, and nobody else tagging or finding anything."""

from __future__ import annotations

import json

import pytest
from support.results import COLLEAGUE, OWNER, THIRD
from support.world import World

from hub.audit import audit_events
from hub.client import Client
from hub.errors import NotFoundError, ValidationError
from hub.logfile import iter_log
from hub.query import F, Tag
from hub.results_client import catalog
from node.config import NodeConfig
from node.daemon import NodeDaemon


@pytest.fixture
async def three(node: NodeDaemon, world: World) -> tuple[str, str, str]:
    """Three results of klaus: ``a`` (tags calibrated, final), ``b`` (calibrated, and
    shared tag public), ``c`` (draft); ``b`` is shared with anna."""
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        ids = []
        for values in ([1.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [3.0]):
            handle = await fed.submit("hereon.climate.scale", values=values, timeout=15)
            await handle.result()
            ids.append(handle.request_id)
        a, b, c = ids
        await fed.tag("hereon", a, ["calibrated", "final"])
        await fed.tag("hereon", b, ["calibrated"])
        await fed.tag("hereon", b, ["public"], shared=True)
        await fed.tag("hereon", c, ["draft", "final"])
        answer = await fed.tag("hereon", c, remove=["final"])
        assert answer.tags == ("draft",)
        await fed.share("hereon", b, COLLEAGUE)
    return a, b, c


async def _ids(fed: Client, **filters: object) -> set[str]:
    return {r.request_id for r in await fed.requests("hereon", **filters)}


async def test_the_owner_finds_results_by_tags_with_and_or_and_not(
    node: NodeDaemon, world: World, three: tuple[str, str, str]
) -> None:
    a, b, c = three
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        assert await _ids(fed, tag="calibrated") == {a, b}
        assert await _ids(fed, query=Tag("calibrated") & ~Tag("final")) == {b}
        assert await _ids(fed, query=Tag("final") | Tag("draft")) == {a, c}
        assert await _ids(fed, query=Tag("public")) == {b}  # the owner sees shared tags too
        sizes = {r.request_id: r.result_size or 0 for r in await fed.requests("hereon")}
        assert sizes[b] > max(sizes[a], sizes[c])  # eight values against one
        big = (F.size > max(sizes[a], sizes[c])) & (F.module == "climate")
        assert await _ids(fed, query=big) == {b}
        saved = json.loads((Tag("calibrated") | big).dumps())
        assert await _ids(fed, query=saved) == {a, b}
        assert await _ids(fed, query="calibrated AND NOT final OR draft") == {b, c}
        record = next(r for r in await fed.requests("hereon") if r.request_id == b)
        assert (record.tags, record.shared_tags) == (("calibrated",), ("public",))


async def test_a_colleague_sees_and_searches_only_the_shared_tags(
    node: NodeDaemon, world: World, three: tuple[str, str, str]
) -> None:
    _, b, _ = three
    async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
        (record,) = await anna.requests("hereon")
        assert (record.request_id, record.tags, record.shared_tags) == (b, (), ("public",))
        assert await _ids(anna, tag="public") == {b}
        assert await _ids(anna, tag="calibrated") == set()  # the owner's private tag
        with pytest.raises(NotFoundError):
            await anna.tag("hereon", b, ["mine"])


async def test_a_third_person_finds_nothing_and_tags_nothing(
    node: NodeDaemon, world: World, cfg: NodeConfig, three: tuple[str, str, str]
) -> None:
    a, b, _ = three
    async with await Client.connect(node.url, THIRD, home=world.store.home) as mallory:
        assert await _ids(mallory, query=Tag("calibrated") | ~Tag("calibrated")) == set()
        for rid in (a, b):
            with pytest.raises(NotFoundError):
                await mallory.tag("hereon", rid, ["stolen"])
    report = audit_events(
        iter_log(cfg.log_path),
        trusted_sites={s: world.site(s).sign_public for s in ("hereon", "geomar")},
        threads=2,
    )
    assert report.ok, [f.line() for f in report.findings]


async def test_a_failed_call_cannot_be_tagged_and_a_bad_query_is_refused_by_the_node(
    node: NodeDaemon, world: World
) -> None:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.fail", message="no", timeout=15)
        with pytest.raises(Exception, match="no"):
            await handle.result()
        with pytest.raises(ValidationError, match="only results"):
            await fed.tag("hereon", handle.request_id, ["x"])
        with pytest.raises(ValidationError):
            await fed.requests("hereon", query={"nand": []})  # refused before sending
        deep: dict[str, object] = {"tag": "a"}
        for _ in range(40):  # deeper than a query may be, within what the wire carries
            deep = {"not": deep}
        with pytest.raises(ValidationError):  # the node refuses it too
            await catalog(fed, "list", "hereon", args={"query": deep})


async def test_a_limit_returns_the_newest_matches_and_says_more_matched(
    node: NodeDaemon, world: World, three: tuple[str, str, str]
) -> None:
    a, b, c = three
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        everything = await fed.requests("hereon")
        two = await fed.requests("hereon", limit=2)
        one = await fed.requests("hereon", tag="calibrated", limit=1)
        all_calibrated = await fed.requests("hereon", tag="calibrated", limit=2)
    assert [r.request_id for r in everything] == [c, b, a]  # newest first
    assert [r.request_id for r in two] == [c, b] and two.truncated == {"hereon"}
    assert [r.request_id for r in one] == [b] and one.truncated == {"hereon"}
    assert {r.request_id for r in all_calibrated} == {a, b} and not all_calibrated.truncated
