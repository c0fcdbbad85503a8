"""Kept results as arguments of other calls, by reference, across the federation.

A chain of three calls at hereon, geomar and hereon again, each taking the result before
it by reference: the target node fetches the ciphertext straight from the storing site
with its own key, and no server (the hub's account, either site's) carries plaintext; the
provenance of the last result follows the chain across both sites, every step proven by
its own site's log. A reference to someone else's result is refused before anything is
sent, and a hostile client that names one anyway gets a failed call, the function never
run; a tampered stored result fails the call with an integrity error.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest
from support.hostile import LogView, Spy, audit_node, wait_reachable
from support.results import (
    OWNER,
    audit_clean,
    connect,
    federation_node,
    people_world,
    stored_result,
)
from support.world import CLIMATE, World

import hub.client
from hub import codec
from hub.answers import error_from_headers
from hub.canonical import b64e
from hub.client import Client
from hub.clock import now
from hub.crypto import blake2b_256
from hub.envelopes import ResultRef, unpack_reply
from hub.errors import IntegrityError, NotFoundError, UnauthorizedError
from hub.keys import KeyPair
from hub.nats import connect as nats_connect
from hub.nats import put_object
from hub.proofs import verify_event_proof
from hub.records import SignedRecord, sign_record
from hub.refs import Ref, stage_refs
from hub.results_wire import CatalogHeader, pack_catalog
from hub.subjects import RESULTS_BUCKET, status_subject
from node.bootstrap import key_record
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

THIRD = "mallory@awi"
SITES = ("hereon", "geomar", "awi")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return people_world(tmp_path, (OWNER, THIRD))


def _node(world: World, fed: Federation, unique: Any, site: str) -> NodeConfig:
    grants = [(OWNER, "climate", "*"), (THIRD, "climate", "*")]
    return federation_node(
        world, fed, unique, site, [OWNER, THIRD], grants=grants, calls={"ack_wait": 2}
    )


async def test_a_chain_of_three_calls_across_two_sites_passes_results_by_reference_encrypted(
    world: World, open_federation: Federation, unique: Any
) -> None:
    fed_ = open_federation
    hereon, geomar = (_node(world, fed_, unique, s) for s in ("hereon", "geomar"))
    urls = {"hub": fed_.hub_url} | {s: fed_.site_url(s) for s in ("hereon", "geomar")}
    conns = {
        name: await nats_connect(url, **(fed_.hub_options() if name == "hub" else {}))
        for name, url in urls.items()
    }
    values = [1234.56789, 9876.54321]
    try:
        spies = {name: await Spy(nc).start() for name, nc in conns.items()}
        async with (
            NodeDaemon(hereon),
            NodeDaemon(geomar),
            await connect(fed_, OWNER, world.store.home) as fed,
        ):
            await wait_reachable(fed, "hereon", "climate")
            await wait_reachable(fed, "geomar", "climate")
            first = await fed.submit("hereon.climate.scale", values=values, timeout=30)
            one = await first.result()
            second = await fed.submit(
                "geomar.climate.scale", values=fed.ref("hereon", first.request_id), factor=3.0
            )
            two = await second.result()
            third = await fed.submit(
                "hereon.climate.scale",
                {"values": fed.ref("geomar", second.request_id), "factor": 0.25},
                timeout=30,
            )
            three = await third.result()
            lineage = await fed.provenance("hereon", third.request_id)
            for nc in conns.values():
                await nc.flush()
    finally:
        for nc in conns.values():
            await nc.close()
    assert one == [2 * v for v in values]
    assert two == [6 * v for v in values]
    assert three == [1.5 * v for v in values]
    # every value of the chain crossed only as ciphertext; the spies did see the fetches
    needles = [codec.encode(v) for v in (values, one, two, three)]
    assert [(name, leak) for name, spy in spies.items() for leak in spy.leaks(needles)] == []
    assert spies["hereon"].on("fh.status.geomar") and spies["geomar"].on("fh.status.hereon")
    # the storing sites logged the share with the target node and its fetch
    pairs = ((hereon, first.request_id, geomar), (geomar, second.request_id, hereon))
    for cfg, rid, target in pairs:
        view = LogView(cfg.log_path)
        (shared,) = view.events("result.shared")
        assert (shared["data"]["request_id"], shared["data"]["principal"]) == (rid, target.identity)
        assert [e["data"]["by"] for e in view.events("result.fetched")] == [target.identity]
    # provenance follows the references back across both sites, each step proven
    named = {"site": "geomar", "id": second.request_id, "hash": lineage.earlier[0].result["hash"]}
    assert lineage.refs == {"values": named}
    chain = [lineage, lineage.earlier[0], lineage.earlier[0].earlier[0]]
    assert [(p.site, p.request_id) for p in chain] == [
        ("hereon", third.request_id),
        ("geomar", second.request_id),
        ("hereon", first.request_id),
    ]
    assert chain[2].refs == {} and chain[2].earlier == ()
    keys = {s: world.site(s).sign_public for s in SITES}
    for p in chain:
        for step, proof in zip(p.steps, p.proofs, strict=True):
            verdict = verify_event_proof(proof, keys)
            assert (verdict.seq, verdict.type, proof.site) == (step.seq, step.type, p.site)
    assert "result.fetched" in [s.type for s in chain[1].steps]
    # the module code that ran at each step is named by its hash, as each node loaded it
    assert {p.code_hash for p in chain} == {blake2b_256(CLIMATE.read_bytes()).hex()}
    assert f"code      {lineage.code_hash}" in "\n".join(lineage.lines())
    text = "\n".join(lineage.lines())
    assert second.request_id in text and first.request_id in text
    assert lineage.to_json()["earlier"][0]["earlier"][0]["request_id"] == first.request_id
    assert first.request_id[:8] in lineage.mermaid() and "digraph" in lineage.dot()
    audit_clean(hereon, world, SITES)
    audit_clean(geomar, world, SITES)


async def test_a_reference_to_someone_elses_result_is_refused_and_nothing_runs(
    world: World, federation: Federation, unique: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hereon, geomar = (_node(world, federation, unique, s) for s in ("hereon", "geomar"))
    async with NodeDaemon(hereon), NodeDaemon(geomar):
        async with await connect(federation, OWNER, world.store.home) as fed:
            await wait_reachable(fed, "hereon", "climate")
            await wait_reachable(fed, "geomar", "climate")
            kept = await fed.submit("hereon.climate.scale", values=[1.0, 2.0], timeout=30)
            await kept.result()
            # across the secured leaves: klaus's own reference works
            ref = fed.ref("hereon", kept.request_id)
            assert await fed.call("geomar.climate.scale", values=ref, timeout=30) == [4.0, 8.0]
        async with await connect(federation, THIRD, world.store.home) as mallory:
            await wait_reachable(mallory, "geomar", "climate")
            with pytest.raises(NotFoundError):
                await mallory.submit("geomar.climate.scale", values=ref, timeout=30)

            status = await fed_status(federation, world, kept.request_id)

            # a hostile client names the reference (with the right hash) and shares nothing:
            # geomar's node was shared klaus's result for klaus's call, not for this one
            async def unshared(
                client: Client, kwargs: dict[str, Any], target: Any, request_id: str
            ) -> tuple[dict[str, Any], dict[str, ResultRef]]:
                rest = {k: v for k, v in kwargs.items() if not isinstance(v, Ref)}
                return rest, {"values": ResultRef(site="hereon", id=ref.request_id, hash=status)}

            monkeypatch.setattr(hub.client, "stage_refs", unshared)
            with pytest.raises(NotFoundError, match=f"no request {ref.request_id}"):
                await mallory.call("geomar.climate.scale", values=ref, timeout=30)
    view = LogView(geomar.log_path)
    assert view.counts()["request.completed"] == 1  # klaus's call; mallory's never ran
    assert [e["data"]["code"] for e in view.events("request.failed")] == ["not_found"]
    report = audit_node(geomar, world.site("geomar").sign_public)
    assert report.ok, [f.line() for f in report.findings]


async def fed_status(federation: Federation, world: World, rid: str) -> str:
    """The result hash hereon logged for klaus's request ``rid``."""
    async with await connect(federation, OWNER, world.store.home) as fed:
        record = await fed.requests("hereon")
    (found,) = [r for r in record if r.request_id == rid]
    assert found.result_hash is not None
    return found.result_hash


