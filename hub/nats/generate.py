"""Everything each party of a federation runs, generated from ``federation.toml``.

:func:`generate` writes one folder per party, so each receives only its own secrets::

    OUT/ca/                         the federation's CA (keep offline; signs new servers)
    OUT/hub/<server>/               per hub server: nats-server.conf, TLS key and cert
    OUT/hub/credentials/admin.nk    NKey of the hub's own client (sets up the hub's streams)
    OUT/hub/streams/FH_EVENTS_<SITE>.json   the hub's copy of each site's event stream
    OUT/hub/streams/FH_DIRECTORY.json       the federation-wide directory (every site's FH_DIR)
    OUT/sites/<site>/               nats-leaf.conf (with its NKey to the hub), TLS key and
                                    cert, ca.pem, credentials/<role>-<name>.nk per user
    OUT/trust/site:<site>.pub       every site's pinned public key (public)

NKeys everywhere (no passwords between parties): each site's leaf logs in to the hub with
its own NKey and is bound to the site's account; every client of a leaf logs in with the
NKey of its role (:data:`~hub.nats.topology.ROLES`) and gets that role's permissions
(:func:`role_permissions`). Existing keys, seeds and certificates are kept, so running it
again (or :func:`add_site`) rewrites configs without rotating any other party's secret.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nkeys

from hub.errors import ConfigError
from hub.nats.config import (
    DEFAULT_MAX_PAYLOAD,
    FEDERATION_ACCOUNT,
    HUB_DOMAIN,
    LEAF_LOCAL_SUBJECTS,
    _hub_imports,
    _q,
    _qlist,
    _site_exports,
    _site_imports,
    directory_accounts,
    site_account,
)
from hub.nats.hubsetup import write_hub_streams
from hub.nats.topology import ROLES, HubCluster, HubServer, Role, Site, Topology, site_public_keys

if TYPE_CHECKING:  # the TLS helpers (cryptography) load only when certificates are made
    from hub.nats.tlsca import CertFiles

from hub.subjects import (
    CALLS_CONSUMER,
    CALLS_STREAM,
    DISCOVERY_SUBJECT,
    EVENTS_STREAM,
    RESULTS_BUCKET,
    bulk_filter,
    inbox_prefix,
)

__all__ = [
    "HUB_ADMIN",
    "Generated",
    "Permissions",
    "credentials_path",
    "ensure_nkey",
    "generate",
    "nats_inbox_prefix",
    "role_permissions",
]

#: The hub servers' system account (required by gateways); no user logs in to it.
SYSTEM_ACCOUNT = "SYS"
#: The hub's own client (account FEDHUB): sets up and reads the event copies.
HUB_ADMIN = "admin"


def ensure_nkey(path: Path) -> str:
    """Return the public key of the NKey user seed in ``path``, creating it on first use."""
    from hub.nats.tlsca import write_secret

    if path.exists():
        seed = path.read_bytes().strip()
    else:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        write_secret(path, seed + b"\n")
    try:
        return str(nkeys.from_seed(bytearray(seed)).public_key.decode())
    except nkeys.NkeysError as exc:
        raise ConfigError(f"{path} is not an NKey user seed: {exc}") from exc


def _secret(path: Path) -> str:
    """A random secret kept in ``path`` (made on first use): route and gateway logins."""
    from hub.nats.tlsca import write_secret

    if not path.exists():
        write_secret(path, secrets.token_hex(24).encode() + b"\n")
    return path.read_text().strip()


def credentials_path(out: Path, site: str, role: Role, name: str) -> Path:
    """Where the NKey seed of ``name`` (in ``role`` at ``site``) is written."""
    return out / "sites" / site / "credentials" / f"{role}-{name}.nk"


def nats_inbox_prefix(role: Role, name: str) -> str:
    """The ``inbox_prefix`` a client of ``role`` must connect with (its own inboxes only)."""
    return f"_INBOX.{role}.{name}"


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one client of a site's leaf server may publish and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    #: Publish to the reply subject of a request it received (services answering).
    allow_responses: bool = False


def role_permissions(site: str, role: Role, name: str) -> Permissions:
    """The permissions of ``name`` logging in as ``role`` to ``site``'s leaf server.

    - **node**: its site's JetStream (streams, the calls consumer, the results bucket)
      but no deleting or purging of ``FH_CALLS``/``FH_EVENTS``; its site's event subjects
      (the nodes of a site share them; every event is signed by its node's key) and
      its site's directory records ``fh.dir.<site>.>``;
      replies to callers' inboxes and bulk transfers; its site's info, status and admin
      requests and micro service subjects.
    - **caller**: calls, module info, status requests to any site, discovery and bulk
      transfers out; its own inboxes only (``fh.inbox.<site>.<name>.>`` and its NATS
      inbox prefix). No JetStream API: a call's publish ack comes back to its inbox.
    - **operator**: admin and status requests to its site, micro service pings, stream and
      consumer information; nothing that changes or reads the streams' messages.
    - **auditor**: reading ``FH_EVENTS`` (an ordered consumer) and nothing else.
    """
    own_inbox = nats_inbox_prefix(role, name) + ".>"
    api = "$JS.API"
    if role == "node":
        return Permissions(
            publish=(
                f"{api}.>",
                f"$JS.ACK.{CALLS_STREAM}.{CALLS_CONSUMER}.>",
                f"$O.{RESULTS_BUCKET}.>",
                f"fh.events.{site}.>",
                f"fh.dir.{site}.>",
                "fh.inbox.>",
                "fh.bulk.>",
                "$SRV.>",
            ),
            deny_publish=(
                f"{api}.STREAM.DELETE.>",
                f"{api}.STREAM.PURGE.{CALLS_STREAM}",
                f"{api}.STREAM.PURGE.{EVENTS_STREAM}",
                f"{api}.STREAM.MSG.DELETE.{EVENTS_STREAM}",
                f"{api}.CONSUMER.DELETE.{CALLS_STREAM}.>",
            ),
            subscribe=(
                "_INBOX.>",
                f"fh.info.{site}.>",
                f"fh.status.{site}",
                f"fh.admin.{site}",
                bulk_filter(site),
                "$SRV.>",
            ),
            allow_responses=True,
        )
    if role == "caller":
        return Permissions(
            publish=(
                "fh.call.>",
                "fh.info.>",
                "fh.status.>",
                DISCOVERY_SUBJECT,
                "$SRV.INFO",
                "fh.bulk.>",
            ),
            subscribe=(f"{inbox_prefix(site, name)}.>", own_inbox),
        )
    if role == "operator":
        return Permissions(
            publish=(
                f"fh.admin.{site}",
                f"fh.status.{site}",
                f"fh.info.{site}.>",
                "$SRV.>",
                f"{api}.INFO",
                f"{api}.STREAM.INFO.*",
                f"{api}.STREAM.NAMES",
                f"{api}.STREAM.LIST",
                f"{api}.CONSUMER.INFO.*.*",
                f"{api}.CONSUMER.NAMES.*",
                f"{api}.CONSUMER.LIST.*",
            ),
            subscribe=(own_inbox,),
        )
    if role == "auditor":
        stream = EVENTS_STREAM
        return Permissions(
            publish=(
                f"{api}.INFO",
                f"{api}.STREAM.NAMES",
                f"{api}.STREAM.INFO.{stream}",
                f"{api}.CONSUMER.CREATE.{stream}",
                f"{api}.CONSUMER.CREATE.{stream}.>",
                f"{api}.CONSUMER.INFO.{stream}.*",
                f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
                f"{api}.CONSUMER.DELETE.{stream}.*",
                f"{api}.STREAM.MSG.GET.{stream}",
                f"{api}.DIRECT.GET.{stream}",
                f"{api}.DIRECT.GET.{stream}.>",
                f"$JS.ACK.{stream}.>",
                f"$JS.FC.{stream}.>",
            ),
            subscribe=(own_inbox,),
        )
    raise ConfigError(f"unknown role {role!r}; roles are {list(ROLES)}")


def _here(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder``: the config's own folder, where its server runs
    (nats-server reads relative paths from its working directory), so a party's folder
    can be copied to another machine or path as it is."""
    return _q(path.relative_to(folder).as_posix())


def _tls_block(files: CertFiles, folder: Path, *, verify: bool, indent: str = "  ") -> list[str]:
    lines = [
        f"{indent}tls {{",
        f"{indent}  cert_file: {_here(files.cert, folder)}",
        f"{indent}  key_file: {_here(files.key, folder)}",
        f"{indent}  ca_file: {_here(files.ca, folder)}",
    ]
    if verify:
        lines.append(f"{indent}  verify: true")
    return [*lines, f"{indent}  timeout: 5", f"{indent}}}"]


@dataclass
class Generated:
    """What :func:`generate` wrote: folders and the files other code needs to find."""

    out: Path
    hub_configs: dict[str, Path] = field(default_factory=dict)
    leaf_configs: dict[str, Path] = field(default_factory=dict)
    ca: Path | None = None
    hub_admin: Path | None = None
    #: ``(user, password)`` of the hub's plain-text test client (``client_auth=False`` only).
    hub_local: tuple[str, str] | None = None


def _host_list(server: HubServer | Site) -> list[str]:
    return [server.host, "localhost", "127.0.0.1"]


def _hub_accounts(
    topology: Topology,
    leaf_keys: dict[str, str],
    admin_key: str,
    local_user: tuple[str, str] | None = None,
) -> list[str]:
    sites = topology.names
    lines = [
        "# One account per site (its leaf logs in with its NKey and lands there), one for",
        "# the hub's own client and JetStream. Nothing crosses accounts but the exports.",
        "accounts {",
    ]
    directory = directory_accounts(sites)
    for site in sites:
        others = [s for s in sites if s != site]
        lines += [
            f"  {_q(site_account(site))} {{",
            "    # The site's leaf server: its NKey, and only as a leaf connection.",
            f"    users: [ {{ nkey: {_q(leaf_keys[site])}, "
            'allowed_connection_types: ["LEAFNODE"] } ]',
            "    exports: [",
            *_site_exports(site, others),
            *directory.site_exports(site),
            "    ]",
            "    imports: [",
            *(_site_imports(site, others) if others else []),
            *directory.site_imports(site),
            "    ]",
            "  }",
        ]
    lines += [
        f"  {FEDERATION_ACCOUNT} {{",
        "    jetstream: enabled",
        f"    users: [ {{ nkey: {_q(admin_key)} }} ]"
        if local_user is None
        else f"    users: [ {{ nkey: {_q(admin_key)} }}, "
        f"{{ user: {_q(local_user[0])}, password: {_q(local_user[1])} }} ]",
        "    exports: [",
        *directory.hub_exports(),
        "    ]",
    ]
    if sites:
        lines += ["    imports: [", *_hub_imports(sites), *directory.hub_imports(), "    ]"]
    lines += [
        "  }",
        "  # The servers' own account (gateways need one); nobody logs in to it.",
        f"  {SYSTEM_ACCOUNT} {{ }}",
        "}",
        f"system_account: {SYSTEM_ACCOUNT}",
    ]
    return lines


def _hub_config(
    topology: Topology,
    cluster: HubCluster,
    server: HubServer,
    tls: CertFiles,
    accounts: Sequence[str],
    hub_dir: Path,
    *,
    client_tls: bool = True,
) -> str:
    listen = server.listen or server.host
    folder = hub_dir / server.name
    lines = [
        f"# Hub server {server.name} of cluster {cluster.name} (federation {topology.name}).",
        "# Generated by `fedhub federation init`; edit federation.toml, not this file.",
        "# Run it from this folder (paths in it are relative to it).",
        f"server_name: {_q(server.name)}",
        f"host: {_q(listen)}",
        f"port: {server.client_port}",
        f"max_payload: {DEFAULT_MAX_PAYLOAD}",
        *(
            [
                "# Clients of the hub (its admin) connect over TLS.",
                *_tls_block(tls, folder, verify=False, indent=""),
            ]
            if client_tls
            else []
        ),
        "jetstream {",
        f"  store_dir: {_q(server.store_dir)}",
        f"  domain: {_q(HUB_DOMAIN)}",
        "}",
        *accounts,
        "# Site leaf servers connect here over TLS and log in with their NKey.",
        "leafnodes {",
        f"  host: {_q(listen)}",
        f"  port: {server.leafnode_port}",
        *_tls_block(tls, folder, verify=False),
        "}",
    ]
    if len(cluster.servers) > 1 or len(topology.hubs) > 1:
        secret = _secret(hub_dir / "secrets" / f"cluster-{cluster.name}.secret")
        # A lone server of a supercluster routes to itself: JetStream in a supercluster
        # needs a cluster with routes (nats-server ignores the route to itself).
        routes = [
            f"nats-route://route:{secret}@{other.host}:{other.cluster_port}"
            for other in cluster.servers
            if other.name != server.name or len(cluster.servers) == 1
        ]
        lines += [
            "# The hub's own servers route to each other: mutual TLS (certificates of this",
            "# federation's CA) and a secret only the hub's servers hold.",
            "cluster {",
            f"  name: {_q(cluster.name)}",
            f"  host: {_q(listen)}",
            f"  port: {server.cluster_port}",
            f'  authorization {{ user: "route", password: {_q(secret)} }}',
            f"  routes: {_qlist(routes)}",
            *_tls_block(tls, folder, verify=True),
            "}",
        ]
    if len(topology.hubs) > 1:
        secret = _secret(hub_dir / "secrets" / f"gateway-{topology.name}.secret")
        lines += [
            "# Hub clusters of other regions join this one by gateways (a supercluster):",
            "# mutual TLS and a secret only hub servers hold.",
            "gateway {",
            f"  name: {_q(cluster.name)}",
            f"  host: {_q(listen)}",
            f"  port: {server.gateway_port}",
            f'  authorization {{ user: "gateway", password: {_q(secret)} }}',
            *_tls_block(tls, folder, verify=True),
            "  gateways: [",
        ]
        for other in topology.hubs:
            urls = [f"nats://gateway:{secret}@{s.host}:{s.gateway_port}" for s in other.servers]
            lines.append(f"    {{ name: {_q(other.name)}, urls: {_qlist(urls)} }}")
        lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _permissions_text(perm: Permissions) -> str:
    publish = f"allow: {_qlist(perm.publish)}"
    if perm.deny_publish:
        publish += f", deny: {_qlist(perm.deny_publish)}"
    text = f"publish: {{ {publish} }}, subscribe: {{ allow: {_qlist(perm.subscribe)} }}"
    if perm.allow_responses:
        text += ", allow_responses: true"
    return text


def _leaf_config(
    topology: Topology,
    site: Site,
    folder: Path,
    tls: CertFiles,
    leaf_seed: str,
    user_keys: dict[tuple[Role, str], str],
    *,
    client_tls: bool = True,
) -> str:
    hub = topology.hub_of(site)
    listen = site.listen or site.host
    lines = [
        f"# Leaf server of site {site.name} (federation {topology.name}), connected to hub",
        f"# {hub.name}. Generated by `fedhub federation init`; edit federation.toml instead.",
        "# Run it from this folder (paths in it are relative to it).",
        f"server_name: {_q(site.name)}",
        f"host: {_q(listen)}",
        f"port: {site.client_port}",
        f"max_payload: {DEFAULT_MAX_PAYLOAD}",
    ]
    if client_tls:
        lines += ["# Clients connect over TLS.", *_tls_block(tls, folder, verify=False, indent="")]
    lines += [
        "jetstream {",
        f"  store_dir: {_q(site.store_dir)}",
        f"  domain: {_q(site.name)}",
        "}",
    ]
    if user_keys:
        lines += [
            "# Every client logs in with the NKey of its role; nobody gets in without one.",
            "authorization {",
            "  users: [",
        ]
        for (role, name), key in user_keys.items():
            perm = _permissions_text(role_permissions(site.name, role, name))
            lines.append(f"    # {role} {name}")
            lines.append(f"    {{ nkey: {_q(key)}, permissions: {{ {perm} }} }}")
        lines += ["  ]", "}"]
    urls = [f"tls://{s.host}:{s.leafnode_port}" for s in hub.servers]
    lines += [
        "leafnodes {",
        "  remotes: [",
        "    {",
        f"      urls: {_qlist(urls)}",
        "      # This site's NKey on the hub (the hub binds it to the site's account).",
        f"      nkey: {_q(leaf_seed)}",
        f"      tls {{ ca_file: {_here(tls.ca, folder)} }}",
        "      # Object Store and KV subjects stay inside this site.",
        f"      deny_exports: {_qlist(LEAF_LOCAL_SUBJECTS)}",
        f"      deny_imports: {_qlist(LEAF_LOCAL_SUBJECTS)}",
        "    }",
        "  ]",
        '  reconnect: "1s"',
        "}",
    ]
    return "\n".join(lines) + "\n"


def _site_folder(out: Path, site: str) -> Path:
    return out / "sites" / site


def generate(
    topology: Topology,
    out: Path,
    *,
    base: Path,
    sites: Sequence[str] | None = None,
    client_auth: bool = True,
) -> Generated:
    """Write the hub's folder and the folders of ``sites`` (default: all) under ``out``.

    ``base`` is the folder of federation.toml (``site_key`` paths are relative to it).
    Keys, seeds, secrets and certificates already in ``out`` are kept. With
    ``client_auth=False`` the leaves' client ports take clients without TLS or credentials,
    and the hub's client port a password user without TLS (:attr:`Generated.hub_local`):
    only for tests that need such clients; never in a deployment.
    """
    from hub.nats.tlsca import ensure_ca, ensure_server_cert, write_secret

    out = out.resolve()
    keys = site_public_keys(topology, base)
    result = Generated(out=out)
    ca = ensure_ca(out / "ca", topology.name)
    result.ca = ca[0]
    hub_dir = out / "hub"
    # The public NKeys of the leaves, kept by the hub: a site whose folder was handed
    # over (and removed here) keeps its key; only a new site gets one.
    known_path = hub_dir / "leaf-keys.json"
    known: dict[str, str] = json.loads(known_path.read_text()) if known_path.exists() else {}
    leaf_keys: dict[str, str] = {}
    for site in topology.sites:
        seed = _site_folder(out, site.name) / "leaf-hub.nk"
        if site.name in known and not seed.exists():
            leaf_keys[site.name] = known[site.name]
        else:
            leaf_keys[site.name] = ensure_nkey(seed)
    hub_dir.mkdir(parents=True, exist_ok=True)
    known_path.write_text(json.dumps(leaf_keys, indent=2) + "\n")
    result.hub_admin = hub_dir / "credentials" / f"{HUB_ADMIN}.nk"
    admin_key = ensure_nkey(result.hub_admin)
    if not client_auth:
        result.hub_local = ("hub-local", _secret(hub_dir / "secrets" / "hub-local.secret"))
    accounts = _hub_accounts(topology, leaf_keys, admin_key, result.hub_local)
    for cluster in topology.hubs:
        for server in cluster.servers:
            folder = hub_dir / server.name
            tls = ensure_server_cert(
                folder / "tls", server.name, _host_list(server), ca, topology.name
            )
            path = folder / "nats-server.conf"
            write_secret(
                path,
                _hub_config(
                    topology, cluster, server, tls, accounts, hub_dir, client_tls=client_auth
                ).encode(),
            )
            result.hub_configs[server.name] = path
    write_hub_streams(hub_dir / "streams", topology)
    trust = out / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    for name, pub in keys.items():
        (trust / f"site:{name}.pub").write_text(json.dumps(pub.to_json(), indent=2) + "\n")
    for site in topology.sites:
        if sites is not None and site.name not in sites:
            continue
        if not (_site_folder(out, site.name) / "leaf-hub.nk").exists():
            raise ConfigError(
                f"site {site.name!r} was generated before and its folder has left {out}",
                hint="regenerate only the hub and new sites (fedhub federation add-site)",
            )
        folder = _site_folder(out, site.name)
        user_keys: dict[tuple[Role, str], str] = {}
        for role in ROLES:
            for name in site.users(role):
                user_keys[(role, name)] = ensure_nkey(credentials_path(out, site.name, role, name))
        tls = ensure_server_cert(folder / "tls", site.name, _host_list(site), ca, topology.name)
        leaf_seed = (folder / "leaf-hub.nk").read_text().strip()
        text = _leaf_config(
            topology,
            site,
            folder,
            tls,
            leaf_seed,
            user_keys if client_auth else {},
            client_tls=client_auth,
        )
        path = folder / "nats-leaf.conf"
        write_secret(path, text.encode())
        shutil.copyfile(trust / f"site:{site.name}.pub", folder / f"site:{site.name}.pub")
        result.leaf_configs[site.name] = path
    return result
