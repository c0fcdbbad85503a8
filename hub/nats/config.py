"""nats-server config text: the hub, a site's leaf, and the accounts that keep sites apart.

A federation is one hub (JetStream domain ``hub``) and one leaf server per site, each leaf
with its own JetStream domain named after the site. This module only writes config text
(:func:`server_config` and its thin wrappers :func:`hub_config` and :func:`leaf_config`) and
the names the configs share with the streams (:func:`site_account`,
:func:`events_deliver_prefix`, :func:`js_api_prefix`); it starts nothing and talks to no
server. See docs/topology.md for the subjects, the accounts and how a site joins a hub.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from hub.errors import ConfigError
from hub.subjects import (
    DIRECTORY_OUT_STREAM,
    DIRECTORY_STREAM,
    DISCOVERY_SUBJECT,
    EVENTS_STREAM,
    bulk_filter,
    calls_filter,
    status_subject,
    validate_site,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DIRECTORY_API",
    "FEDERATION_ACCOUNT",
    "HUB_DOMAIN",
    "LEAF_LOCAL_SUBJECTS",
    "LeafUser",
    "directory_accounts",
    "directory_copy_prefix",
    "directory_feed_prefix",
    "events_deliver_prefix",
    "hub_config",
    "js_api_prefix",
    "leaf_config",
    "server_config",
    "site_account",
]

#: JetStream domain of the hub; every site leaf uses its site name as its domain.
HUB_DOMAIN = "hub"
#: Largest message the servers we configure accept (nats-server warns above 8 MiB).
DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
#: Largest message FH_CALLS and FH_EVENTS store; bigger payloads go to the Object Store.

#: Subjects a site leaf never sends to or accepts from the hub (Object Store and KV data).
LEAF_LOCAL_SUBJECTS = ("$O.>", "$KV.>")
#: The hub's own account (its clients and JetStream); each site has its own account.
FEDERATION_ACCOUNT = "FEDHUB"
#: User that :class:`NatsServer` creates for its own clients on a hub with leaf users.


@dataclass(frozen=True, slots=True)
class LeafUser:
    """Credentials of one site's leaf connection to the hub.

    The hub binds the leaf logging in with them to the site's own account
    (:func:`site_account`), which receives nothing but what is meant for the site (see
    :func:`hub_config`). The site's leaf connects with :meth:`remote_url`:
    ``nats-leaf://<user>:<password>@hub:port``.
    """

    site: str
    user: str
    password: str

    def __post_init__(self) -> None:
        validate_site(self.site)
        if not self.user or not self.password:
            raise ConfigError(f"leaf user of site {self.site!r} needs a user and a password")

    def remote_url(self, hub_leafnode_url: str) -> str:
        """``hub_leafnode_url`` with this user's credentials, for the site's leaf remote."""
        scheme, sep, rest = hub_leafnode_url.partition("://")
        if not sep:
            raise ConfigError(f"invalid leafnode URL {hub_leafnode_url!r}")
        rest = rest.rpartition("@")[2]
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        return f"{scheme}://{user}:{password}@{rest}"


def js_api_prefix(domain: str | None = None) -> str:
    """Return the JetStream API prefix: ``$JS.API`` or ``$JS.<domain>.API``."""
    return "$JS.API" if domain is None else f"$JS.{domain}.API"


def _q(value: str) -> str:
    """Quote a string for the nats-server config format (JSON strings are valid there)."""
    return json.dumps(value)


def _qlist(values: Sequence[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def site_account(site: str) -> str:
    """Return ``SITE_<site>``: the hub account that ``site``'s leaf connection binds to."""
    return f"SITE_{validate_site(site)}"


def events_deliver_prefix(site: str) -> str:
    """Return ``fh.hubcopy.<site>``: where ``site``'s event source delivers to the hub."""
    return f"fh.hubcopy.{validate_site(site)}"


def _events_copy_services(site: str) -> list[str]:
    """Service subjects of ``site`` the hub's account needs to copy its ``FH_EVENTS``.

    Creating the source consumer (with and without a filter subject), answering its flow
    control, and JetStream account info (the hub's readiness probe); nothing else of the
    site's JetStream API.
    """
    api = js_api_prefix(site)
    return [
        f"{api}.CONSUMER.CREATE.{EVENTS_STREAM}",
        f"{api}.CONSUMER.CREATE.{EVENTS_STREAM}.>",
        f"$JS.FC.{EVENTS_STREAM}.>",
        f"{api}.INFO",
    ]


