"""Kept results across the federation (hub, leaves hereon, geomar and awi, TLS and NKeys):
klaus at geomar lists his requests at two sites at once, shares a result kept at hereon
with anna at a third site, who fetches it through her own site's server with her own key
store; mallory at that site is refused, and after the share is revoked so is anna."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.hostile import LogView, audit_node, wait_reachable
from support.results import OWNER, connect, federation_node, people_world
from support.world import World

from hub.errors import NotFoundError
from hub.keys import KeyStore
from hub.query import F
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

COLLEAGUE = "anna@awi"
THIRD = "mallory@awi"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return people_world(tmp_path, (OWNER, COLLEAGUE, THIRD))


def _node(world: World, federation: Federation, unique: Any, site: str) -> NodeConfig:
    return federation_node(world, federation, unique, site, [OWNER, COLLEAGUE, THIRD])


def _own_store(world: World, identity: str, root: Path) -> Path:
    """A key store of ``identity``'s own: their private key and the pinned site keys."""
    store = KeyStore(root)
    store.save(world.store.load(identity))
    for site in ("hereon", "geomar", "awi"):
        store.import_public(world.store.public(f"site:{site}"))
    return store.home


async def test_requests_at_two_sites_are_listed_and_filtered_together_and_a_silent_site_named(
    world: World, federation: Federation, unique: Any
) -> None:
    hereon, geomar = (_node(world, federation, unique, s) for s in ("hereon", "geomar"))
    async with (
        NodeDaemon(hereon),
        NodeDaemon(geomar),
        await connect(federation, OWNER, world.store.home) as fed,
    ):
        await wait_reachable(fed, "hereon", "climate")
        await wait_reachable(fed, "geomar", "climate")
        at_hereon = await fed.submit("hereon.climate.scale", values=[1.0], timeout=30)
        at_geomar = await fed.submit("geomar.climate.scale", values=[2.0], timeout=30)
        failed = await fed.submit("geomar.climate.fail", message="no", timeout=30)
        await at_hereon.result()
        await at_geomar.result()
        with pytest.raises(Exception, match="no"):
            await failed.result()
        found = await fed.requests(["hereon", "geomar", "awi"])
        kept = await fed.requests(["hereon", "geomar"], status="kept")
        at_geomar_only = await fed.requests(query=(F.site == "geomar") & (F.kept == True))  # noqa: E712
    by_site = {(r.site, r.request_id) for r in found}
    assert by_site == {
        ("hereon", at_hereon.request_id),
        ("geomar", at_geomar.request_id),
        ("geomar", failed.request_id),
    }
    assert set(found.unreachable) == {"awi"}  # no node of awi runs here
    assert {r.request_id for r in kept} == {at_hereon.request_id, at_geomar.request_id}
    assert [r.request_id for r in at_geomar_only] == [at_geomar.request_id]


async def test_a_colleague_at_a_third_site_fetches_a_shared_result_with_her_own_key_store(
    world: World, federation: Federation, unique: Any, tmp_path: Path
) -> None:
    hereon = _node(world, federation, unique, "hereon")
    anna_home = _own_store(world, COLLEAGUE, tmp_path / "anna")
    mallory_home = _own_store(world, THIRD, tmp_path / "mallory")
    async with NodeDaemon(hereon):
        async with await connect(federation, OWNER, world.store.home) as fed:
            await wait_reachable(fed, "hereon", "climate")
            handle = await fed.submit("hereon.climate.scale", values=[1.0, 2.0], timeout=30)
            assert await handle.result() == [2.0, 4.0]
            rid = handle.request_id
            await fed.share("hereon", rid, COLLEAGUE)
        async with await connect(federation, COLLEAGUE, anna_home) as anna:
            await wait_reachable(anna, "hereon", "climate")
            (record,) = await anna.requests("hereon")
            assert (record.request_id, record.caller) == (rid, OWNER)
            assert await (await anna.result(rid, site="hereon")).result() == [2.0, 4.0]
        async with await connect(federation, THIRD, mallory_home) as mallory:
            await wait_reachable(mallory, "hereon", "climate")
            assert list(await mallory.requests("hereon")) == []
            with pytest.raises(NotFoundError):
                await mallory.result(rid, site="hereon")
        async with await connect(federation, OWNER, world.store.home) as fed:
            await fed.unshare("hereon", rid, COLLEAGUE)
        async with await connect(federation, COLLEAGUE, anna_home) as anna:
            with pytest.raises(NotFoundError):
                await (await anna.result(rid, site="hereon")).result()
    view = LogView(hereon.log_path)
    assert [(e["data"]["request_id"], e["data"]["by"]) for e in view.events("result.fetched")] == [
        (rid, COLLEAGUE)
    ]
    assert [e["data"]["principal"] for e in view.events("result.shared")] == [COLLEAGUE]
    assert [e["data"]["principal"] for e in view.events("result.unshared")] == [COLLEAGUE]
    report = audit_node(hereon, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]
