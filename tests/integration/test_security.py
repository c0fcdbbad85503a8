"""Hostile parties against a node at hereon, with callers at geomar and the hub in between.

- spies in every account (the hub's, and each site's through its leaf server), subscribed to
  ``>``, see calls pass only at the calling and the called site, and never any plaintext;
  what the servers store on disk is ciphertext too; a third site sees nothing of them;
- callers without a grant, with a key the site does not know, or with a revoked key are
  refused, and each refusal is logged;
- a captured request published again is not run again; a tampered one is never run;
- a request the node cannot decrypt fails cleanly and the node keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.js.errors
import numpy as np
import pytest
import pytest_asyncio
import xarray as xr
from nats.aio.client import Client as NatsClient
from support.hostile import (
    Captured,
    LogView,
    Spy,
    craft_request,
    find_in_tree,
    flip_bit,
    publish_and_wait,
    wait_reachable,
    wait_until,
)
from support.world import World

from hub import codec
from hub.audit import audit_events
from hub.canonical import b64e
from hub.client import Client
from hub.clock import now
from hub.envelopes import split_request
from hub.errors import ConfigError, UnauthorizedError
from hub.events import KeyRevoked
from hub.keys import KeyPair
from hub.logfile import iter_log
from hub.nats import connect as nats_connect
from hub.records import Revocation, sign_record
from hub.subjects import CALLS_CONSUMER, CALLS_STREAM, inbox_prefix
from node.bootstrap import open_log
from node.config import NodeConfig, load_config
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

KLAUS = "klaus@geomar"  # granted
EVE = "eve@geomar"  # registered at hereon, no grant
MALLORY = "mallory@geomar"  # keys of her own, never registered at hereon
ANNA = "anna@awi"  # a caller at a third site


@pytest.fixture(scope="session")
def federation(open_federation: Federation) -> Federation:
    """Spies here listen on everything at a site's server: the federation whose site
    servers take anyone (the hub and the leaf connections are secured as ever; what a
    site's server refuses is tested in test_leaf_permissions.py)."""
    return open_federation


def _opts(federation: Federation, name: str) -> dict[str, Any]:
    """Connection options: the hub's admin on the hub, nothing at the (open) sites."""
    return federation.hub_options() if name == "hub" else {}


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys of everyone; klaus and eve vouched by geomar, mallory's keys unregistered."""
    w = World(tmp_path / "world")
    w.person(KLAUS)
    w.person(EVE)
    w.person(MALLORY, vouch=False)
    return w


@pytest.fixture
def cfg(world: World, federation: Federation, unique: Any) -> NodeConfig:
    """A hereon node on hereon's leaf: klaus and eve registered, only klaus granted."""
    return world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        nats_url=federation.site_url("hereon"),
        trust=["geomar"],
        users=[KLAUS, EVE],
        grants=[(KLAUS, "climate", "*")],
        # A node stopped while the spy listens on ">" leaves pull requests the server
        # still believes in; a message they take comes back after ack_wait (default 30 s).
        calls={"ack_wait": 2},
    )


@pytest.fixture
async def spies(federation: Federation) -> AsyncIterator[dict[str, Spy]]:
    """Someone subscribed to everything in every account: on the hub and at every site."""
    urls = {"hub": federation.hub_url} | {s: federation.site_url(s) for s in federation.sites}
    conns = {name: await nats_connect(url, **_opts(federation, name)) for name, url in urls.items()}
    yield {name: await Spy(nc).start() for name, nc in conns.items()}
    for nc in conns.values():
        await nc.close()


def client(world: World, federation: Federation, who: str) -> Any:
    """A connecting client of ``who`` at geomar (use with ``async with await ...``)."""
    return Client.connect(federation.site_url("geomar"), who, home=world.store.home)


async def still_serves(fed: Client) -> None:
    """Klaus's normal call succeeds."""
    assert await fed.call("hereon.climate.scale", values=[2.0], factor=4.0, timeout=15) == [8.0]