def _site_exports(site: str, others: Sequence[str]) -> list[str]:
    """What the account of ``site`` offers: its services to every site, inboxes to each."""
    lines = [
        "      # Calls, module info and status/cancel requests to this site: any other",
        "      # site may send them (service imports); only this account receives them,",
        "      # and the answers (JetStream acks, replies) go back to the requester only.",
        f"      {{ service: {_q(calls_filter(site))} }}",
        f"      {{ service: {_q(f'fh.info.{site}.>')} }}",
        f"      {{ service: {_q(status_subject(site))} }}",
        "      # Micro service discovery: every answer of this site's modules goes back.",
        '      { service: "$SRV.INFO", response_type: "stream" }',
    ]
    for other in others:
        lines += [
            f"      # Replies, progress and results this site sends to callers at {other}:",
            "      # only that site's account may import them.",
            f"      {{ stream: {_q(f'fh.inbox.{other}.>')}, "
            f"accounts: [{_q(site_account(other))}] }}",
            f"      # Bulk transfer messages this site sends to {other} (chunks of uploads,",
            "      # acks of downloads): only that site's account may import them.",
            f"      {{ stream: {_q(bulk_filter(other))}, accounts: [{_q(site_account(other))}] }}",
        ]
    hub = f"accounts: [{_q(FEDERATION_ACCOUNT)}]"
    lines += [
        "      # For the hub's copy of this site's event log (FH_EVENTS only): creating",
        "      # the source consumer, its flow control, JetStream account info (the hub's",
        "      # readiness probe), and the deliveries.",
        *(f"      {{ service: {_q(subject)}, {hub} }}" for subject in _events_copy_services(site)),
        f"      {{ stream: {_q(events_deliver_prefix(site) + '.>')}, {hub} }}",
    ]
    return lines


def _site_imports(site: str, others: Sequence[str]) -> list[str]:
    """What the account of ``site`` takes from every other site's account."""
    lines: list[str] = []
    for other in others:
        acc = _q(site_account(other))
        lines += [
            f"      # Calls, info and status requests to {other}; its replies and bulk",
            "      # transfer messages to us.",
            f"      {{ service: {{ account: {acc}, subject: {_q(calls_filter(other))} }} }}",
            f"      {{ service: {{ account: {acc}, subject: {_q(f'fh.info.{other}.>')} }} }}",
            f"      {{ service: {{ account: {acc}, subject: {_q(status_subject(other))} }} }}",
            f"      {{ stream: {{ account: {acc}, subject: {_q(f'fh.inbox.{site}.>')} }} }}",
            f"      {{ stream: {{ account: {acc}, subject: {_q(bulk_filter(site))} }} }}",
            f"      # Its $SRV.INFO, asked as {DISCOVERY_SUBJECT} (the same name would",
            "      # form an import cycle); every other site's answers it too.",
            f'      {{ service: {{ account: {acc}, subject: "$SRV.INFO" }}, '
            f"to: {_q(DISCOVERY_SUBJECT)} }}",
        ]
    return lines


def _hub_imports(sites: Sequence[str]) -> list[str]:
    """What the hub's own account takes from each site: what copying its events needs."""
    lines: list[str] = []
    for site in sites:
        acc = _q(site_account(site))
        lines += [
            f"      # Source {site}'s FH_EVENTS (external api {js_api_prefix(site)},",
            f"      # deliver prefix {events_deliver_prefix(site)}).",
            *(
                f"      {{ service: {{ account: {acc}, subject: {_q(subject)} }} }}"
                for subject in _events_copy_services(site)
            ),
            f"      {{ stream: {{ account: {acc}, "
            f"subject: {_q(events_deliver_prefix(site) + '.>')} }} }}",
        ]
    return lines


# --- the federation-wide directory ------------------------------------------------------


#: The API prefix under which sites reach the hub's ``FH_DIRECTORY`` (a leaf server keeps
#: ``$JS.<domain>.API`` requests to itself, so the import gives them a plain name).
DIRECTORY_API = "fh.dirapi"