async def test_a_reference_to_a_tampered_stored_result_fails_the_call_with_an_integrity_error(
    world: World, federation: Federation, unique: Any
) -> None:
    hereon, geomar = (_node(world, federation, unique, s) for s in ("hereon", "geomar"))
    async with (
        NodeDaemon(hereon) as storing,
        NodeDaemon(geomar),
        await connect(federation, OWNER, world.store.home) as fed,
    ):
        await wait_reachable(fed, "hereon", "climate")
        await wait_reachable(fed, "geomar", "climate")
        kept = await fed.submit("hereon.climate.scale", values=[1.0, 2.0], timeout=30)
        await kept.result()
        assert storing.nc is not None
        js = storing.nc.jetstream()
        stored = await stored_result(js, kept.request_id)
        flipped = stored[:-1] + bytes([stored[-1] ^ 1])
        await put_object(js, RESULTS_BUCKET, kept.request_id, flipped)
        with pytest.raises(IntegrityError):
            await fed.call(
                "geomar.climate.scale", values=fed.ref("hereon", kept.request_id), timeout=30
            )
    assert LogView(geomar.log_path).counts()["request.completed"] == 0


async def test_only_a_node_its_own_site_vouched_for_and_shared_with_fetches_a_result(
    world: World, tmp_path: Path
) -> None:
    """The storing node checks a fetching node's key record against the pinned key of the
    node's site, and hands the result only to the node named in the owner's share, for
    the call it was shared for."""
    cfg = world.node_config(
        "hereon", trust=["geomar"], users=[OWNER], grants=[(OWNER, "climate", "*")]
    )
    n9, n8 = KeyPair.generate("node:geomar/n9"), KeyPair.generate("node:geomar/n8")
    geomar_key, hereon_key = world.site("geomar").signing_key, world.site("hereon").signing_key
    vouched = sign_record(key_record(n9, "geomar", "node"), geomar_key)
    async with NodeDaemon(cfg, grace=2) as node:
        async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
            kept = await fed.submit("hereon.climate.scale", values=[5.0], timeout=15)
            await kept.result()
            target = cast(Any, SimpleNamespace(  # what the module info of n9 would say
                node=n9.identity, node_kid=n9.kid, node_box_key=n9.box_public,
                info=SimpleNamespace(node_key=vouched),
            ))  # fmt: skip
            _, refs = await stage_refs(
                fed, {"x": fed.ref("hereon", kept.request_id)}, target, "r" * 22
            )
        assert refs is not None

        async def fetch(pair: KeyPair, record: SignedRecord, call: str = "r" * 22) -> bytes:
            return await _fetch_as_node(node.url, kept.request_id, pair, record, call)

        frame = unpack_reply(await fetch(n9, vouched))  # the node shared with
        assert frame.header.result_hash == refs["x"].hash and n9.kid in frame.header.wraps
        with pytest.raises(UnauthorizedError):  # vouched for by another site than its own
            await fetch(n9, sign_record(key_record(n9, "geomar", "node"), hereon_key))
        with pytest.raises(UnauthorizedError):  # a person's record is no node's
            await fetch(n9, sign_record(key_record(n9, "geomar", "user"), geomar_key))
        with pytest.raises(NotFoundError):  # the node, but for a call it was not shared for
            await fetch(n9, vouched, "s" * 22)
        with pytest.raises(NotFoundError):  # a genuine node nobody shared it with
            await fetch(n8, sign_record(key_record(n8, "geomar", "node"), geomar_key))
    fetched = LogView(cfg.log_path).events("result.fetched")
    assert [e["data"]["by"] for e in fetched] == [n9.identity]
    (shared,) = LogView(cfg.log_path).events("result.shared")
    assert (shared["data"]["principal"], shared["data"]["for_call"]) == (n9.identity, "r" * 22)


