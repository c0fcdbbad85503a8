"""The federation-wide directory: records published at one site decide calls at another.

A hub and two site leaves; a node at hereon (serves ``climate``) and one at geomar (klaus's
home site). Signed records travel: geomar's node → geomar's ``FH_DIR`` → the hub's
``FH_DIRECTORY`` → hereon's copy → hereon's node, which checks each up to a pinned site key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from structlog.testing import capture_logs
from support.hostile import LogView, audit_node, wait_reachable, wait_until
from support.world import World

from hub.answers import AdminAnswer
from hub.client import Client
from hub.clock import now
from hub.directory import record_token
from hub.errors import UnauthorizedError
from hub.nats import LocalFederation
from hub.nats import connect as nats_connect
from hub.nats.config import DIRECTORY_API
from hub.nats.dirstreams import ensure_site_directory
from hub.records import GrantRecord, GroupRecord, Revocation, SignedRecord, sign_record
from hub.subjects import DIRECTORY_OUT_STREAM, DIRECTORY_STREAM, admin_subject, directory_subject
from node.admin import admin_message
from node.config import NodeConfig
from node.daemon import NodeDaemon

KLAUS = "klaus@geomar"
ANNA = "anna@geomar"
LIMIT = 15.0  # seconds a record may take to reach every site (it takes milliseconds)


@pytest.fixture
async def fed(federation_factory: Callable[..., Awaitable[LocalFederation]]) -> LocalFederation:
    """A federation of this test's own. Its start sets up the hub's directory stream from
    the generated files; each node creates its site's streams when it starts."""
    # open site client ports and a plain-text hub user: these clients log in as nobody
    return await federation_factory(secure=False)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(KLAUS)
    w.person(ANNA)
    return w


def hereon_config(world: World, fed: LocalFederation, **extra: Any) -> NodeConfig:
    return world.node_config("hereon", nats_url=fed.site_url("hereon"), trust=["geomar"], **extra)


def geomar_config(world: World, fed: LocalFederation) -> NodeConfig:
    return world.node_config(
        "geomar", nats_url=fed.site_url("geomar"), trust=["hereon"], users=[KLAUS, ANNA]
    )


@pytest.fixture
async def raw(fed: LocalFederation) -> AsyncIterator[dict[str, NatsClient]]:
    """Plain connections to each site's leaf (an operator's admin requests)."""
    conns = {site: await nats_connect(fed.site_url(site)) for site in fed.sites}
    yield conns
    for nc in conns.values():
        await nc.close()


async def admin(nc: NatsClient, site: str, op: str, record: SignedRecord) -> AdminAnswer:
    reply = await nc.request(admin_subject(site), admin_message(op, record), timeout=5)
    return AdminAnswer.model_validate_json(reply.data)


def grant(
    world: World, signer: str, principal: str, serial: int, allow: bool = True
) -> SignedRecord:
    """A grant of hereon's ``climate.scale``, signed by ``signer``'s site key."""
    rec = GrantRecord(
        site="hereon",
        principal=principal,
        module="climate",
        function="scale",
        allow=allow,
        serial=serial,
        time=now(),
    )
    return sign_record(rec, world.site(signer).signing_key)


async def calls_refused(client: Client) -> bool:
    try:
        await client.call("hereon.climate.scale", values=[1.0], timeout=10)
    except UnauthorizedError:
        return True
    return False


async def test_a_revocation_at_the_callers_home_site_stops_their_calls_at_another_site(
    world: World, fed: LocalFederation, raw: dict[str, NatsClient]
) -> None:
    hereon = hereon_config(world, fed, users=[KLAUS], grants=[(KLAUS, "climate", "*")])
    geomar = geomar_config(world, fed)
    klaus = world.store.load(KLAUS)
    async with (
        NodeDaemon(hereon),
        NodeDaemon(geomar),
        await Client.connect(fed.site_url("geomar"), KLAUS, home=world.store.home) as client,
    ):
        await wait_reachable(client, "hereon", "climate")
        assert await client.call("hereon.climate.scale", values=[1.0], timeout=10) == [2.0]
        revocation = sign_record(
            Revocation(identity=KLAUS, kid=klaus.kid, time=now(), reason="left geomar"),
            world.site("geomar").signing_key,
        )
        # the revocation goes to klaus's home site only; hereon learns it from the directory
        answer = await admin(raw["geomar"], "geomar", "revoke", revocation)
        assert (answer.op, answer.kid) == ("revoke", klaus.kid)
        await wait_until(lambda: calls_refused(client), limit=LIMIT)

    revoked = LogView(hereon.log_path).events("key.revoked")
    assert [SignedRecord.model_validate(e["data"]["revocation"]) for e in revoked] == [revocation]
    for cfg, site in ((hereon, "hereon"), (geomar, "geomar")):
        report = audit_node(cfg, world.site(site).sign_public)
        assert report.ok, [f.line() for f in report.findings]