def directory_copy_prefix(site: str) -> str:
    """Return ``fh.dircopy.<site>``: where the hub's copy of ``site``'s records is delivered."""
    return f"fh.dircopy.{validate_site(site)}"


def directory_feed_prefix(site: str) -> str:
    """Return ``fh.dirfeed.<site>``: where ``site``'s copy of the directory is delivered."""
    return f"fh.dirfeed.{validate_site(site)}"


@dataclass(frozen=True, slots=True)
class DirectoryAccounts:
    """Exports and imports of the federation-wide directory (docs/topology.md).

    Each site writes signed records into its own ``FH_DIR`` (subjects ``fh.dir.<site>.>``);
    the hub's ``FH_DIRECTORY`` (account ``FEDHUB``, domain ``hub``) sources every site's
    ``FH_DIR``; every site's own ``FH_DIRECTORY`` sources the hub's. Both hops are stream
    sources across an account boundary, so each side exports to the other exactly what a
    source needs: creating the source consumer, its flow control, and the deliveries (to
    the one account that sources them). No account can write into another's stream.
    """

    sites: tuple[str, ...]

    def site_exports(self, site: str) -> list[str]:
        """What ``site``'s account offers the hub for copying its ``FH_DIR``."""
        hub = f"accounts: [{_q(FEDERATION_ACCOUNT)}]"
        return [
            "      # For the hub's copy of this site's directory records (FH_DIR only).",
            *(
                f"      {{ service: {_q(s)}, {hub} }}"
                for s in _source_services(site, DIRECTORY_OUT_STREAM)
            ),
            f"      {{ stream: {_q(directory_copy_prefix(site) + '.>')}, {hub} }}",
        ]

    def site_imports(self, site: str) -> list[str]:
        """What ``site``'s account takes from the hub: what sourcing the directory needs."""
        acc = _q(FEDERATION_ACCOUNT)
        return [
            "      # The federation-wide directory: source the hub's FH_DIRECTORY.",
            # (the hub's own API subjects, taken under the prefix DIRECTORY_API)
            *(
                f"      {{ service: {{ account: {acc}, subject: {_q(local)} }}, to: {_q(named)} }}"
                for local, named in zip(
                    _source_services(None, DIRECTORY_STREAM),
                    _source_services(DIRECTORY_API, DIRECTORY_STREAM),
                    strict=True,
                )
            ),
            f"      {{ stream: {{ account: {acc}, "
            f"subject: {_q(directory_feed_prefix(site) + '.>')} }} }}",
        ]

    def hub_exports(self) -> list[str]:
        """What the hub's account offers the sites: sourcing its ``FH_DIRECTORY``."""
        every = "accounts: [" + ", ".join(_q(site_account(s)) for s in self.sites) + "]"
        if not self.sites:
            return []
        lines = [
            "      # Every site may source the federation-wide directory (FH_DIRECTORY only);",
            "      # each site's deliveries go to that site alone.",
            *(
                f"      {{ service: {_q(s)}, {every} }}"
                for s in _source_services(None, DIRECTORY_STREAM)
            ),
        ]
        for site in self.sites:
            lines.append(
                f"      {{ stream: {_q(directory_feed_prefix(site) + '.>')}, "
                f"accounts: [{_q(site_account(site))}] }}"
            )
        return lines

    def hub_imports(self) -> list[str]:
        """What the hub's account takes from each site: what sourcing its ``FH_DIR`` needs."""
        lines: list[str] = []
        for site in self.sites:
            acc = _q(site_account(site))
            lines += [
                f"      # Source {site}'s directory records (FH_DIR).",
                *(
                    f"      {{ service: {{ account: {acc}, subject: {_q(s)} }} }}"
                    for s in _source_services(site, DIRECTORY_OUT_STREAM)
                ),
                f"      {{ stream: {{ account: {acc}, "
                f"subject: {_q(directory_copy_prefix(site) + '.>')} }} }}",
            ]
        return lines


def directory_accounts(sites: Sequence[str]) -> DirectoryAccounts:
    """The directory's exports and imports for a hub of ``sites``."""
    return DirectoryAccounts(tuple(validate_site(s) for s in sites))


