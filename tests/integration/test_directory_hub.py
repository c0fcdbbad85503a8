"""The hub's streams from the generated files, and the directory on a hub of three servers.

- ``fedhub federation setup-hub`` (a real process) creates the hub's event copies and its
  ``FH_DIRECTORY`` from ``hub/streams/*.json`` with the hub admin's NKey over TLS; a
  site's credentials get nothing.
- On a hub of three servers (run from generated configs, TLS and NKeys on), the directory
  stream has three replicas; one hub server is killed (the directory's stream leader) and
  records published at one site still reach the other site's node: a grant, then a
  revocation at the caller's home site that stops his calls.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from conftest import node_nats
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo
from support.hostile import LogView, audit_node, wait_reachable, wait_until
from support.world import World

from hub.answers import AdminAnswer
from hub.client import Client
from hub.clock import now
from hub.errors import FederationError, UnauthorizedError
from hub.nats import LocalFederation, connect
from hub.records import GrantRecord, Revocation, SignedRecord, sign_record
from hub.subjects import DIRECTORY_STREAM, admin_subject, hub_events_stream
from node.admin import admin_message
from node.daemon import NodeDaemon

FederationFactory = Callable[..., Coroutine[Any, Any, LocalFederation]]
KLAUS = "klaus@geomar"
#: Bound on a record's way to the other site while the hub elects a new stream leader.
#: Usually seconds; but a site stream that sources the hub's directory re-creates its
#: source consumer on nats-server's own schedule after a failed try (about 30 s, not
#: configurable: nats-io/nats-server#6454), so one run in many needs more than 40 s.
LIMIT = 90.0


async def fedhub(*args: str) -> tuple[int, str]:
    """Run the ``fedhub`` CLI as its own process: (exit code, its output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return int(proc.returncode or 0), out.decode()


async def hub_stream(fed: LocalFederation, name: str) -> StreamInfo:
    nc = await connect(fed.hub_url, **fed.hub_options())
    try:
        return await nc.jetstream(domain="hub").stream_info(name)
    finally:
        await nc.close()


async def test_setup_hub_creates_the_event_copies_and_the_directory_from_the_generated_files(
    federation_factory: FederationFactory,
) -> None:
    fed = await federation_factory()
    code, out = await fedhub("federation", "setup-hub", str(fed.out), "--url", fed.hub_url)
    assert code == 0, out
    for site in fed.sites:
        info = await hub_stream(fed, hub_events_stream(site))
        assert info.config.deny_delete and info.config.deny_purge
    directory = await hub_stream(fed, DIRECTORY_STREAM)
    assert sorted(s.external.api for s in directory.config.sources or [] if s.external) == [
        "$JS.geomar.API",
        "$JS.hereon.API",
    ]
    again, out = await fedhub("federation", "setup-hub", str(fed.out / "hub"), "--url", fed.hub_url)
    assert again == 0, out  # the same files again: nothing changes


async def test_setup_hub_with_a_sites_credentials_is_refused_in_one_line(
    federation_factory: FederationFactory,
) -> None:
    fed = await federation_factory()
    caller = fed.credentials("hereon", "caller", "klaus")
    code, out = await fedhub(
        "federation", "setup-hub", str(fed.out), "--url", fed.hub_url, "--creds", str(caller)
    )
    assert code != 0
    assert out.count("\n") == 1 and out.startswith("error:"), out
    events = [hub_events_stream(site) for site in fed.sites]
    nc = await connect(fed.hub_url, **fed.hub_options())
    try:
        names = await nc.jetstream(domain="hub").streams_info()
    finally:
        await nc.close()
    assert not {s.config.name for s in names} & set(events)


def hereon_grant(world: World, principal: str, serial: int) -> SignedRecord:
    """hereon's grant of its ``climate.scale`` to ``principal``."""
    rec = GrantRecord(site="hereon", principal=principal, module="climate", function="scale",
                      allow=True, serial=serial, time=now())  # fmt: skip
    return sign_record(rec, world.site("hereon").signing_key)


async def admin(nc: NatsClient, site: str, op: str, record: SignedRecord) -> AdminAnswer:
    reply = await nc.request(admin_subject(site), admin_message(op, record), timeout=10)
    return AdminAnswer.model_validate_json(reply.data)


async def refused(client: Client) -> bool:
    try:
        await client.call("hereon.climate.scale", values=[1.0], timeout=10)
    except UnauthorizedError:
        return True
    except FederationError:  # e.g. a reply lost while the hub elects leaders: try again
        return False
    return False


async def test_the_directory_on_a_three_server_hub_keeps_working_when_one_server_dies(
    federation_factory: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation_factory(hub_servers=3)
    info = await hub_stream(fed, DIRECTORY_STREAM)
    assert info.config.num_replicas == 3
    assert info.cluster is not None and info.cluster.leader is not None
    assert len(info.cluster.replicas or []) == 2, "a leader and two replicas: R3"
    leader_name = info.cluster.leader
    leader = fed.hubs[leader_name]

    world = World(tmp_path / "world")
    world.person(KLAUS)
    hereon = world.node_config("hereon", **node_nats(fed, "hereon"), trust=["geomar"],
                               users=[KLAUS])  # fmt: skip
    geomar = world.node_config("geomar", **node_nats(fed, "geomar"), trust=["hereon"],
                               users=[KLAUS])  # fmt: skip
    klaus = world.store.load(KLAUS)
    revocation = sign_record(
        Revocation(identity=KLAUS, kid=klaus.kid, time=now(), reason="left geomar"),
        world.site("geomar").signing_key,
    )
    operators = {
        site: await connect(fed.site_url(site), **fed.client_options(site, "operator"))
        for site in fed.sites
    }
    try:
        async with (
            NodeDaemon(hereon),
            NodeDaemon(geomar),
            await Client.connect(
                fed.site_url("geomar"), KLAUS, home=world.store.home, **fed.caller_auth(KLAUS)
            ) as client,
        ):
            await wait_reachable(client, "hereon", "climate")
            assert await refused(client), "no grant yet"
            # a live grant: no restart, the node applies it as it arrives
            assert (await admin(operators["hereon"], "hereon", "grant",
                                hereon_grant(world, KLAUS, 1))).op == "grant"  # fmt: skip
            assert await client.call("hereon.climate.scale", values=[2.0], timeout=10) == [4.0]

            await leader.kill()  # the directory's stream leader dies
            await fed.wait_connected(limit=30)
            # klaus's home site revokes his key; hereon hears it through the hub's survivors
            answer = await admin(operators["geomar"], "geomar", "revoke", revocation)
            assert (answer.op, answer.kid) == ("revoke", klaus.kid)
            await wait_until(lambda: refused(client), limit=LIMIT, every=0.5)

            after = await hub_stream(fed, DIRECTORY_STREAM)
            assert after.cluster is not None and after.cluster.leader not in (None, leader_name)
            assert after.config.num_replicas == 3
    finally:
        for nc in operators.values():
            await nc.close()

    revoked = LogView(hereon.log_path).events("key.revoked")
    assert [SignedRecord.model_validate(e["data"]["revocation"]) for e in revoked] == [revocation]
    report = audit_node(hereon, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]
