"""Provenance of a result: the node's events of the request with proofs of inclusion in
its signed log, checked by the client against the pinned site key; the same events the
audit of the whole log accepts; refused to a third person, and failing cleanly for a
client that pins another key for the site."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.hostile import LogView, wait_reachable
from support.results import COLLEAGUE, OWNER, THIRD, audit_clean
from support.world import CLIMATE, World

from hub.canonical import parse_canonical
from hub.chain import leaf_hash
from hub.client import Client
from hub.crypto import blake2b_256
from hub.errors import IntegrityError, NotFoundError
from hub.keys import KeyStore
from hub.logfile import iter_log
from hub.proofs import verify_event_proof
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation


async def test_the_lineage_is_read_from_proven_events_that_the_audit_of_the_log_accepts(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[1.0, 2.0], timeout=15)
        await handle.result()
        rid = handle.request_id
        status = await fed.status("hereon", rid)
        lineage = await fed.provenance("hereon", rid)
    assert (lineage.caller, lineage.address, lineage.site) == (
        OWNER,
        "hereon.climate.scale",
        "hereon",
    )
    assert lineage.result == {"hash": status.result_hash, "size": status.result_size}
    assert lineage.inputs["payload_hash"] and lineage.inputs["payload_size"]
    assert lineage.schema_hash
    # the process that ran it (with the hash of the code it loaded), then the call
    assert [s.type for s in lineage.steps] == [
        "node.started",
        "request.accepted",
        "request.completed",
    ]
    assert lineage.code_hash == blake2b_256(CLIMATE.read_bytes()).hex()
    assert lineage.received_time is not None and lineage.ended_time is not None
    # every step is the event at that place of the node's log, and the log audits clean
    bodies = {int(parse_canonical(e.body)["seq"]): e.body for e in iter_log(cfg.log_path)}
    for step, proof in zip(lineage.steps, lineage.proofs, strict=True):
        assert leaf_hash(bodies[step.seq]).hex() == step.hash
        verdict = verify_event_proof(proof, {"hereon": world.site("hereon").sign_public})
        assert (verdict.seq, verdict.type) == (step.seq, step.type)
    audit_clean(cfg, world)
    assert "flowchart LR" in lineage.mermaid() and "digraph provenance" in lineage.dot()


async def test_a_reader_of_a_shared_result_gets_its_provenance_and_a_third_person_does_not(
    node: NodeDaemon, world: World
) -> None:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[3.0], timeout=15)
        await handle.result()
        rid = handle.request_id
        await fed.share("hereon", rid, COLLEAGUE)
        await fed.tag("hereon", rid, ["private-note"])
        owners = await fed.provenance("hereon", rid)
    async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
        lineage = await anna.provenance("hereon", rid)
    assert lineage.caller == OWNER
    # the owner sees what was done with the result; a reader only the call itself
    assert [s.type for s in owners.steps] == [
        "node.started",
        "request.accepted",
        "request.completed",
        "result.shared",
        "result.tagged",
    ]
    assert [s.type for s in lineage.steps] == [
        "node.started",
        "request.accepted",
        "request.completed",
    ]
    async with await Client.connect(node.url, THIRD, home=world.store.home) as mallory:
        with pytest.raises(NotFoundError):
            await mallory.provenance("hereon", rid)


async def test_proofs_signed_by_another_key_than_the_pinned_site_key_fail_cleanly(
    node: NodeDaemon, world: World, tmp_path: Path
) -> None:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[4.0], timeout=15)
        await handle.result()
    fooled = KeyStore(tmp_path / "fooled")
    fooled.save(world.store.load(OWNER))
    fooled.import_public(world.store.public("site:geomar"))
    fooled.create("site:hereon")  # pins a key that is not hereon's
    async with await Client.connect(node.url, OWNER, home=fooled.home) as fed:
        with pytest.raises(IntegrityError):
            await fed.provenance("hereon", handle.request_id)


async def test_the_process_that_ran_a_call_is_proven_across_restarts_and_an_older_one_is_refused(
    world: World, cfg: NodeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rids = []
    for _ in range(2):  # two processes of the node, one call each
        async with (
            NodeDaemon(cfg, grace=2) as node,
            await Client.connect(node.url, OWNER, home=world.store.home) as fed,
        ):
            handle = await fed.submit("hereon.climate.scale", values=[5.0], timeout=15)
            await handle.result()
            rids.append(handle.request_id)
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(node.url, OWNER, home=world.store.home) as fed,
    ):
        first, second = [await fed.provenance("hereon", rid) for rid in rids]
        assert first.code_proven is second.code_proven is True
        assert first.steps[0].seq < second.steps[0].seq  # each call its own process
        assert "not proven" not in "\n".join(first.lines())
        # a node that names an earlier process than the one that ran the second call
        assert node.pipeline is not None
        eventlog = node.pipeline.writer.eventlog
        earlier = eventlog.started_before(first.steps[1].seq)
        monkeypatch.setattr(eventlog, "started_before", lambda seq: earlier)
        with pytest.raises(IntegrityError, match=r"names node\.started"):
            await fed.provenance("hereon", rids[1])
    started = [e for e in iter_log(cfg.log_path) if b'"type":"node.started"' in e.body]
    assert len(started) == 3
    audit_clean(cfg, world)


async def test_after_a_node_is_killed_its_next_process_still_proves_which_one_ran_a_call(
    world: World, open_federation: Federation, unique: Any
) -> None:
    cfg = world.node_config(
        "hereon",
        name=unique("n").replace("_", "-"),
        nats_url=open_federation.site_url("hereon"),
        trust=["geomar"],
        users=[OWNER],
        grants=[(OWNER, "climate", "*")],
        calls={"ack_wait": 2},
    )
    url, home = open_federation.site_url("geomar"), world.store.home
    killed = await asyncio.to_thread(world.spawn_node, cfg)
    try:
        async with await Client.connect(url, OWNER, home=home) as fed:
            await wait_reachable(fed, "hereon", "climate")
            handle = await fed.submit("hereon.climate.scale", values=[6.0], timeout=15)
            await handle.result()
    finally:
        await asyncio.to_thread(killed.kill)  # no node.stopped, no closing checkpoint
    async with NodeDaemon(cfg, grace=2), await Client.connect(url, OWNER, home=home) as fed:
        await wait_reachable(fed, "hereon", "climate")
        lineage = await fed.provenance("hereon", handle.request_id)
    assert lineage.code_proven is True
    starts = [int(e["seq"]) for e in LogView(cfg.log_path).events("node.started")]
    assert lineage.steps[0].seq == starts[0] < lineage.steps[1].seq < starts[1]