def _source_services(domain: str | None, stream: str) -> list[str]:
    """Service subjects a stream source in another account needs of ``stream`` in
    ``domain`` (or under the API prefix ``domain`` if it has dots): creating its consumer
    (with and without a filter) and its flow control."""
    api = domain if domain is not None and "." in domain else js_api_prefix(domain)
    return [
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _leaf_authorization(leaf_users: Sequence[LeafUser]) -> list[str]:
    """The hub's leaf logins: each site's leaf connection binds to the site's account."""
    lines = [
        "  # Each site's leaf logs in as its own user and lands in its site's account;",
        "  # a leaf without valid credentials is refused.",
        "  authorization {",
        "    users: [",
    ]
    for user in leaf_users:
        lines += [
            f"      {{ user: {_q(user.user)}, password: {_q(user.password)}, "
            f"account: {_q(site_account(user.site))} }}",
        ]
    return [*lines, "    ]", "  }"]


def _accounts_block(
    leaf_users: Sequence[LeafUser], client_users: Sequence[tuple[str, str]]
) -> list[str]:
    """The hub's accounts: one per site (its leaf user), one for the hub's own clients.

    Nothing flows between accounts but what they export and import: calls, module info
    and status requests to a site (service exports of that site, imported by every other
    site), replies to a site's callers and bulk transfer messages to a site (stream exports
    of ``fh.inbox.<caller-site>.>`` and ``fh.bulk.<site>.>`` to that one site), and what the
    hub needs to copy each site's event log.
    """
    sites = [user.site for user in leaf_users]
    if len(set(sites)) != len(sites):
        raise ConfigError(f"each site needs exactly one leaf user, got sites {sites}")
    lines = [
        "# One account per site, so a site receives nothing but what is meant for it, and",
        "# one for the hub's own clients and its JetStream (copies of the event logs).",
        "accounts {",
    ]
    for user in leaf_users:
        others = [site for site in sites if site != user.site]
        lines += [
            f"  # Site {user.site}: its leaf connection binds to this account (leafnodes below).",
            f"  {_q(site_account(user.site))} {{",
            "    exports: [",
            *_site_exports(user.site, others),
            *directory_accounts(sites).site_exports(user.site),
            "    ]",
            "    imports: [",
            *(_site_imports(user.site, others) if others else []),
            *directory_accounts(sites).site_imports(user.site),
            "    ]",
        ]
        lines += ["  }"]
    lines += [
        "  # The hub's own clients (operator, auditor) and its JetStream (domain hub).",
        f"  {FEDERATION_ACCOUNT} {{",
        "    jetstream: enabled",
        "    exports: [",
        *directory_accounts(sites).hub_exports(),
        "    ]",
        "    users: [",
    ]
    for name, password in client_users:
        lines += [f"      {{ user: {_q(name)}, password: {_q(password)} }}"]
    # No no_auth_user: it would also admit leaf nodes that present no credentials.
    lines += ["    ]"]
    if sites:
        lines += [
            "    imports: [",
            *_hub_imports(sites),
            *directory_accounts(sites).hub_imports(),
            "    ]",
        ]
    lines += ["  }", "}"]
    return lines


def server_config(
    *,
    name: str | None,
    store_dir: Path | str | None,
    host: str = "127.0.0.1",
    client_port: int = -1,
    domain: str | None = None,
    leafnode_port: int | None = None,
    leafnode_remotes: Sequence[str] = (),
    leaf_users: Sequence[LeafUser] = (),
    client_users: Sequence[tuple[str, str]] = (),
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> str:
    """Return nats-server config text; every option is explained by a comment.

    ``client_port``/``leafnode_port`` of ``-1`` pick a free port; ``leafnode_port=None``
    disables the leafnode listener; ``store_dir=None`` disables JetStream.
    ``leafnode_remotes`` are hub URLs (``nats-leaf://user:password@host:port``) this
    server connects to as a leaf. ``leaf_users`` (hub side) make every leaf log in as its
    site's user and bind it to the site's own account (see :class:`LeafUser`);
    ``client_users`` are ``(user, password)`` pairs for the hub's own clients, in the hub's
    account :data:`FEDERATION_ACCOUNT`. Once either is given, every connection must
    authenticate.
    """
    lines: list[str] = []
    if name is not None:
        lines += [
            "# Unique name of this server in the federation (shown in logs/monitoring).",
            f"server_name: {_q(name)}",
        ]
    lines += [
        "# Address for client connections (node daemons, fedhub clients).",
        f"host: {_q(host)}",
        "# Client port; -1 picks a free port (the launcher reads it from the ports file).",
        f"port: {int(client_port)}",
        "# Largest message accepted; results larger than this go to the Object Store.",
        f"max_payload: {int(max_payload)}",
    ]
    if store_dir is not None:
        lines += [
            "# JetStream: persistent streams (calls, events) and the results Object Store.",
            "jetstream {",
            "  # Where streams are stored on disk; keep it across restarts.",
            f"  store_dir: {_q(str(store_dir))}",
        ]
        if domain is not None:
            lines += [
                "  # JetStream domain: isolates this server's JetStream API as",
                "  # $JS.<domain>.API so a hub and every site leaf keep their own streams.",
                f"  domain: {_q(domain)}",
            ]
        lines += ["}"]
    if leaf_users or client_users:
        lines += _accounts_block(leaf_users, client_users)
    if leafnode_port is not None or leafnode_remotes:
        lines += ["# Leaf node connections between the hub and the site servers.", "leafnodes {"]
        if leafnode_port is not None:
            lines += [
                "  # Hub side: where site leaf nodes connect (-1 picks a free port).",
                f"  host: {_q(host)}",
                f"  port: {int(leafnode_port)}",
            ]
            if leaf_users:
                lines += _leaf_authorization(leaf_users)
        if leafnode_remotes:
            lines += [
                "  # Site side: the hub's leafnode URLs (credentials in the URL, TLS in",
                "  # production: nats-leaf://user:password@hub.example.org:7422 with tls {}).",
                "  remotes: [",
                "    {",
                f"      urls: {_qlist(leafnode_remotes)}",
                "      # Object Store and KV subjects stay inside this site: every site has a",
                "      # bucket of the same name, and without this a put here would also be",
                "      # stored in every other site's bucket. (Remote buckets are still read",
                "      # through $JS.<domain>.API, whose deliveries use inbox subjects.)",
                f"      deny_exports: {_qlist(LEAF_LOCAL_SUBJECTS)}",
                f"      deny_imports: {_qlist(LEAF_LOCAL_SUBJECTS)}",
                "    }",
                "  ]",
                "  # Delay between reconnect attempts while the hub is unreachable.",
                '  reconnect: "1s"',
            ]
        lines += ["}"]
    return "\n".join(lines) + "\n"


def hub_config(
    name: str,
    client_port: int,
    leafnode_port: int,
    store_dir: Path | str,
    domain: str = HUB_DOMAIN,
    *,
    host: str = "127.0.0.1",
    leaf_users: Sequence[LeafUser] = (),
    client_users: Sequence[tuple[str, str]] = (),
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> str:
    """Return the config of a hub server: JetStream domain ``hub`` and a leafnode listener.

    With ``leaf_users``, each site's leaf must log in as its own user and lands in its
    site's account; the accounts share only calls, module info and status requests to a
    site (it exports them as services; every other site imports them), replies to a site's
    callers (``fh.inbox.<site>.>``) and bulk transfer messages to a site
    (``fh.bulk.<site>.>``), each exported by every other site to that site only, and what
    the hub's account needs to copy each site's event log. ``client_users`` log in the
    hub's own clients.
    """
    return server_config(
        name=name,
        store_dir=store_dir,
        host=host,
        client_port=client_port,
        domain=domain,
        leafnode_port=leafnode_port,
        leaf_users=leaf_users,
        client_users=client_users,
        max_payload=max_payload,
    )


def leaf_config(
    name: str,
    site: str,
    client_port: int,
    store_dir: Path | str,
    hub_leafnode_urls: Sequence[str],
    domain: str | None = None,
    *,
    host: str = "127.0.0.1",
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> str:
    """Return the config of a site's leaf server: JetStream domain = ``site``, hub remotes."""
    validate_site(site)
    if not hub_leafnode_urls:
        raise ConfigError(f"leaf server of site {site!r} needs at least one hub leafnode URL")
    return server_config(
        name=name,
        store_dir=store_dir,
        host=host,
        client_port=client_port,
        domain=site if domain is None else domain,
        leafnode_remotes=hub_leafnode_urls,
        max_payload=max_payload,
    )