async def test_after_an_unshare_a_share_with_the_node_for_a_new_call_does_not_revive_the_old_one(
    world: World, tmp_path: Path
) -> None:
    """A share with a node covers the calls it names until the owner unshares the node;
    sharing with the same node again, for a new call, covers that call only."""
    cfg = world.node_config(
        "hereon", trust=["geomar"], users=[OWNER], grants=[(OWNER, "climate", "*")]
    )
    n9 = KeyPair.generate("node:geomar/n9")
    vouched = sign_record(key_record(n9, "geomar", "node"), world.site("geomar").signing_key)
    target = cast(Any, SimpleNamespace(  # what the module info of n9 would say
        node=n9.identity, node_kid=n9.kid, node_box_key=n9.box_public,
        info=SimpleNamespace(node_key=vouched),
    ))  # fmt: skip
    old, new = "a" * 22, "b" * 22
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(node.url, OWNER, home=world.store.home) as fed,
    ):
        kept = await fed.submit("hereon.climate.scale", values=[5.0], timeout=15)
        await kept.result()
        rid, ref = kept.request_id, {"x": fed.ref("hereon", kept.request_id)}
        await stage_refs(fed, ref, target, old)
        assert unpack_reply(await _fetch_as_node(node.url, rid, n9, vouched, old))
        await fed.unshare("hereon", rid, n9.identity)
        with pytest.raises(NotFoundError):
            await _fetch_as_node(node.url, rid, n9, vouched, old)
        await stage_refs(fed, ref, target, new)  # shared again, for a new call
        frame = unpack_reply(await _fetch_as_node(node.url, rid, n9, vouched, new))
        assert n9.kid in frame.header.wraps
        with pytest.raises(NotFoundError):  # the old call's share stays ended
            await _fetch_as_node(node.url, rid, n9, vouched, old)
    view = LogView(cfg.log_path)
    assert [e["data"]["for_call"] for e in view.events("result.shared")] == [old, new]
    assert len(view.events("result.unshared")) == 1
    assert len(view.events("result.fetched")) == 2


async def _fetch_as_node(
    url: str, rid: str, pair: KeyPair, record: SignedRecord, call: str
) -> bytes:
    """A catalog ``fetch`` of ``rid`` at hereon by node ``pair`` (key record ``record``)
    for the call ``call``: the result frame, or the typed error of the refusal."""
    header = CatalogHeader(
        op="fetch",
        id=rid,
        caller=pair.identity,
        kid=pair.kid,
        time=now(),
        nonce=b64e(secrets.token_bytes(12)),
        args={"node_key": record.model_dump(mode="json"), "for_call": call},
    )
    nc = await nats_connect(url)
    try:
        msg = await nc.request(
            status_subject("hereon"), pack_catalog(header, pair.signing_key), timeout=5
        )
    finally:
        await nc.close()
    error = error_from_headers(msg.headers)
    if error is not None:
        raise error
    return bytes(msg.data)