def started(cfg: NodeConfig) -> int:
    """How many calls the node took on to run: ``request.accepted``, and
    ``request.started`` for a run again after a restart."""
    counts = LogView(cfg.log_path).counts()
    return counts["request.accepted"] + counts["request.started"]


def assert_audits_clean(cfg: NodeConfig, world: World) -> None:
    """The node's log verifies against the pinned site keys of hereon and geomar."""
    report = audit_events(
        iter_log(cfg.log_path),
        trusted_sites={s: world.site(s).sign_public for s in ("hereon", "geomar")},
        threads=2,
    )
    assert report.ok, [f.line() for f in report.findings]


# --- confidentiality ------------------------------------------------------------------------


async def test_spies_in_every_account_and_the_servers_disks_see_no_plaintext_arguments_or_results(
    world: World, cfg: NodeConfig, federation: Federation, spies: dict[str, Spy]
) -> None:
    tag = secrets.token_hex(6)
    name = f"tas_secret_{tag}"
    da = xr.DataArray(
        3.25 + np.arange(24.0).reshape(4, 6) * 1.0000123e-3,
        dims=("time", "x"),
        name=name,
        attrs={"note": f"argument-attribute-{tag}"},
    )
    expected = da.sum(dim="time")
    raw = f"raw-bytes-argument-{tag}".encode() * 4
    calls: list[tuple[str, dict[str, Any]]] = [
        ("hereon.climate.compute_sum", {"da": da}),
        ("hereon.climate.checksum", {"data": raw}),
    ]
    arg_needles = [
        name.encode(),
        da.attrs["note"].encode(),
        da.values.tobytes()[:32],
        raw[:24],
    ]
    result_needles = [expected.values.tobytes()[:24]]
    needles = arg_needles + result_needles
    # The needles are really in the plaintext, so finding none of them means something.
    plain_args = b"".join(codec.encode_many(kw) for _, kw in calls)
    assert all(n in plain_args for n in arg_needles)
    assert all(n in codec.encode(expected) for n in result_needles)

    leaf_js = (nc := await nats_connect(federation.site_url("hereon"))).jetstream()
    try:
        async with await client(world, federation, KLAUS) as fed:
            async with NodeDaemon(cfg):
                await wait_reachable(fed, "hereon", "climate")  # the client keeps the info
            # Node stopped: the calls wait in hereon's FH_CALLS; read them as stored.
            first = (await leaf_js.stream_info(CALLS_STREAM)).state.last_seq + 1
            handles = [await fed.submit(addr, timeout=60, **kw) for addr, kw in calls]
            stored = [
                (await leaf_js.get_msg(CALLS_STREAM, seq)).data or b""
                for seq in range(first, first + len(calls))
            ]
            async with NodeDaemon(cfg):
                results = [await h.result(timeout=30) for h in handles]
    finally:
        await nc.close()

    xr.testing.assert_identical(results[0], expected)
    assert results[1] == sum(raw) % 65536
    assert all(m.startswith(b"FHR1") for m in stored)
    assert [n for m in stored for n in needles if n in m] == [], "stored call in plaintext"
    # Spies at the calling and the called site saw the calls and the answers pass, and
    # nothing readable in them; the hub's account and the third site saw nothing of them.
    for site in ("geomar", "hereon"):
        assert len(spies[site].on("fh.call.hereon.")) >= len(calls), site
        assert len(spies[site].on("fh.inbox.geomar.klaus.")) >= len(calls), site
    for bystander in ("hub", "awi"):
        assert spies[bystander].on("fh.call.") == [], bystander
        assert spies[bystander].on("fh.inbox.") == [], bystander
    assert [(name, leak) for name, spy in spies.items() for leak in spy.leaks(needles)] == []
    # Nor is there plaintext in any server's store (streams, results bucket) or the log.
    for server in (federation.hub, *federation.leaves.values()):
        assert find_in_tree(server.store_dir, needles) == [], server.store_dir
    log_bytes = LogView(cfg.log_path).raw_bytes()
    assert [n for n in needles if n in log_bytes] == []
    assert_audits_clean(cfg, world)


