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
import json
import socket
import ssl
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from hub.errors import ConfigError, TransportError
from hub.keys import KeyStore
from hub.nats.config import HUB_DOMAIN
from hub.nats.connection import connect, wait_jetstream_ready, wait_message_route
from hub.nats.dirstreams import site_directory_configs
from hub.nats.generate import Generated, credentials_path, generate, nats_inbox_prefix
from hub.nats.hubsetup import setup_hub
from hub.nats.server import NatsServer
from hub.nats.streams import ensure_stream
from hub.nats.topology import ROLES, Role, Topology
from hub.subjects import DIRECTORY_STREAM, hub_events_stream, validate_name, validate_site

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_CALLERS", "DEFAULT_SITES", "LocalFederation", "start_local_federation"]

#: The sites of a federation when none are named.
DEFAULT_SITES = ("hereon", "geomar")
#: People who may log in as callers at every site of a local federation.
DEFAULT_CALLERS = ("klaus", "anna", "admin", "mallory", "eve", "rita", "nobody", "probe")
#: Node names that may log in at every site of a local federation.
DEFAULT_NODES = ("n1", "n2", "n3", "bench")


#: Times :func:`start_local_federation` writes the federation again when a port was taken.
_PORT_TRIES = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalFederation:
    """Hub server(s) and one leaf server per site on 127.0.0.1, run from generated configs.

    The configs are what ``fedhub federation init`` writes (:mod:`hub.nats.generate`)
    from a ``federation.toml`` this class writes into ``root`` with free ports: NKeys for
    every leaf and every client, TLS from a CA of its own. Clients connect with
    :meth:`client_options` (``nats.connect(fed.site_url(site), **fed.client_options(site,
    "caller", "klaus"))``); the hub's own client with :meth:`hub_options`.

    ``hub_servers=3`` makes the hub a JetStream cluster (the event copies then have three
    replicas); ``regions`` (hub cluster name to its sites) makes several hub clusters
    joined by gateways, one server each. ``secure=False`` leaves the site servers' client
    ports open (no TLS, no credentials) and gives the hub's client port a plain-text test
    user (in :attr:`hub_url`): for tests that need such clients; the leaf connections are
    secured either way.

    Use as ``async with LocalFederation(root) as fed:``, or call :meth:`start` and later
    :meth:`aclose` (alias :meth:`stop`; both are safe to call twice). :meth:`start` returns
    once every site reaches every other and the hub reaches every site's JetStream.
    """

    def __init__(
        self,
        root: Path | str,
        sites: Sequence[str] = DEFAULT_SITES,
        *,
        secure: bool = True,
        hub_servers: int = 1,
        regions: Mapping[str, Sequence[str]] | None = None,
        callers: Sequence[str] = DEFAULT_CALLERS,
        nodes: Sequence[str] = DEFAULT_NODES,
    ) -> None:
        self.root = Path(root).resolve()
        self.sites: tuple[str, ...] = tuple(validate_site(site) for site in sites)
        if len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"a local federation needs distinct sites, got {list(sites)}")
        self.secure = secure
        self.callers = tuple(validate_name(c, "user name") for c in callers)
        self.nodes = tuple(validate_name(n, "node name") for n in nodes)
        regions = dict(regions or {"hub": list(self.sites)})
        self.config_path = self.root / "federation.toml"
        self.out = self.root / "generated"
        if not self.config_path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(self._toml(regions, hub_servers))
        self.topology = Topology.model_validate(_read_toml(self.config_path))
        #: What the generator wrote (configs, credentials, the CA).
        self.generated: Generated = generate(
            self.topology, self.out, base=self.root, client_auth=secure
        )
        admin = self.generated.hub_admin
        assert admin is not None
        self._hub_opts: dict[str, Any] = (
            {"nkeys_seed": str(admin), "tls": self.tls_context()} if secure else {}
        )
        #: Every hub server by name (the first is :attr:`hub`).
        self.hubs: dict[str, NatsServer] = {
            name: NatsServer(
                path.parent,
                config_file=path,
                leafnode_port=0,
                # open mode: the hub's plain-text test user, in the client URL
                client_user=self.generated.hub_local,
                connect_options=self._hub_opts,
                jetstream=False,
            )
            for name, path in self.generated.hub_configs.items()
        }
        #: The first hub server.
        self.hub = next(iter(self.hubs.values()))
        #: Each site's leaf server, by site name.
        self.leaves: dict[str, NatsServer] = {
            site: NatsServer(
                path.parent,
                config_file=path,
                connect_options=self._client_opts(site, "node", self.nodes[0]),
            )
            for site, path in self.generated.leaf_configs.items()
        }

    def _toml(self, regions: Mapping[str, Sequence[str]], hub_servers: int) -> str:
        keys = KeyStore(self.root / "site-keys")
        lines = ["[federation]", 'name = "local"']
        for region in regions:
            lines += ["[[hubs]]", f"name = {json.dumps(region)}"]
            count = hub_servers if len(regions) == 1 else 1
            for i in range(count):
                name = f"{region}-{i + 1}" if count > 1 else region
                lines += [
                    "[[hubs.servers]]",
                    f"name = {json.dumps(name)}",
                    f"client_port = {_free_port()}",
                    f"leafnode_port = {_free_port()}",
                    f"cluster_port = {_free_port()}",
                    f"gateway_port = {_free_port()}",
                    # relative: below the server's own folder, where it runs
                    'store_dir = "jetstream"',
                ]
        site_hub = {site: region for region, sites in regions.items() for site in sites}
        for site in self.sites:
            ident = f"site:{site}"
            if not keys.exists(ident):
                keys.create(ident)
            pub = self.root / "site-keys" / f"{site}.pub"
            pub.write_text(json.dumps(keys.public(ident).to_json()))
            lines += [
                "[[sites]]",
                f"name = {json.dumps(site)}",
                f"site_key = {json.dumps(pub.relative_to(self.root).as_posix())}",
                f"hub = {json.dumps(site_hub.get(site, next(iter(regions))))}",
                f"client_port = {_free_port()}",
                'store_dir = "jetstream"',
                f"nodes = {json.dumps(list(self.nodes))}",
                f"callers = {json.dumps(list(self.callers))}",
            ]
        return "\n".join(lines) + "\n"

    # -- connecting -------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        """A TLS context that trusts this federation's CA (and nothing else)."""
        assert self.generated.ca is not None
        return ssl.create_default_context(cafile=str(self.generated.ca))

    def credentials(self, site: str, role: Role, name: str | None = None) -> Path:
        """The NKey seed file of ``name`` (default: the role's first user) in ``role``."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles are {list(ROLES)}")
        users = self.topology.site(site).users(role)
        name = name or (users[0] if users else "")
        if name not in users:
            raise ConfigError(f"{role} {name!r} has no credentials at {site}", hint=f"{users}")
        return credentials_path(self.out, site, role, name)

    def _client_opts(self, site: str, role: Role, name: str) -> dict[str, Any]:
        if not self.secure:
            return {}
        return {
            "nkeys_seed": str(self.credentials(site, role, name)),
            "tls": self.tls_context(),
            "inbox_prefix": nats_inbox_prefix(role, name),
        }

    def client_options(
        self, site: str, role: Role = "caller", name: str | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect(fed.site_url(site), ...)``: the NKey of
        ``name`` in ``role`` at ``site``, a TLS context trusting the CA, its inbox prefix.

        Empty with ``secure=False``.
        """
        users = self.topology.site(site).users(role)
        return self._client_opts(site, role, name or (users[0] if users else ""))

    def caller_auth(self, identity: str) -> dict[str, Any]:
        """``creds`` and ``tls`` for ``Client.connect`` of ``identity`` (``name@site``)."""
        name, _, site = identity.partition("@")
        if not self.secure:
            return {}
        return {"creds": self.credentials(site, "caller", name), "tls": self.tls_context()}

    def hub_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect(fed.hub_url, ...)``: the hub's admin
        (empty with ``secure=False``: :attr:`hub_url` then carries a test user)."""
        return dict(self._hub_opts)

    @property
    def hub_url(self) -> str:
        """Client URL of the first running hub server (connect with :meth:`hub_options`)."""
        running = [server for server in self.hubs.values() if server.running]
        return (running[0] if running else self.hub).client_url

    def site_url(self, site: str) -> str:
        """Client URL of ``site``'s leaf server: what that site's node and users connect to."""
        leaf = self.leaves.get(site)
        if leaf is None:
            raise TransportError(f"site {site!r} has no running leaf server in this federation")
        return leaf.client_url

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the hub server(s), then the leaves; return once messages and JetStream flow
        and the hub keeps the federation-wide directory (:meth:`setup_hub`).

        On failure every server started so far is stopped again. Starting a federation
        that runs does nothing; one that was stopped starts again on the same folders.
        """
        try:
            for server in self.hubs.values():
                await server.start()
            for leaf in self.leaves.values():
                await leaf.start()
            await self.wait_connected()
            await self._setup_directory()
        except BaseException:
            await self.aclose()
            raise

    async def setup_hub(self, streams: Collection[str] | None = None) -> None:
        """Create the hub's streams from the generated ``hub/streams/*.json``, as
        ``fedhub federation setup-hub`` does (``streams``: only those names).

        :meth:`start` sets up the federation-wide directory (``FH_DIRECTORY``) this way;
        the event copies are :meth:`copy_events`.
        """
        nc = await connect(self.hub_url, **self.hub_options())
        try:
            folder = self.out / "hub" / "streams"
            await setup_hub(nc.jetstream(domain=HUB_DOMAIN), folder, names=streams)
        finally:
            await nc.close()

    async def _setup_directory(self) -> None:
        """The federation-wide directory, in the order its sources flow at once: each
        site's ``FH_DIR`` (a node would create it too), the hub's ``FH_DIRECTORY`` from the
        generated file, each site's copy of it."""
        nodes = {
            s: await connect(self.site_url(s), **self.client_options(s, "node")) for s in self.sites
        }
        try:
            configs = {s: site_directory_configs(s) for s in self.sites}
            for site, nc in nodes.items():
                await ensure_stream(nc.jetstream(), configs[site][0])
            await self.setup_hub([DIRECTORY_STREAM])
            for site, nc in nodes.items():
                await ensure_stream(nc.jetstream(), configs[site][1])
        finally:
            for nc in nodes.values():
                await nc.close()

    async def copy_events(self) -> None:
        """Set up the hub's copy of every site's event stream (``FH_EVENTS_<SITE>``)."""
        await self.setup_hub([hub_events_stream(site) for site in self.sites])

    async def wait_connected(self, limit: float = 10) -> None:
        """Wait until every site reaches every other and the hub reaches every site domain.

        Between sites, a core message must travel both ways a site account lets it: as a
        request to the other site (module info subjects cross like calls; a call subject
        would be stored by the site's FH_CALLS) and to an inbox of its callers. Use it
        after restarting a server. Raises :class:`~hub.errors.TransportError` after
        ``limit`` seconds per probe.
        """
        probe_user = self.callers[0]
        callers = {
            s: await connect(self.site_url(s), **self.client_options(s, "caller", probe_user))
            for s in self.sites
        }
        nodes = {
            s: await connect(self.site_url(s), **self.client_options(s, "node")) for s in self.sites
        }
        hub_client = await connect(self.hub_url, **self.hub_options())
        try:
            for a, b in itertools.permutations(self.sites, 2):
                probe = uuid.uuid4().hex
                await wait_message_route(
                    callers[a], nodes[b], subject=f"fh.info.{b}.probe.{probe}", timeout=limit
                )
                await wait_message_route(
                    nodes[a],
                    callers[b],
                    subject=f"fh.inbox.{b}.{probe_user}.{probe}",
                    timeout=limit,
                )
            for domain in ("hub", *self.sites):
                await wait_jetstream_ready(hub_client, domain, timeout=limit)
        finally:
            for client in [*callers.values(), *nodes.values(), hub_client]:
                await client.close()

    async def aclose(self) -> None:
        """Stop the leaves, then the hub. Safe to call twice; the folders stay."""
        for leaf in self.leaves.values():
            await leaf.stop()
        for server in self.hubs.values():
            await server.stop()

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


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text())


async def start_local_federation(
    root: Path | str, sites: Sequence[str] = DEFAULT_SITES, **options: Any
) -> LocalFederation:
    """Start a :class:`LocalFederation` and return it (stop it with ``await fed.aclose()``).

    A new federation's ports are chosen free, then bound by the servers a moment later;
    when another process took one in between, it is written again with new ports, up to
    ``_PORT_TRIES`` times. (One that ran before in ``root`` keeps its ports.)
    """
    written = Path(root) / "federation.toml"
    fresh = not written.exists()
    for attempt in range(1, _PORT_TRIES + 1):
        fed = LocalFederation(root, sites, **options)
        try:
            await fed.start()
        except TransportError as exc:
            if not fresh or "address already in use" not in str(exc) or attempt == _PORT_TRIES:
                raise
            log.debug("local_federation.port_taken", attempt=attempt)
            written.unlink()
            continue
        return fed
    raise AssertionError("unreachable")  # pragma: no cover
