"""Large (bulk) kept results as arguments of other calls, by reference.

A result above the bulk threshold is kept as chunk-sealed ciphertext; passed by reference,
the target node fetches it straight from the storing node as a bulk transfer on the two
sites' ``fh.bulk`` subjects, checks the whole against the hash the storing site logged,
and hands the function a NetCDF file opened lazily from its spool folder (or the decoded
value of a codec payload). The caller, at a third site, sends no data: spies in every
account see no plaintext, and none of the transfers between the nodes reaches the
caller's site. Someone else's large result and a tampered one are refused with a typed
error, and the function never runs. The thresholds are lowered so that 2 MiB takes the
path a GiB takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from support.bulk import BULKDATA, MiB
from support.hostile import LogView, Spy, audit_node, wait_reachable
from support.results import OWNER, connect, federation_node, people_world, stored_result
from support.world import World

import hub.client
from hub.canonical import b64d, parse_canonical
from hub.client import Client
from hub.envelopes import ResultRef
from hub.errors import IntegrityError, NotFoundError
from hub.nats import connect as nats_connect
from hub.nats import put_object
from hub.refs import Ref
from hub.subjects import RESULTS_BUCKET
from node.config import NodeConfig
from node.daemon import NodeDaemon

if TYPE_CHECKING:
    from conftest import Federation

FAR = "anna@awi"  # a caller at a site that runs no node
THIRD = "mallory@awi"
PEOPLE = (OWNER, FAR, THIRD)
SITES = ("hereon", "geomar", "awi")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return people_world(tmp_path, PEOPLE)


def _node(world: World, fed: Federation, unique: Any, site: str) -> NodeConfig:
    return federation_node(
        world,
        fed,
        unique,
        site,
        PEOPLE,
        grants=[(who, "bulk", "*") for who in PEOPLE],
        modules=[("bulk", BULKDATA)],
        calls={"ack_wait": 2, "bulk_threshold": MiB},
    )


async def _connect(fed: Federation, identity: str, world: World) -> Client:
    client = await connect(fed, identity, world.store.home)
    client.bulk_threshold = MiB
    return client


def _spool_files(cfg: NodeConfig) -> list[Path]:
    return [p for p in (cfg.node.data_dir / "spool").rglob("*") if p.is_file()]


def _needles(values: np.ndarray[Any, Any]) -> list[bytes]:
    """Stretches of an array's bytes, as a NetCDF3 file (big-endian) and in memory hold them."""
    at = [0, len(values) // 3, len(values) - 8]
    return [values[i : i + 8].astype(order).tobytes() for i in at for order in (">f8", "<f8")]


async def test_a_chain_of_three_calls_passes_a_large_middle_result_between_the_nodes_only(
    world: World, open_federation: Federation, unique: Any
) -> None:
    fed_ = open_federation
    hereon, geomar = (_node(world, fed_, unique, s) for s in ("hereon", "geomar"))
    urls = {"hub": fed_.hub_url} | {s: fed_.site_url(s) for s in SITES}
    conns = {
        name: await nats_connect(url, **(fed_.hub_options() if name == "hub" else {}))
        for name, url in urls.items()
    }
    try:
        spies = {name: await Spy(nc).start() for name, nc in conns.items()}
        async with (
            NodeDaemon(hereon),
            NodeDaemon(geomar),
            await _connect(fed_, FAR, world) as fed,
        ):
            await wait_reachable(fed, "hereon", "bulk")
            await wait_reachable(fed, "geomar", "bulk")
            # 1: geomar makes a 2 MiB field, kept in bulk
            first = await fed.submit("geomar.bulk.field", mib=2, timeout=60)
            made = await first.result()
            big = fed.ref("geomar", first.request_id)
            lazy = await fed.submit("hereon.bulk.inspect", da=big, timeout=60)
            # 2 (the large middle step): hereon takes it by reference and shifts it
            second = await fed.submit("hereon.bulk.shift", da=big, by=1.5, timeout=60)
            await second.result()
            # 3: geomar sums that, taking it back by reference
            third = await fed.submit(
                "geomar.bulk.total", da=fed.ref("hereon", second.request_id), timeout=60
            )
            seen = await lazy.result()
            total = await third.result()
            lineage = await fed.provenance("geomar", third.request_id)
            for nc in conns.values():
                await nc.flush()
    finally:
        for nc in conns.values():
            await nc.close()
    n = 2 * MiB // 8
    field = np.arange(n, dtype="float64")
    assert made.size == n and float(made[-1]) == n - 1
    assert seen == {"lazy": True, "size": n, "first": 0.0}  # opened lazily from the spool
    assert total == float((field + 1.5).sum())
    # no plaintext anywhere; the referenced results crossed between the nodes' sites only
    needles = _needles(field) + _needles(field + 1.5)
    assert [(name, leak) for name, spy in spies.items() for leak in spy.leaks(needles)] == []
    assert spies["hereon"].on("fh.bulk.hereon.") and spies["geomar"].on("fh.bulk.hereon.")
    assert spies["geomar"].on("fh.bulk.geomar.") and spies["hereon"].on("fh.bulk.geomar.")
    between = [m.subject for m in spies["awi"].seen if m.subject.endswith(("-in", "-out"))]
    assert between == [], "a transfer between the nodes reached the caller's site"
    for cfg in (hereon, geomar):
        for accepted in LogView(cfg.log_path).events("request.accepted"):
            header = parse_canonical(b64d(accepted["data"]["header"]))
            assert "bulk" not in header, "the caller uploaded nothing in bulk"
        assert _spool_files(cfg) == [], "the spooled references were removed"
    # the storing sites logged the share with the target node and its fetch
    view = LogView(geomar.log_path)
    fetched = [(e["data"]["request_id"], e["data"]["by"]) for e in view.events("result.fetched")]
    assert fetched == [(first.request_id, hereon.identity)] * 2
    (fetched_at_hereon,) = LogView(hereon.log_path).events("result.fetched")
    assert fetched_at_hereon["data"]["by"] == geomar.identity
    chain = [lineage, lineage.earlier[0], lineage.earlier[0].earlier[0]]
    assert [(p.site, p.request_id) for p in chain] == [
        ("geomar", third.request_id),
        ("hereon", second.request_id),
        ("geomar", first.request_id),
    ]
    for cfg in (hereon, geomar):
        report = audit_node(cfg, world.site(cfg.node.site).sign_public)
        assert report.ok, [f.line() for f in report.findings]


async def test_across_secured_leaves_a_large_codec_result_is_passed_to_another_site_and_the_same(
    world: World, federation: Federation, unique: Any
) -> None:
    hereon, geomar = (_node(world, federation, unique, s) for s in ("hereon", "geomar"))
    async with (
        NodeDaemon(hereon),
        NodeDaemon(geomar),
        await _connect(federation, OWNER, world) as fed,
    ):
        await wait_reachable(fed, "hereon", "bulk")
        await wait_reachable(fed, "geomar", "bulk")
        blob = await fed.submit("hereon.bulk.blob", size=2 * MiB + 3, timeout=60)
        assert len(await blob.result()) == 2 * MiB + 3
        ref = fed.ref("hereon", blob.request_id)
        there = await fed.call("geomar.bulk.count", data=ref, timeout=60)
        here = await fed.call("hereon.bulk.count", data=ref, timeout=60)
    assert there == here == 2 * MiB + 3
    fetched = LogView(hereon.log_path).events("result.fetched")
    assert [e["data"]["by"] for e in fetched] == [geomar.identity, hereon.identity]
    assert _spool_files(hereon) == _spool_files(geomar) == []


async def test_someone_elses_large_result_and_a_tampered_one_are_refused_and_nothing_runs(
    world: World, federation: Federation, unique: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hereon, geomar = (_node(world, federation, unique, s) for s in ("hereon", "geomar"))
    async with NodeDaemon(hereon) as storing, NodeDaemon(geomar):
        async with await _connect(federation, OWNER, world) as fed:
            await wait_reachable(fed, "geomar", "bulk")
            kept = await fed.submit("hereon.bulk.blob", size=2 * MiB, timeout=60)
            await kept.result()
            ref = fed.ref("hereon", kept.request_id)
            (record,) = [r for r in await fed.requests("hereon") if r.request_id == ref.request_id]
        async with await _connect(federation, THIRD, world) as mallory:
            await wait_reachable(mallory, "geomar", "bulk")
            with pytest.raises(NotFoundError):  # asked for the wrap: not hers
                await mallory.submit("geomar.bulk.count", data=ref, timeout=30)

            # a hostile client names klaus's result (with the right hash) and shares nothing
            async def unshared(
                client: Client, kwargs: dict[str, Any], target: Any, request_id: str
            ) -> tuple[dict[str, Any], dict[str, ResultRef]]:
                rest = {k: v for k, v in kwargs.items() if not isinstance(v, Ref)}
                assert record.result_hash is not None
                named = ResultRef(site="hereon", id=ref.request_id, hash=record.result_hash)
                return rest, {"data": named}

            with monkeypatch.context() as patch:
                patch.setattr(hub.client, "stage_refs", unshared)
                with pytest.raises(NotFoundError, match=f"no request {ref.request_id}"):
                    await mallory.call("geomar.bulk.count", data=ref, timeout=30)
        # one chunk of the kept ciphertext flipped: the whole does not verify at geomar
        assert storing.nc is not None
        js = storing.nc.jetstream()
        stored = await stored_result(js, kept.request_id)
        at = len(stored) - 100
        flipped = stored[:at] + bytes([stored[at] ^ 1]) + stored[at + 1 :]
        await put_object(js, RESULTS_BUCKET, kept.request_id, flipped)
        async with await _connect(federation, OWNER, world) as fed:
            with pytest.raises(IntegrityError, match="does not match the hash its site logged"):
                await fed.call("geomar.bulk.count", data=ref, timeout=30)
    view = LogView(geomar.log_path)
    assert view.counts()["request.completed"] == 0  # neither call ran its function
    assert [e["data"]["code"] for e in view.events("request.failed")] == ["not_found", "integrity"]
    assert _spool_files(geomar) == []
    report = audit_node(geomar, world.site("geomar").sign_public)
    assert report.ok, [f.line() for f in report.findings]