async def test_calls_from_two_sites_succeed_while_neither_site_nor_the_hub_receives_the_others(
    world: World, federation: Federation, unique: Any
) -> None:
    world.person(KLAUS)
    world.person(ANNA)
    cfg = world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        nats_url=federation.site_url("hereon"),
        trust=["geomar", "awi"],
        users=[KLAUS, ANNA],
        grants=[(KLAUS, "climate", "*"), (ANNA, "climate", "*")],
        calls={"ack_wait": 2},
    )
    urls = {"hub": federation.hub_url} | {s: federation.site_url(s) for s in ("geomar", "awi")}
    conns = {name: await nats_connect(url, **_opts(federation, name)) for name, url in urls.items()}
    try:
        # Each listens on ">", on hereon's calls, and on the other site's inboxes.
        spies = {
            "geomar": await Spy(conns["geomar"]).start("fh.call.hereon.>", "fh.inbox.awi.>"),
            "awi": await Spy(conns["awi"]).start("fh.call.hereon.>", "fh.inbox.geomar.>"),
            "hub": await Spy(conns["hub"]).start("fh.call.hereon.>", "fh.inbox.>"),
        }
        async with (
            NodeDaemon(cfg),
            await client(world, federation, KLAUS) as klaus,
            await Client.connect(federation.site_url("awi"), ANNA, home=world.store.home) as anna,
        ):
            await wait_reachable(klaus, "hereon", "climate")
            await wait_reachable(anna, "hereon", "climate")
            for _ in range(2):
                assert await klaus.call("hereon.climate.scale", values=[2.0], factor=4.0) == [8.0]
                assert await anna.call("hereon.climate.scale", values=[1.0], factor=3.0) == [3.0]
    finally:
        for nc in conns.values():
            await nc.close()

    # Each caller's own site carries its calls out and its answers in (the spies are live) ...
    assert len([m for m in spies["geomar"].on("fh.call.hereon.") if KLAUS.encode() in m.data])
    assert spies["geomar"].on(f"{inbox_prefix('geomar', 'klaus')}.")
    assert len([m for m in spies["awi"].on("fh.call.hereon.") if ANNA.encode() in m.data])
    assert spies["awi"].on(f"{inbox_prefix('awi', 'anna')}.")
    # ... and nothing of the other's: not its calls, not hereon's answers to it.
    assert spies["geomar"].holding(ANNA.encode()) == []
    assert spies["geomar"].on("fh.inbox.awi.") == []
    assert spies["awi"].holding(KLAUS.encode()) == []
    assert spies["awi"].on("fh.inbox.geomar.") == []
    assert spies["hub"].on("fh.call.") == []
    assert spies["hub"].on("fh.inbox.") == []
    # The hub keeps copies of the nodes' signed logs (callers' names in them, never a payload),
    # and other readers of those copies may be served while the spy listens.
    at_hub = [
        (m.subject, m.reply)
        for who in (KLAUS, ANNA)
        for m in spies["hub"].holding(who.encode())
        if not m.is_event_copy()
    ]
    assert at_hub == []
    assert started(cfg) == 4


# --- who may call ----------------------------------------------------------------------------


async def test_a_caller_without_a_grant_is_refused_and_the_refusal_is_logged(
    world: World, cfg: NodeConfig, federation: Federation
) -> None:
    async with NodeDaemon(cfg), await client(world, federation, EVE) as eve:
        await wait_reachable(eve, "hereon", "climate")
        with pytest.raises(UnauthorizedError) as err:
            await eve.call("hereon.climate.scale", values=[1.0], timeout=15)
        assert "may not call climate.scale" in err.value.message
        async with await client(world, federation, KLAUS) as klaus:
            await still_serves(klaus)
    rejections = LogView(cfg.log_path).rejections()
    assert [(r["caller"], r["code"]) for r in rejections] == [(EVE, "unauthorized")]
    assert started(cfg) == 1  # klaus's call only
    assert_audits_clean(cfg, world)


