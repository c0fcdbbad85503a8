"""The world the kept-results tests share: the people, the nodes that serve them, clients,
and the audit every test ends with.

Fixtures (every test may use them; ``tests/conftest.py`` loads this module as a plugin,
and a test file's own fixture of the same name takes their place there): ``world``
(``OWNER``, ``COLLEAGUE`` and ``THIRD`` of geomar), ``cfg`` (a hereon node for them,
:func:`hereon_node`) and ``node`` (that node running).

- :func:`people_world`: a :class:`World` whose people (``OWNER``, ``COLLEAGUE``,
  ``THIRD`` by default) have keys and site-signed records;
- :func:`hereon_node`: a hereon node with its own embedded server, trusting geomar, every
  person registered, only ``OWNER`` granted ``climate``;
- :func:`federation_node`: a node of a site of a shared federation (unique name, its leaf's
  URL and credentials, trusting the other sites);
- :func:`connect`: a person's client at their own site's server of a federation;
- :func:`audit_clean`: a node's log audits clean against the pinned site keys;
- :func:`stored_result`: a kept result as its node stored it (once it has).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import FEDERATION_SITES, node_nats

from hub.audit import audit_events
from hub.client import Client
from hub.errors import NotFoundError
from hub.logfile import iter_log
from hub.nats import get_object
from hub.subjects import RESULTS_BUCKET
from node.config import NodeConfig
from node.daemon import NodeDaemon
from support.world import CLIMATE, World

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from hub.nats import LocalFederation

OWNER = "klaus@geomar"
COLLEAGUE = "anna@geomar"
THIRD = "mallory@geomar"
#: A person of geomar's group ``ocean`` (sharing with a group).
MEMBER = "ben@geomar"
PEOPLE = (OWNER, COLLEAGUE, THIRD)


def people_world(
    root: Path,
    people: Iterable[str] = PEOPLE,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> World:
    """A world under ``root / "world"`` with ``people`` (``groups``: person → groups)."""
    world = World(root / "world")
    for who in people:
        world.person(who, groups=(groups or {}).get(who, ()))
    return world


def hereon_node(
    world: World,
    users: Iterable[str] = PEOPLE,
    grants: Iterable[tuple[str, str, str]] = ((OWNER, "climate", "*"),),
) -> NodeConfig:
    """A hereon node with its own server, trusting geomar, ``users`` registered."""
    return world.node_config("hereon", trust=["geomar"], users=list(users), grants=list(grants))


def federation_node(
    world: World,
    federation: LocalFederation,
    unique: Any,
    site: str,
    users: Iterable[str],
    *,
    grants: Iterable[tuple[str, str, str]] = ((OWNER, "climate", "*"),),
    modules: Iterable[tuple[str, Path]] = (("climate", CLIMATE),),
    calls: dict[str, Any] | None = None,
) -> NodeConfig:
    """A node of ``site`` in ``federation``, trusting the other sites, ``users`` registered."""
    return world.node_config(
        site,
        name=unique("n").replace("_", "-"),
        **node_nats(federation, site),
        modules=modules,
        trust=[s for s in FEDERATION_SITES if s != site],
        users=list(users),
        grants=list(grants),
        calls=calls,
    )


async def connect(federation: LocalFederation, identity: str, home: Path, **options: Any) -> Client:
    """``identity``'s client at its own site's server, with its credentials (keys from
    the key store ``home``)."""
    site = identity.split("@")[1]
    return await Client.connect(
        federation.site_url(site),
        identity,
        home=home,
        **federation.caller_auth(identity),
        **options,
    )


def audit_clean(cfg: NodeConfig, world: World, sites: Iterable[str] = ("hereon", "geomar")) -> None:
    """The node's log audits clean, every signature checked against the pinned keys."""
    report = audit_events(
        iter_log(cfg.log_path),
        trusted_sites={s: world.site(s).sign_public for s in sites},
        threads=2,
    )
    assert report.ok, [f.line() for f in report.findings]


@pytest.fixture
def world(tmp_path: Path) -> World:
    """``OWNER``, ``COLLEAGUE`` and ``THIRD`` of geomar."""
    return people_world(tmp_path)


@pytest.fixture
def cfg(world: World) -> NodeConfig:
    """A hereon node for the people of ``world`` (only ``OWNER`` may call)."""
    return hereon_node(world)


@pytest.fixture
async def node(cfg: NodeConfig) -> AsyncIterator[NodeDaemon]:
    """The node of ``cfg``, running."""
    async with NodeDaemon(cfg, grace=2) as running:
        yield running


async def stored_result(js: JetStreamContext, rid: str) -> bytes:
    """The kept result of ``rid`` in its node's result bucket, once the node has stored it
    (a node stores a result after it replies: a caller may have it before the bucket)."""
    for _ in range(100):
        try:
            return await get_object(js, RESULTS_BUCKET, rid)
        except NotFoundError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"the result of {rid} was never stored")
