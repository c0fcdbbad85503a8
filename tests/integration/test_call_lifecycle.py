"""What one call leaves in the node's log (log v2), and that no failure is silent.

A call is ``request.accepted`` (the caller's signed header, verbatim) then
``request.completed`` naming where its result is kept (plus ``request.progress`` when the
function reports it). A result too large for one message reaches the caller at once as an
OversizeError and is logged as failed; a result the node could not keep is logged as
``result.lost`` and status and fetch say so. A burst of calls is accepted in one commit. A
request a version 1 node received still ends exactly once after the upgrade.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import xarray as xr
from support.hostile import LogView, craft_request, wait_until
from support.world import CLIMATE, World

from hub.canonical import b64d, b64e, parse_canonical
from hub.client import Client
from hub.crypto import verify
from hub.envelopes import DOMAIN_REQUEST, parse_request_header, split_request
from hub.errors import FunctionFailedError, NotFoundError, OversizeError, TransportError
from hub.events import RequestReceived
from hub.lifecycle import RequestState, step
from hub.subjects import RESULTS_BUCKET
from node.config import NodeConfig
from node.daemon import NodeDaemon
from node.pipeline import Delivery, Job, Outcome

CALLER = "klaus@geomar"
BIG = 10 * 1000 * 1000  # bytes: above the default 8 MiB max_payload

BLOBS = '''"""Results of any size."""


def blob(size: int) -> bytes:
    """``size`` zero bytes."""
    return bytes(size)


def shout(size: int) -> int:
    """Raise an error whose message is ``size`` characters long."""
    raise ValueError("x" * size)
'''


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys: klaus at geomar, vouched by his site."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The blobs module's file (one path: a module is imported once per process)."""
    path = tmp_path_factory.mktemp("modules") / "blobs.py"
    path.write_text(BLOBS)
    return path


@pytest.fixture
def cfg(world: World, blobs: Path) -> NodeConfig:
    """A hereon node serving climate and blobs to klaus, with the default limits."""
    return world.node_config(
        "hereon",
        trust=["geomar"],
        users=[CALLER],
        modules=[("climate", CLIMATE), ("blobs", blobs)],
        grants=[(CALLER, "climate", "*"), (CALLER, "blobs", "*")],
    )


@pytest.fixture
async def node(cfg: NodeConfig) -> AsyncIterator[NodeDaemon]:
    """The node, running in this test's loop."""
    async with NodeDaemon(cfg, grace=2) as node:
        yield node


@pytest.fixture
async def fed(node: NodeDaemon, world: World) -> AsyncIterator[Client]:
    """Klaus's client, connected to the node's server."""
    async with await Client.connect(node.url, CALLER, home=world.store.home) as client:
        yield client


def _field() -> xr.DataArray:
    return xr.DataArray([[1.0, 2.0], [3.0, 4.0]], dims=("time", "lat"), name="t")


# --- what a call writes ---------------------------------------------------------------------


async def test_a_call_is_logged_as_accepted_with_the_signed_header_then_completed(
    fed: Client, cfg: NodeConfig, world: World
) -> None:
    handle = await fed.submit("hereon.climate.scale", values=[1.0, 2.0], factor=3.0)
    assert await handle.result(timeout=15) == [3.0, 6.0]
    events = LogView(cfg.log_path).for_request(handle.request_id)
    assert [e["type"] for e in events] == ["request.accepted", "request.completed"]
    accepted, completed = events
    header = b64d(accepted["header"])
    klaus = world.store.load(CALLER)
    verify(klaus.sign_public, DOMAIN_REQUEST, header, b64d(accepted["sig"]))  # verbatim
    signed = parse_canonical(header)
    assert signed["id"] == handle.request_id
    assert signed["caller"] == CALLER
    assert (signed["site"], signed["module"], signed["function"]) == ("hereon", "climate", "scale")
    assert sorted(accepted) == ["header", "request_id", "sig", "type"], (
        "who asked for what is in the signed header, and not repeated; delivery 1 is left out"
    )
    assert completed["object"] == handle.request_id, "names where the result is kept"
    assert completed["result_size"] > 0 and completed["duration_us"] >= 0