async def test_a_key_the_site_never_registered_is_refused(
    world: World, cfg: NodeConfig, federation: Federation
) -> None:
    async with NodeDaemon(cfg), await client(world, federation, MALLORY) as mallory:
        await wait_reachable(mallory, "hereon", "climate")
        with pytest.raises(UnauthorizedError) as err:
            await mallory.call("hereon.climate.scale", values=[1.0], timeout=15)
        assert "not known" in err.value.message
        async with await client(world, federation, KLAUS) as klaus:
            await still_serves(klaus)
    rejections = LogView(cfg.log_path).rejections()
    # An unknown key proves nothing: the claimed caller is kept in the reason only, never
    # recorded as the request's caller (a forger must not be able to blame anyone).
    assert [(r["caller"], r["code"]) for r in rejections] == [(None, "unauthorized")]
    assert f"caller {MALLORY}" in rejections[0]["reason"]
    assert rejections[0]["request_id"] is None
    assert started(cfg) == 1


@pytest.mark.parametrize("signer", ["evil", "hereon"], ids=["untrusted-site", "wrong-site"])
def test_a_key_record_not_vouched_by_the_users_own_trusted_site_stops_the_node_from_starting(
    world: World, cfg: NodeConfig, signer: str
) -> None:
    # evil: a site no one pinned; hereon: a trusted site, but not mallory's own.
    mallory = world.store.load(MALLORY)
    record = world.record(mallory, signer=world.site(signer))
    path = world.root / f"mallory-by-{signer}.json"
    path.write_text(json.dumps(record.model_dump()))
    assert cfg.source is not None
    text = cfg.source.read_text()
    users = json.dumps([*cfg.users, str(path)])
    old = f"users = {json.dumps(list(cfg.users))}"
    cfg.source.write_text(text.replace(old, f"users = {users}"))
    bad = load_config(cfg.source)
    assert str(path) in bad.users

    async def start() -> None:
        async with NodeDaemon(bad):
            pass

    with pytest.raises(ConfigError) as err:
        asyncio.run(start())
    assert str(path) in err.value.message


def revoke_while_stopped(cfg: NodeConfig, pair: KeyPair, signer: KeyPair) -> None:
    """Append a signed revocation of ``pair`` to the stopped node's log (no admin path yet)."""
    revocation = Revocation(identity=pair.identity, kid=pair.kid, time=now(), reason="key lost")
    with open_log(cfg) as log:
        log.append(KeyRevoked(revocation=sign_record(revocation, signer.signing_key)))


@pytest.mark.parametrize("by", ["geomar", "hereon"], ids=["by-own-site", "local-ban"])
async def test_a_revoked_key_is_refused_once_the_node_has_learned_the_revocation(
    world: World, cfg: NodeConfig, federation: Federation, by: str
) -> None:
    async with await client(world, federation, KLAUS) as klaus:
        async with NodeDaemon(cfg):
            await wait_reachable(klaus, "hereon", "climate")
            await still_serves(klaus)
        revoke_while_stopped(cfg, world.store.load(KLAUS), world.site(by))
        async with NodeDaemon(cfg):
            await wait_reachable(klaus, "hereon", "climate")
            with pytest.raises(UnauthorizedError) as err:
                await klaus.call("hereon.climate.scale", values=[1.0], timeout=15)
    assert "revoked" in err.value.message
    assert [(r["caller"], r["code"]) for r in LogView(cfg.log_path).rejections()] == [
        (KLAUS, "unauthorized")
    ]
    assert started(cfg) == 1
    assert_audits_clean(cfg, world)


async def test_a_revocation_signed_by_a_site_with_no_say_over_the_key_is_ignored(
    world: World, cfg: NodeConfig, federation: Federation
) -> None:
    evil = world.site("evil")  # not trusted by hereon at all
    revoke_while_stopped(cfg, world.store.load(KLAUS), evil)
    async with NodeDaemon(cfg), await client(world, federation, KLAUS) as klaus:
        await wait_reachable(klaus, "hereon", "climate")
        await still_serves(klaus)


