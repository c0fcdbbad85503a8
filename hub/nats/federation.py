"""A whole federation on one machine: a hub and one leaf server per site, for tests and demos.

This is the federation that the demo, fedhub's own tests and a module author's tests start:
real ``nats-server`` processes on 127.0.0.1 with free ports, each site's leaf with its own
JetStream domain (the site name) and its own account on the hub, exactly as in production
(see docs/topology.md). Nothing is mocked, so what passes here passes on a real
federation. Example::

    from pathlib import Path
    from hub.nats import LocalFederation

    async def test_my_module(tmp_path: Path) -> None:
        async with LocalFederation(tmp_path, sites=("hereon", "geomar")) as fed:
            fed.hub_url               # nats://user:password@127.0.0.1:port
            fed.site_url("hereon")    # the leaf a node of site hereon connects to
            ...                       # run a NodeDaemon on one site, a Client on another

The servers are plain processes, not bound to an event loop: a federation started in one
``asyncio.run`` can be stopped in another (pytest session fixtures do this).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from hub.errors import ConfigError, TransportError
from hub.nats.config import HUB_DOMAIN, LeafUser
from hub.nats.connection import connect, wait_jetstream_ready, wait_message_route
from hub.nats.server import NatsServer
from hub.subjects import validate_site

__all__ = ["DEFAULT_SITES", "LocalFederation", "start_local_federation"]

#: The sites of a federation when none are named.
DEFAULT_SITES = ("hereon", "geomar")


class LocalFederation:
    """A hub and one leaf server per site on 127.0.0.1 (free ports), each in its own folder.

    ``root`` holds one folder per server (``hub``, then one per site) with its config, log
    and JetStream store. Each leaf logs in to the hub as its own leaf user
    (:attr:`leaf_users`) and lands in its site's account there.

    Use as ``async with LocalFederation(root) as fed:``, or call :meth:`start` and later
    :meth:`aclose` (alias :meth:`stop`; both are safe to call twice). :meth:`start` returns
    once every site reaches every other and the hub reaches every site's JetStream.
    """

    def __init__(self, root: Path | str, sites: Sequence[str] = DEFAULT_SITES) -> None:
        self.root = Path(root)
        self.sites: tuple[str, ...] = tuple(validate_site(site) for site in sites)
        if len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"a local federation needs distinct sites, got {list(sites)}")
        #: Each site's credentials on the hub (random passwords, new per federation).
        self.leaf_users: dict[str, LeafUser] = {
            site: LeafUser(site=site, user=f"leaf-{site}", password=uuid.uuid4().hex)
            for site in self.sites
        }
        #: The hub server (JetStream domain ``hub``, a leafnode listener).
        self.hub = NatsServer(
            self.root / "hub",
            server_name="hub",
            jetstream_domain=HUB_DOMAIN,
            leafnode_port=-1,
            leaf_users=list(self.leaf_users.values()),
        )
        #: Each site's leaf server, by site name (filled by :meth:`start`).
        self.leaves: dict[str, NatsServer] = {}

    @property
    def hub_url(self) -> str:
        """Client URL of the hub (with the hub's own client credentials)."""
        return self.hub.client_url

    def site_url(self, site: str) -> str:
        """Client URL of ``site``'s leaf server: what that site's node and users connect to."""
        leaf = self.leaves.get(site)
        if leaf is None:
            raise TransportError(f"site {site!r} has no running leaf server in this federation")
        return leaf.client_url

    async def start(self) -> None:
        """Start the hub, then the leaves; return once messages and JetStream flow.

        On failure every server started so far is stopped again. Starting a federation
        that runs does nothing; one that was stopped starts again on the same folders.
        """
        try:
            await self.hub.start()
            hub_leaf_url = self.hub.leafnode_url
            assert hub_leaf_url is not None
            for site in self.sites:
                leaf = self.leaves.get(site)
                if leaf is None:
                    leaf = NatsServer(
                        self.root / site,
                        server_name=site,
                        jetstream_domain=site,
                        leafnode_remotes=[self.leaf_users[site].remote_url(hub_leaf_url)],
                    )
                    self.leaves[site] = leaf
                await leaf.start()
            await self.wait_connected()
        except BaseException:
            await self.aclose()
            raise

    async def wait_connected(self, limit: float = 10) -> None:
        """Wait until every site reaches every other and the hub reaches every site domain.

        Between sites, a core message must travel both ways a site account lets it: as a
        request to the other site (module info subjects cross like calls; a call subject
        would be stored by the site's FH_CALLS) and to an inbox of its callers. Use it
        after restarting a server. Raises :class:`~hub.errors.TransportError` after
        ``limit`` seconds per probe.
        """
        clients = {site: await connect(self.site_url(site)) for site in self.sites}
        hub_client = await connect(self.hub_url)
        try:
            for a, b in itertools.permutations(self.sites, 2):
                probe = uuid.uuid4().hex
                for subject in (f"fh.info.{b}.probe.{probe}", f"fh.inbox.{b}.probe.{probe}"):
                    await wait_message_route(clients[a], clients[b], subject=subject, timeout=limit)
            for site in self.sites:
                await wait_jetstream_ready(hub_client, site, timeout=limit)
        finally:
            for client in [*clients.values(), hub_client]:
                await client.close()

    async def aclose(self) -> None:
        """Stop the leaves, then the hub. Safe to call twice; the folders stay."""
        for leaf in self.leaves.values():
            await leaf.stop()
        await self.hub.stop()

    async def stop(self) -> None:
        """Alias of :meth:`aclose`."""
        await self.aclose()

    async def __aenter__(self) -> LocalFederation:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"LocalFederation(root={str(self.root)!r}, sites={self.sites!r})"


async def start_local_federation(
    root: Path | str, sites: Sequence[str] = DEFAULT_SITES
) -> LocalFederation:
    """Start a :class:`LocalFederation` and return it (stop it with ``await fed.aclose()``)."""
    fed = LocalFederation(root, sites)
    await fed.start()
    return fed