async def test_a_grant_signed_by_the_modules_site_changes_calls_live_and_its_withdrawal_too(
    world: World, fed: LocalFederation, raw: dict[str, NatsClient]
) -> None:
    hereon = hereon_config(world, fed, users=[KLAUS])
    async with (
        NodeDaemon(hereon),
        await Client.connect(fed.site_url("geomar"), KLAUS, home=world.store.home) as client,
    ):
        await wait_reachable(client, "hereon", "climate")
        assert await calls_refused(client), "no grant yet"
        answer = await admin(raw["hereon"], "hereon", "grant", grant(world, "hereon", KLAUS, 1))
        assert answer.op == "grant"
        assert await client.call("hereon.climate.scale", values=[2.0], timeout=10) == [4.0]
        await admin(raw["hereon"], "hereon", "grant", grant(world, "hereon", KLAUS, 2, False))
        assert await calls_refused(client), "the grant was withdrawn"

    kinds = [e["type"] for e in LogView(hereon.log_path).events("grant.recorded")]
    assert kinds == ["grant.recorded", "grant.recorded"]
    report = audit_node(hereon, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def test_a_grant_for_hereons_module_signed_by_geomar_is_ignored_and_logged(
    world: World, fed: LocalFederation, raw: dict[str, NatsClient]
) -> None:
    hereon = hereon_config(world, fed, users=[KLAUS])
    geomar = geomar_config(world, fed)
    forged = grant(world, "geomar", KLAUS, 7)
    honest = grant(world, "hereon", ANNA, 1)  # published after the forged one
    async with (
        NodeDaemon(hereon) as node,
        NodeDaemon(geomar) as geomar_node,
        await Client.connect(fed.site_url("geomar"), KLAUS, home=world.store.home) as client,
    ):
        # geomar publishes the forged grant into its own directory stream, as a hostile
        # site would (its own node refuses to apply it: it is not geomar's to decide)
        assert geomar_node.federation is not None and node.federation is not None
        sync = node.federation.sync
        with capture_logs() as logged:
            await geomar_node.federation.sync.publish("grant", forged)
            await admin(raw["hereon"], "hereon", "grant", honest)
            await wait_until(
                lambda: any("signed by site geomar" in i.reason for i in sync.ignored),
                limit=LIMIT,
            )
        ignored = [e for e in logged if e["event"] == "directory.record_ignored"]
        assert any("only hereon decides" in str(e.get("reason")) for e in ignored), logged
        await wait_reachable(client, "hereon", "climate")
        assert await calls_refused(client), "the forged grant gave klaus nothing"

    recorded = [e["data"]["record"] for e in LogView(hereon.log_path).events("grant.recorded")]
    assert recorded == [honest.model_dump()]


async def test_a_grant_to_a_proposal_reaches_the_members_of_its_beamtime_group(
    world: World, fed: LocalFederation, raw: dict[str, NatsClient]
) -> None:
    hereon = hereon_config(world, fed)
    geomar = geomar_config(world, fed)
    anna = world.store.load(ANNA)
    beamtime = "group:anna@geomar/beamtime-9"
    proposal = "group:anna@geomar/proposal-1"
    groups = [
        GroupRecord(group=beamtime, owner=ANNA, members=(KLAUS,), serial=1, time=now()),
        GroupRecord(group=proposal, owner=ANNA, members=(beamtime,), serial=1, time=now()),
    ]
    async with (
        NodeDaemon(hereon) as node,
        NodeDaemon(geomar),
        await Client.connect(fed.site_url("geomar"), KLAUS, home=world.store.home) as client,
    ):
        # klaus's and anna's key records reach hereon through the directory (not its config)
        for group in groups:
            await admin(raw["geomar"], "geomar", "group", sign_record(group, anna.signing_key))
        await admin(raw["hereon"], "hereon", "grant", grant(world, "hereon", proposal, 1))
        assert node.directory is not None
        directory = node.directory
        await wait_until(lambda: proposal in directory.groups_of(KLAUS), limit=LIMIT)
        await wait_reachable(client, "hereon", "climate")
        assert await client.call("hereon.climate.scale", values=[3.0], timeout=10) == [6.0]

    report = audit_node(hereon, world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def test_a_site_can_neither_write_another_sites_records_nor_reach_more_of_the_hub(
    world: World, fed: LocalFederation, raw: dict[str, NatsClient]
) -> None:
    """Account isolation holds around the directory: geomar cannot store a record under
    hereon's subjects, nor use the hub's API beyond creating a consumer on FH_DIRECTORY."""
    geomar = raw["geomar"]
    forged = grant(world, "geomar", KLAUS, 1)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await geomar.jetstream().publish(
            directory_subject("hereon", "grant", record_token(forged)),
            forged.model_dump_json().encode(),
            timeout=2,
        )
    hereon_js = raw["hereon"].jetstream()
    await ensure_site_directory(hereon_js, "hereon")  # as hereon's node does at its start
    assert (await hereon_js.stream_info(DIRECTORY_OUT_STREAM)).state.messages == 0
    # the one thing a site may ask of the hub's JetStream answers (here: a bad request) ...
    answer = await geomar.request(
        f"{DIRECTORY_API}.CONSUMER.CREATE.{DIRECTORY_STREAM}", b"{}", timeout=5
    )
    assert b"error" in answer.data
    # ... nothing else reaches it: no answer at all
    for subject in (
        f"{DIRECTORY_API}.STREAM.DELETE.{DIRECTORY_STREAM}",
        f"{DIRECTORY_API}.STREAM.INFO.{DIRECTORY_STREAM}",
        f"{DIRECTORY_API}.CONSUMER.CREATE.FH_EVENTS_HEREON",
        "$JS.hub.API.STREAM.DELETE.FH_DIRECTORY",
    ):
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await geomar.request(subject, b"{}", timeout=2)
    hub = await nats_connect(fed.hub_url)
    try:
        info = await hub.jetstream(domain="hub").stream_info(DIRECTORY_STREAM)
    finally:
        await hub.close()
    assert info.config.deny_delete and info.config.deny_purge