# --- replays, tampering, undecryptable requests: one node, one spy for all ------------------
#
# These share a node (module scope): a node stopped while a ``>`` subscriber sits on the hub
# leaves pull requests the server still believes in, so the next node's first call waits
# for a redelivery (``ack_wait``). Sharing the node keeps the module fast.

shared = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Served:
    """A running node, klaus's client, a hostile connection at geomar, and a request of
    klaus's captured by a spy on geomar's server (klaus's own site: the only place besides
    hereon where his calls pass)."""

    world: World
    cfg: NodeConfig
    klaus: Client
    geomar: NatsClient
    captured: Captured

    @property
    def view(self) -> LogView:
        """The node's log."""
        return LogView(self.cfg.log_path)

    async def publish(self, data: bytes, msg_id: str | None = None) -> None:
        """Publish raw bytes to the captured call's subject, as a hostile party would."""
        await self.geomar.jetstream().publish(
            self.captured.subject, data, headers={"Nats-Msg-Id": msg_id or secrets.token_hex(8)}
        )

    async def rejected(self, before: int) -> list[dict[str, Any]]:
        """The rejections logged after the first ``before``, once there is at least one."""
        view = self.view
        await wait_until(lambda: len(view.rejections()) > before)
        return view.rejections()[before:]


async def no_stale_pull_requests(federation: Federation) -> None:
    """Wait until hereon's calls consumer holds no pull request of an earlier, stopped node.

    A node stopped just before leaves pull requests the server keeps until they expire
    (5 s); a call delivered to one comes back only after ``ack_wait``, as a redelivery.
    """
    nc = await nats_connect(federation.site_url("hereon"))
    try:
        js = nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await wait_until(lambda: _no_waiting(js), limit=10, every=0.1)
    finally:
        await nc.close()


async def _no_waiting(js: Any) -> bool:
    info = await js.consumer_info(CALLS_STREAM, CALLS_CONSUMER)
    return not info.num_waiting


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, federation: Federation
) -> AsyncIterator[Served]:
    """The shared node; klaus has made one call, captured by a spy at geomar."""
    world = World(tmp_path_factory.mktemp("served"))
    world.person(KLAUS)
    world.person(MALLORY, vouch=False)
    cfg = world.node_config(
        "hereon",
        name=f"served-{secrets.token_hex(4)}",
        nats_url=federation.site_url("hereon"),
        trust=["geomar"],
        users=[KLAUS],
        grants=[(KLAUS, "climate", "*")],
        calls={"ack_wait": 2},
    )
    spy_nc = await nats_connect(federation.site_url("geomar"))
    geomar = await nats_connect(federation.site_url("geomar"))
    await no_stale_pull_requests(federation)
    try:
        spy = await Spy(spy_nc).start()
        async with NodeDaemon(cfg), await client(world, federation, KLAUS) as klaus:
            await wait_reachable(klaus, "hereon", "climate")
            await still_serves(klaus)
            copies = {c.data: c for c in spy.on("fh.call.hereon.climate.scale")}
            (captured,) = copies.values()  # the spy may see a message once per route
            yield Served(world, cfg, klaus, geomar, captured)
        assert_audits_clean(cfg, world)
    finally:
        await geomar.close()
        await spy_nc.close()


def rid_of(envelope: bytes) -> str:
    """The request id a captured envelope carries."""
    header, _, _ = split_request(envelope)
    return str(json.loads(header)["id"])


@shared
async def test_a_captured_request_published_again_is_not_run_again(served: Served) -> None:
    rid = rid_of(served.captured.data)
    before = len(served.view.rejections())
    js = served.geomar.jetstream()
    ack = await js.publish(
        served.captured.subject, served.captured.data, headers=served.captured.headers
    )
    assert ack.duplicate, "same Nats-Msg-Id within the window: JetStream drops it"
    await served.publish(served.captured.data, msg_id="replay-" + rid)
    new = await served.rejected(before)
    assert [(r["request_id"], r["code"]) for r in new] == [(rid, "replay")]
    kinds = [e["type"] for e in served.view.for_request(rid)]
    assert kinds.count("request.accepted") == 1
    assert kinds.count("request.started") == 0
    assert kinds.count("request.completed") == 1
    await still_serves(served.klaus)


