"""``federation.toml``: one description of a federation, read and checked.

A federation is one or more hub clusters (``[[hubs]]``, each one server or three; several
clusters join with NATS gateways into a supercluster) and its sites (``[[sites]]``), each
with its pinned site key, the hub cluster its leaf server connects to, and the people and
nodes that log in to that leaf server by role. :func:`load_topology` reads the file;
:mod:`hub.nats.generate` writes what every party runs. See docs/deploy.md for an example.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hub.errors import ConfigError
from hub.keys import PublicKeys, load_public_file
from hub.subjects import validate_name, validate_site

__all__ = ["ROLES", "HubCluster", "HubServer", "Role", "Site", "Topology", "load_topology"]

Role = Literal["node", "caller", "operator", "auditor"]
#: The roles a site's leaf server knows, each with its own permissions.
ROLES: tuple[Role, ...] = ("node", "caller", "operator", "auditor")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubServer(_Model):
    """One hub ``nats-server``: its name, the address others dial, and its ports."""

    name: str
    host: str = "127.0.0.1"
    #: Address the server binds to (default: ``host``).
    listen: str | None = None
    client_port: int = 4222
    leafnode_port: int = 7422
    cluster_port: int = 6222
    gateway_port: int = 7222
    #: JetStream store on that machine.
    store_dir: str = "/var/lib/nats/jetstream"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "hub server name")


class HubCluster(_Model):
    """A hub cluster (``[[hubs]]``): one server, or three with JetStream R3."""

    name: str
    servers: list[HubServer] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "hub cluster name")

    @model_validator(mode="after")
    def _size(self) -> HubCluster:
        if len(self.servers) not in (1, 3, 5):
            raise ValueError(
                f"hub {self.name!r} has {len(self.servers)} servers; use 1, 3 or 5 "
                "(a JetStream cluster needs a majority)"
            )
        return self

    @property
    def replicas(self) -> int:
        """Replicas of the hub's streams in this cluster (3 once it has three servers)."""
        return min(3, len(self.servers))


class Site(_Model):
    """A site (``[[sites]]``): its leaf server and who logs in to it, by role."""

    name: str
    #: Path (relative to federation.toml) of the site's public key file (``site:<name>``).
    site_key: str
    #: The hub cluster this site's leaf connects to (default: the first ``[[hubs]]``).
    hub: str | None = None
    host: str = "127.0.0.1"
    listen: str | None = None
    client_port: int = 4222
    store_dir: str = "/var/lib/nats/jetstream"
    nodes: list[str] = Field(default_factory=lambda: ["n1"])
    callers: list[str] = Field(default_factory=list)
    operators: list[str] = Field(default_factory=lambda: ["operator"])
    auditors: list[str] = Field(default_factory=lambda: ["auditor"])

    @field_validator("name")
    @classmethod
    def _site(cls, value: str) -> str:
        return validate_site(value)

    @field_validator("nodes", "callers", "operators", "auditors")
    @classmethod
    def _users(cls, values: list[str]) -> list[str]:
        for value in values:
            validate_name(value, "user name")
        if len(set(values)) != len(values):
            raise ValueError(f"names repeat: {values}")
        return values

    def users(self, role: Role) -> list[str]:
        """The names that log in to this site's leaf server as ``role``."""
        return {
            "node": self.nodes,
            "caller": self.callers,
            "operator": self.operators,
            "auditor": self.auditors,
        }[role]


class _Federation(_Model):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "federation name")


class Topology(_Model):
    """The whole of ``federation.toml``."""

    federation: _Federation
    hubs: list[HubCluster] = Field(min_length=1)
    sites: list[Site] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Topology:
        hubs = [h.name for h in self.hubs]
        servers = [s.name for h in self.hubs for s in h.servers]
        sites = [s.name for s in self.sites]
        for what, names in (("hub", hubs), ("hub server", servers), ("site", sites)):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names repeat: {names}")
        squashed = [s.replace("-", "_") for s in sites]
        if len(set(squashed)) != len(squashed):
            raise ValueError(f"site names collide once '-' becomes '_': {sites}")
        for site in self.sites:
            if site.hub is not None and site.hub not in hubs:
                raise ValueError(f"site {site.name!r} names hub {site.hub!r}; hubs are {hubs}")
        return self

    @property
    def name(self) -> str:
        """The federation's name (in certificate subjects)."""
        return self.federation.name

    def hub_of(self, site: Site) -> HubCluster:
        """The hub cluster ``site``'s leaf connects to."""
        name = site.hub or self.hubs[0].name
        return next(h for h in self.hubs if h.name == name)

    def site(self, name: str) -> Site:
        """The site called ``name``; ConfigError if there is none."""
        for site in self.sites:
            if site.name == name:
                return site
        raise ConfigError(f"no site {name!r} in the federation", hint=f"sites: {self.names}")

    @property
    def names(self) -> list[str]:
        """Site names, in file order."""
        return [s.name for s in self.sites]


def load_topology(path: Path) -> Topology:
    """Read and check ``federation.toml``; ConfigError names what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def site_public_keys(topology: Topology, base: Path) -> dict[str, PublicKeys]:
    """Each site's pinned public key, read from its ``site_key`` file (relative to ``base``).

    ConfigError unless the file holds the key of ``site:<name>``.
    """
    keys: dict[str, PublicKeys] = {}
    for site in topology.sites:
        path = Path(site.site_key)
        keys[site.name] = pub = load_public_file(path if path.is_absolute() else base / path)
        if pub.identity != f"site:{site.name}":
            raise ConfigError(
                f"site {site.name!r}: {site.site_key} holds the key of {pub.identity}, "
                f"not site:{site.name}"
            )
    return keys