async def test_a_call_that_reports_progress_adds_only_progress_events(
    fed: Client, cfg: NodeConfig
) -> None:
    handle = await fed.submit("hereon.climate.slow_mean", da=_field(), steps=3)
    assert await handle.result(timeout=15) == 2.5
    kinds = [e["type"] for e in LogView(cfg.log_path).for_request(handle.request_id)]
    assert kinds[0] == "request.accepted" and kinds[-1] == "request.completed"
    assert set(kinds[1:-1]) == {"request.progress"}, kinds


# --- no failure is silent ----------------------------------------------------------------


async def test_a_result_too_large_for_one_message_reaches_the_caller_as_a_bulk_transfer(
    fed: Client, node: NodeDaemon, cfg: NodeConfig
) -> None:
    assert node.nc is not None and node.nc.max_payload < BIG
    handle = await fed.submit("hereon.blobs.blob", size=BIG, timeout=120)
    assert await handle.result(timeout=120) == bytes(BIG)
    events = LogView(cfg.log_path).for_request(handle.request_id)
    assert [e["type"] for e in events] == ["request.accepted", "request.completed"]
    status = await handle.status()
    assert (status.state, status.result_object) == (RequestState.COMPLETED, handle.request_id)
    assert await fed.call("hereon.blobs.blob", size=1000, timeout=15) == bytes(1000)


async def test_a_result_too_large_for_one_reply_below_the_bulk_threshold_fails_at_once(
    world: World, blobs: Path
) -> None:
    # an operator set the bulk threshold above what the server carries in one message:
    # the reply cannot travel, and the caller hears so at once, not at its deadline
    cfg = world.node_config(
        "hereon",
        trust=["geomar"],
        users=[CALLER],
        modules=[("blobs", blobs)],
        grants=[(CALLER, "blobs", "*")],
        calls={"bulk_threshold": 4 * BIG},
    )
    async with (
        NodeDaemon(cfg, grace=2) as node,
        await Client.connect(node.url, CALLER, home=world.store.home) as fed,
    ):
        handle = await fed.submit("hereon.blobs.blob", size=BIG, timeout=600)
        with pytest.raises(OversizeError, match="at most") as err:
            await handle.result(timeout=60)
        assert err.value.code == "oversize"
        status = await handle.status()
        assert (status.state, status.code) == (RequestState.FAILED, "oversize")
        with pytest.raises(NotFoundError, match="has no result: it is failed"):
            await fed.fetch("hereon", handle.request_id)
    kinds = [e["type"] for e in LogView(cfg.log_path).for_request(handle.request_id)]
    assert kinds == ["request.accepted", "request.failed"]


async def test_an_error_message_too_large_for_one_reply_still_reaches_the_caller_at_once(
    fed: Client, cfg: NodeConfig
) -> None:
    handle = await fed.submit("hereon.blobs.shout", size=BIG, timeout=600)
    with pytest.raises(FunctionFailedError, match="raised ValueError") as err:
        await handle.result(timeout=60)
    assert len(err.value.message) < 100_000
    status = await handle.status()
    assert (status.state, status.code) == (RequestState.FAILED, "function_failed")
    assert await fed.call("hereon.blobs.blob", size=10, timeout=15) == bytes(10)


async def test_a_caller_that_went_away_finds_the_outcome_in_status_and_fetch(
    node: NodeDaemon, cfg: NodeConfig, world: World
) -> None:
    # the reply goes to an inbox nobody listens on any more (core NATS drops it unseen):
    # the log and the store still hold the outcome for the caller's next session
    async with await Client.connect(node.url, CALLER, home=world.store.home) as gone:
        handle = await gone.submit("hereon.climate.sleep", seconds=0.5, timeout=30)
    rid = handle.request_id
    with pytest.raises(TransportError, match="closed before the answer"):
        await handle.result()
    await wait_until(
        lambda: "request.completed" in [e["type"] for e in LogView(cfg.log_path).for_request(rid)]
    )
    async with await Client.connect(node.url, CALLER, home=world.store.home) as back:
        status = await back.status("hereon", rid)
        assert (status.state, status.result_object) == (RequestState.COMPLETED, rid)
        assert await back.fetch("hereon", rid) == 0.5