@shared
async def test_a_replay_leaves_the_status_of_the_original_call_alone(served: Served) -> None:
    rid = rid_of(served.captured.data)
    before = len(served.view.rejections())
    await served.publish(served.captured.data)
    await served.rejected(before)
    status = await served.klaus.status("hereon", rid)
    assert (status.state, status.code, status.reason) == ("completed", None, None)


def _tamper_ciphertext(data: bytes) -> bytes:
    return flip_bit(data, len(data) * 8 - 1)


def _tamper_header(data: bytes) -> bytes:
    at = data.index(b'"function":"scale"') + len(b'"function":"')
    return data[:at] + b"S" + data[at + 1 :]


def _tamper_signature(data: bytes) -> bytes:
    header, _, _ = split_request(data)
    return flip_bit(data, (8 + len(header) + 10) * 8)


@shared
@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (_tamper_ciphertext, "malformed"),
        (_tamper_header, "bad_signature"),
        (_tamper_signature, "bad_signature"),
    ],
    ids=["ciphertext", "header", "signature"],
)
async def test_a_tampered_request_is_rejected_and_never_run(
    served: Served, tamper: Any, code: str
) -> None:
    before, runs = len(served.view.rejections()), started(served.cfg)
    forged = tamper(served.captured.data)
    assert forged != served.captured.data
    await served.publish(forged)
    assert [r["code"] for r in await served.rejected(before)] == [code]
    assert started(served.cfg) == runs
    await still_serves(served.klaus)


@shared
async def test_a_request_signed_by_someone_else_in_klaus_name_is_rejected(
    served: Served,
) -> None:
    info = await served.klaus.module_info("hereon", "climate")
    forged = craft_request(
        served.world.store.load(MALLORY),
        claim=KLAUS,
        claim_kid=served.world.store.load(KLAUS).kid,
        node_kid=info.node_kid,
        node_box_key=info.node_box_key,
        address="hereon.climate.scale",
        kwargs={"values": [1.0]},
    )
    before, runs = len(served.view.rejections()), started(served.cfg)
    reply = await publish_and_wait(served.geomar, forged)
    assert (reply.header.kind, reply.header.code) == ("error", "unauthorized")
    assert [r["code"] for r in served.view.rejections()[before:]] == ["bad_signature"]
    assert started(served.cfg) == runs
    await still_serves(served.klaus)


@shared
@pytest.mark.parametrize("how", ["other-node-key", "garbage-wrap", "garbage-ciphertext"])
async def test_a_signed_request_the_node_cannot_decrypt_fails_cleanly(
    served: Served, how: str
) -> None:
    info = await served.klaus.module_info("hereon", "climate")
    me = served.world.store.load(KLAUS)
    target: dict[str, Any] = {"node_kid": info.node_kid, "node_box_key": info.node_box_key}
    extra: dict[str, Any] = {}
    if how == "other-node-key":
        other = KeyPair.generate("node:hereon/elsewhere")
        target = {"node_kid": other.kid, "node_box_key": other.box_public}
    elif how == "garbage-wrap":
        extra = {"wraps": {info.node_kid: b64e(me.box_public + secrets.token_bytes(56))}}
    else:
        extra = {"ciphertext": secrets.token_bytes(200)}
    crafted = craft_request(
        me, **target, **extra, address="hereon.climate.scale", kwargs={"values": [1.0]}
    )
    reply = await publish_and_wait(served.geomar, crafted)
    assert (reply.header.kind, reply.header.code) == ("error", "undecryptable")
    finals = served.view.finals()
    assert [(f["type"], f["code"]) for f in finals[crafted.request_id]] == [
        ("request.failed", "undecryptable")
    ]
    await still_serves(served.klaus)
