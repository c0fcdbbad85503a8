"""Shared fixtures: real nats-server processes (one server, and a hub with two site leaves).

Server fixtures are synchronous: the process is started with ``subprocess`` (not bound to
any event loop) and only the readiness checks run in a short ``asyncio.run``. So any test,
whatever its event loop scope, can use them.

- ``nats_server`` (session): one JetStream server, no domain. Its streams are shared by
  every test of the session: ``FH_CALLS``/``FH_EVENTS`` exist once per server, so tests that
  call ``ensure_site_streams`` on it must use the site of the ``shared_site`` fixture;
  otherwise use ``fresh_nats_server`` or unique stream names (``unique``).
- ``federation`` (session): hub (domain ``hub``) + leaves ``hereon``, ``geomar`` and ``awi``
  (each its own JetStream domain and its own account on the hub), leaf connections up and
  every site's JetStream reachable from the hub. ``awi`` is the bystander of hostile tests.
  Run from the configs ``fedhub federation init`` generates: TLS and NKeys everywhere, so
  every client connects with ``**federation.client_options(site, role, name)`` (nats-py)
  or ``**federation.caller_auth(identity)`` (``Client.connect``), nodes with
  ``**node_nats(federation, site)`` (``World.node_config``).
- ``open_federation`` (session): the same, but the site servers' client ports take anyone
  (no TLS, no credentials), for tests of what the *hub* keeps apart that need a client
  allowed everything on a site's server (a ``>`` spy). The hub side is secured as above.
- ``fresh_nats_server`` (function): a server of your own, to kill and restart.
- ``federation_factory`` (function): ``await federation_factory()`` starts a federation of
  the test's own (stopped afterwards), to kill and restart leaves.
- ``world``, ``cfg``, ``node`` (function, from :mod:`support.results`): the people of the
  kept-results tests, a hereon node for them, that node running; a test file's own fixture
  of the same name takes their place.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from hub.nats import LocalFederation, NatsServer, start_local_federation

pytest_plugins = ["support.results"]

#: No ``fedhub`` command of the suite asks or starts a resident agent (docs/agent.md): none
#: is left behind. The agent's own tests turn it on for their commands and stop theirs.
os.environ["FEDHUB_AGENT"] = "off"

#: The site name to use with ``ensure_site_streams`` on the shared ``nats_server``.
SHARED_SITE = "testsite"
#: Sites of the shared ``federation`` (``awi``: a third site, for hostile tests).
FEDERATION_SITES = ("hereon", "geomar", "awi")


Federation = LocalFederation


async def start_federation(
    root: Path, sites: Sequence[str] = FEDERATION_SITES, **options: Any
) -> Federation:
    """Start a federation of your own (stop it with ``await fed.stop()``)."""
    return await start_local_federation(root, sites, **options)


def node_nats(fed: Federation, site: str) -> dict[str, Any]:
    """``World.node_config`` arguments for a node of ``site``: URL, NKey and CA."""
    if not fed.secure:
        return {"nats_url": fed.site_url(site)}
    return {
        "nats_url": fed.site_url(site),
        "nats_credentials": fed.credentials(site, "node"),
        "nats_ca": fed.generated.ca,
    }


@pytest.fixture(autouse=True)
def _logging_as_before() -> Iterator[None]:
    """Each test starts from the structlog configuration before the last one: a CLI run in
    the test process configures it for itself (its level, its renderer), and a later test
    capturing log events (``capture_logs``) would see only what that level lets through."""
    saved = structlog.get_config()
    processors = list(saved["processors"])  # the live list: capture_logs changes it in place
    yield
    structlog.configure(**{**saved, "processors": processors})


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
    """Hub + leaves ``hereon``, ``geomar``, ``awi``: ``.hub_url``, ``.site_url(site)``."""
    fed = asyncio.run(start_federation(tmp_path_factory.mktemp("federation")))
    try:
        yield fed
    finally:
        asyncio.run(fed.stop())


@pytest.fixture(scope="session")
def open_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Like ``federation``, but anyone may connect to the site servers' client ports."""
    fed = asyncio.run(start_federation(tmp_path_factory.mktemp("open-federation"), secure=False))
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
    """Return ``await federation_factory(sites=..., **options)``: a federation of this
    test's own (``hereon`` and ``geomar`` unless told; options of ``LocalFederation``).

    Use it to kill and restart servers; it is stopped after the test.
    """
    started: list[Federation] = []

    async def make(sites: Sequence[str] = FEDERATION_SITES[:2], **options: Any) -> Federation:
        fed = await start_federation(tmp_path / f"federation{len(started)}", sites, **options)
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