async def test_a_result_the_node_could_not_keep_is_logged_as_lost_and_status_says_so(
    fed: Client, node: NodeDaemon, cfg: NodeConfig
) -> None:
    assert node.nc is not None
    await node.nc.jetstream().delete_stream(f"OBJ_{RESULTS_BUCKET}")  # the store is gone
    handle = await fed.submit("hereon.climate.scale", values=[2.0], factor=2.0)
    assert await handle.result(timeout=15) == [4.0], "the caller still gets its result"
    status = await handle.status()
    assert status.state == RequestState.COMPLETED
    assert status.result_object is None
    assert (status.reason or "").startswith("result not kept: storing it failed"), status
    kinds = [e["type"] for e in LogView(cfg.log_path).for_request(handle.request_id)]
    assert kinds == ["request.accepted", "request.completed", "result.lost"]
    with pytest.raises(NotFoundError, match=r"no copy of the result .* was kept"):
        await fed.fetch("hereon", handle.request_id)


async def test_the_reply_is_handed_to_the_socket_before_the_result_is_stored(
    fed: Client, node: NodeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued with the store's publishes, the reply would leave the server only after
    both were stored: it must already be written when the store begins."""
    assert node.pipeline is not None and node.nc is not None
    nc, replies, results = node.nc, node.pipeline.replies, node.pipeline.results
    sent: list[bytes] = []
    still_queued: list[bool] = []
    stored = asyncio.Event()
    send, keep = replies._send, results.keep

    async def recording_send(subject: str, data: bytes) -> None:
        sent.append(data)
        await send(subject, data)

    async def checking_keep(*args: Any) -> None:
        queued = b"".join(nc._pending)
        still_queued.append(any(frame in queued for frame in sent))
        await keep(*args)
        stored.set()

    monkeypatch.setattr(replies, "_send", recording_send)
    monkeypatch.setattr(results, "keep", checking_keep)
    assert await fed.call("hereon.climate.scale", values=[2.0], factor=2.0) == [4.0]
    async with asyncio.timeout(10):  # the store follows the reply
        await stored.wait()
    assert len(sent) == 1
    assert still_queued == [False], "the reply still waited in the client's buffer"


# --- a burst is one unit ------------------------------------------------------------------


async def test_the_calls_of_one_burst_are_accepted_in_one_log_commit(
    node: NodeDaemon, cfg: NodeConfig, world: World
) -> None:
    assert node.pipeline is not None and node.eventlog is not None
    key = node.eventlog.key
    klaus = world.store.load(CALLER)
    crafted = [
        craft_request(
            klaus,
            node_kid=key.kid,
            node_box_key=key.box_public,
            address="hereon.climate.scale",
            kwargs={"values": [float(i)]},
        )
        for i in range(8)
    ]
    taken = await node.pipeline.take([Delivery(c.data, c.subject) for c in crafted])
    assert all(isinstance(t, Job) for t in taken), taken
    for job in taken:
        assert isinstance(job, Job)
        assert (await node.pipeline.run(job)).state == RequestState.COMPLETED
    rows = _rows(cfg.log_path)
    rids = {c.request_id for c in crafted}
    accepted = [seq for seq, kind, rid, _ in rows if kind == "request.accepted" and rid in rids]
    assert accepted == list(range(accepted[0], accepted[0] + 8)), "one run of events"
    signed = {seq for seq, _, _, sig in rows if sig}
    # v2: only the last event of a commit is signed; so the burst is one commit exactly
    assert accepted[0] - 1 in signed, "a commit ended just before the burst"
    assert [seq in signed for seq in accepted] == [False] * 7 + [True]


async def test_two_requests_with_one_id_in_a_burst_are_accepted_once_then_refused(
    node: NodeDaemon, cfg: NodeConfig, world: World
) -> None:
    """Signed by the caller, with their own nonces, but one id: the log keeps one request."""
    assert node.pipeline is not None and node.eventlog is not None
    key = node.eventlog.key
    klaus = world.store.load(CALLER)
    twins = [
        craft_request(
            klaus,
            node_kid=key.kid,
            node_box_key=key.box_public,
            address="hereon.climate.scale",
            kwargs={"values": [float(i)]},
            request_id="one-id-for-two-requests",
        )
        for i in range(2)
    ]
    first, second = await node.pipeline.take([Delivery(c.data, c.subject) for c in twins])
    assert isinstance(first, Job)
    assert isinstance(second, Outcome)
    assert (second.state, second.code) == (RequestState.REJECTED, "replay")
    assert (await node.pipeline.run(first)).state == RequestState.COMPLETED
    events = LogView(cfg.log_path).for_request("one-id-for-two-requests")
    assert [e["type"] for e in events] == [
        "request.accepted",
        "request.rejected",
        "request.completed",
    ]
    state: RequestState | None = None
    for e in events:  # every step legal
        state = step(state, e["type"], request_id="one-id-for-two-requests") or state
    assert state == RequestState.COMPLETED


def _rows(path: Path) -> list[tuple[int, str, str | None, bytes]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [
            (
                int(seq),
                str(kind),
                parse_canonical(bytes(body))["data"].get("request_id"),
                bytes(sig),
            )
            for seq, kind, body, sig in conn.execute(
                "SELECT seq, type, body, sig FROM events ORDER BY seq"
            )
        ]
    finally:
        conn.close()


# --- a request a version 1 node received ----------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "after"),
    [
        ("retry", [("request.accepted", None), ("request.completed", None)]),
        ("fail", [("request.failed", "interrupted")]),
    ],
)
async def test_a_request_received_before_the_upgrade_and_redelivered_ends_exactly_once(
    world: World, blobs: Path, policy: str, after: list[tuple[str, str | None]]
) -> None:
    """The previous release logged ``request.received`` and died before accepting it; the
    upgraded node gets the redelivery. (The received event is appended here by today's
    writer: what the pipeline sees is the same, a request in state ``received``.)"""
    cfg = world.node_config(
        "hereon",
        trust=["geomar"],
        users=[CALLER],
        modules=[("climate", CLIMATE)],
        grants=[(CALLER, "climate", "*")],
        calls={"interrupted": policy},
    )
    async with NodeDaemon(cfg, grace=2) as node:
        assert node.pipeline is not None and node.eventlog is not None and node.writer
        key = node.eventlog.key
        call = craft_request(
            world.store.load(CALLER),
            node_kid=key.kid,
            node_box_key=key.box_public,
            address="hereon.climate.scale",
            kwargs={"values": [1.0]},
        )
        header_bytes, sig, ciphertext = split_request(call.data)
        header = parse_request_header(header_bytes)
        await node.writer.append(
            RequestReceived(
                request_id=call.request_id,
                caller=CALLER,
                address=header.address,
                header=b64e(header_bytes),
                sig=b64e(sig),
                nonce=header.nonce,
                payload_hash=header.payload_hash,
                payload_size=len(ciphertext),
            )
        )
        state = await node.pipeline.request_state(call.request_id)
        assert state is not None and state["state"] == RequestState.RECEIVED

        first = await node.pipeline.handle(call.data, call.subject, delivery=2)
        again = await node.pipeline.handle(call.data, call.subject, delivery=3)
        replayed = await node.pipeline.handle(call.data, call.subject, delivery=1)

    assert first.state == (RequestState.COMPLETED if policy == "retry" else RequestState.FAILED)
    assert (again.state, again.code) == ("duplicate", first.state)
    assert (replayed.state, replayed.code) == (RequestState.REJECTED, "replay")
    events = LogView(cfg.log_path).for_request(call.request_id)
    kinds = [(e["type"], e.get("code")) for e in events]
    assert kinds == [("request.received", None), *after, ("request.rejected", "replay")]
    state_now: RequestState | None = None
    for i, e in enumerate(events):  # every step legal, one end
        version = 1 if i == 0 else 2
        state_now = step(state_now, e["type"], version, request_id=call.request_id) or state_now
    assert state_now == first.state
