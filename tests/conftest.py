"""Shared fixtures: real nats-server processes (one server, and a hub with two site leaves).

Server fixtures are synchronous: the process is started with ``subprocess`` (not bound to
any event loop) and only the readiness checks run in a short ``asyncio.run``. So any test,
whatever its event loop scope, can use them.

- ``nats_server`` (session): one JetStream server, no domain. Its streams are shared by
  every test of the session: ``FH_CALLS``/``FH_EVENTS`` exist once per server, so tests that
  call ``ensure_site_streams`` on it must use the site of the ``shared_site`` fixture;
  otherwise use ``fresh_nats_server`` or unique stream names (``unique``).
- ``federation`` (session): hub (domain ``hub``) + leaves ``hereon`` and ``geomar`` (each
  its own JetStream domain), leaf connections up and JetStream reachable in every domain.
- ``fresh_nats_server`` (function): a server of your own, to kill and restart.
- ``federation_factory`` (function): ``await federation_factory()`` starts a federation of
  the test's own (stopped afterwards), to kill and restart leaves.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hub.topology import (
    HUB_DOMAIN,
    LeafUser,
    NatsServer,
    connect,
    wait_jetstream_ready,
    wait_message_route,
)

#: The site name to use with ``ensure_site_streams`` on the shared ``nats_server``.
SHARED_SITE = "testsite"
#: Sites of the shared ``federation``.
FEDERATION_SITES = ("hereon", "geomar")


@dataclass
class Federation:
    """A hub and one leaf server per site, all on 127.0.0.1 with random ports."""

    root: Path
    sites: tuple[str, ...]
    hub: NatsServer = field(init=False)
    leaves: dict[str, NatsServer] = field(init=False, default_factory=dict)
    leaf_users: dict[str, LeafUser] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.leaf_users = {
            site: LeafUser(site=site, user=f"leaf-{site}", password=uuid.uuid4().hex)
            for site in self.sites
        }
        self.hub = NatsServer(
            self.root / "hub",
            server_name="hub",
            jetstream_domain=HUB_DOMAIN,
            leafnode_port=-1,
            leaf_users=list(self.leaf_users.values()),
        )

    @property
    def hub_url(self) -> str:
        """Client URL of the hub."""
        return self.hub.client_url

    def site_url(self, site: str) -> str:
        """Client URL of ``site``'s leaf server."""
        return self.leaves[site].client_url

    async def start(self) -> None:
        """Start the hub, then the leaves; return once messages and JetStream flow."""
        await self.hub.start()
        hub_leaf_url = self.hub.leafnode_url
        assert hub_leaf_url is not None
        for site in self.sites:
            leaf = NatsServer(
                self.root / site,
                server_name=site,
                jetstream_domain=site,
                leafnode_remotes=[self.leaf_users[site].remote_url(hub_leaf_url)],
            )
            self.leaves[site] = leaf
            await leaf.start()
        await self.wait_connected()

    async def wait_connected(self, limit: float = 10) -> None:
        """Wait until every leaf reaches every other and the hub sees every site domain."""
        clients = {site: await connect(self.site_url(site)) for site in self.sites}
        hub_client = await connect(self.hub_url)
        try:
            for a, b in itertools.permutations(self.sites, 2):
                await wait_message_route(clients[a], clients[b], timeout=limit)
            for site in self.sites:
                await wait_jetstream_ready(hub_client, site, timeout=limit)
            for client in clients.values():
                await wait_jetstream_ready(client, HUB_DOMAIN, timeout=limit)
        finally:
            for client in [*clients.values(), hub_client]:
                await client.close()

    async def stop(self) -> None:
        """Stop the leaves, then the hub (safe to call twice)."""
        for leaf in self.leaves.values():
            await leaf.stop()
        await self.hub.stop()


async def start_federation(root: Path, sites: Sequence[str] = FEDERATION_SITES) -> Federation:
    """Start a federation of your own (stop it with ``await fed.stop()``)."""
    fed = Federation(root, tuple(sites))
    try:
        await fed.start()
    except BaseException:
        await fed.stop()
        raise
    return fed


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server for the session; ``.url`` is its client URL."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Hub + leaves ``hereon`` and ``geomar``: ``.hub_url``, ``.site_url(site)``, ``.sites``."""
    fed = asyncio.run(start_federation(tmp_path_factory.mktemp("federation")))
    try:
        yield fed
    finally:
        asyncio.run(fed.stop())


@pytest.fixture
def fresh_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server for one test, free to be killed and restarted."""
    server = NatsServer(tmp_path / "nats")
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.fixture
def shared_site() -> str:
    """The site name to use with ``ensure_site_streams`` on the shared ``nats_server``."""
    return SHARED_SITE


@pytest.fixture
def federation_factory(
    tmp_path: Path,
) -> Iterator[Callable[..., Coroutine[Any, Any, Federation]]]:
    """Return ``await federation_factory(sites=...)``: a federation of this test's own.

    Use it to kill and restart servers; it is stopped after the test.
    """
    started: list[Federation] = []

    async def make(sites: Sequence[str] = FEDERATION_SITES) -> Federation:
        fed = await start_federation(tmp_path / f"federation{len(started)}", sites)
        started.append(fed)
        return fed

    yield make
    for fed in started:
        asyncio.run(fed.stop())


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Return ``unique(prefix)``: a fresh name such as ``prefix_3f2a9c1b`` (token-safe)."""

    def make(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:8]}"

    return make
