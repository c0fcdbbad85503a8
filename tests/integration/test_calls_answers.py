"""The node's service answers as any NATS client sees them: typed models, and errors the
NATS micro way (``Nats-Service-Error`` / ``Nats-Service-Error-Code`` headers, empty body)
with fedhub's own code beside them, which a fedhub client turns into the same typed error
as a call's error reply.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from support.hostile import LogView
from support.world import World

from hub.answers import (
    CODE_HEADER,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    AdminAnswer,
    ModuleDescription,
    RequestStatus,
)
from hub.canonical import b64e, canonical_bytes
from hub.client import Client
from hub.clock import format_time, now
from hub.crypto import sign
from hub.envelopes import CONTROL_MAGIC, DOMAIN_CONTROL, ControlHeader, pack_control
from hub.errors import NotFoundError, UnauthorizedError
from hub.lifecycle import RequestState
from hub.nats import connect as nats_connect
from hub.records import Revocation, sign_record
from hub.subjects import admin_subject, info_subject, status_subject
from node.admin import admin_message
from node.config import NodeConfig
from node.daemon import NodeDaemon, _respond

CALLER = "klaus@geomar"
STRANGER = "mallory@geomar"
OTHER = "eve@geomar"


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Keys: klaus and eve (registered at the node) and mallory (vouched by geomar, not
    registered)."""
    w = World(tmp_path / "world")
    w.person(CALLER)
    w.person(OTHER)
    w.person(STRANGER)
    return w


@pytest.fixture
def cfg(world: World) -> NodeConfig:
    """A hereon node on its own embedded server; klaus may call all of climate."""
    return world.node_config(
        "hereon", trust=["geomar"], users=[CALLER, OTHER], grants=[(CALLER, "climate", "*")]
    )


@pytest.fixture
async def node(cfg: NodeConfig) -> AsyncIterator[NodeDaemon]:
    """The node, running in this test's loop."""
    async with NodeDaemon(cfg, grace=2) as node:
        yield node


@pytest.fixture
async def raw(node: NodeDaemon) -> AsyncIterator[NatsClient]:
    """A plain nats-py connection to the node's server."""
    nc = await nats_connect(node.url)
    yield nc
    await nc.close()


def control(world: World, who: str, op: str, request_id: str, *, sent: str = "") -> bytes:
    """A control message signed by ``who``'s real key (sent now, or at ``sent``)."""
    keys = world.store.load(who)
    header = ControlHeader(
        op=op,
        id=request_id,
        caller=who,
        kid=keys.kid,
        time=sent or now(),
        nonce=b64e(secrets.token_bytes(12)),
    )
    return pack_control(header, keys.signing_key)


def signed_frame(world: World, who: str, header: object) -> bytes:
    """A control frame whose header is ``header`` (any JSON value), signed by ``who``."""
    body = canonical_bytes(header)
    sig = sign(world.store.load(who).signing_key, DOMAIN_CONTROL, body)
    return CONTROL_MAGIC + len(body).to_bytes(4, "big") + body + sig


def frame_with(data: bytes, header: bytes) -> bytes:
    """``data``'s control frame with another header in it (the signature kept)."""
    return CONTROL_MAGIC + len(header).to_bytes(4, "big") + header + data[-64:]


async def refused(raw: NatsClient, data: bytes) -> tuple[str, str, str]:
    """(status, fedhub code, description) of the node's error answer to ``data``."""
    msg = await raw.request(status_subject("hereon"), data, timeout=5)
    assert msg.data == b"", "an error answer has an empty body"
    assert msg.headers is not None, "an error is answered, not left unanswered"
    return msg.headers[ERROR_CODE_HEADER], msg.headers[CODE_HEADER], msg.headers[ERROR_HEADER]


async def test_a_status_request_for_an_unknown_request_is_a_404_with_nats_micro_headers(
    world: World, raw: NatsClient
) -> None:
    msg = await raw.request(
        status_subject("hereon"), control(world, CALLER, "status", "A" * 22), timeout=5
    )
    assert msg.data == b""
    assert msg.headers is not None
    assert msg.headers[ERROR_CODE_HEADER] == "404"
    assert msg.headers[CODE_HEADER] == "not_found"
    assert "A" * 22 in msg.headers[ERROR_HEADER]


async def test_a_control_message_from_an_unregistered_caller_is_a_401(
    world: World, raw: NatsClient
) -> None:
    msg = await raw.request(
        status_subject("hereon"), control(world, STRANGER, "status", "A" * 22), timeout=5
    )
    assert msg.headers is not None
    assert (msg.headers[ERROR_CODE_HEADER], msg.headers[CODE_HEADER]) == ("401", "unauthorized")


async def test_garbage_on_the_control_subject_is_refused_with_headers_not_silence(
    raw: NatsClient,
) -> None:
    status, code, text = await refused(raw, b"not a control message")
    assert (status, code) == ("400", "invalid_arguments")
    assert text == "malformed control message: not a fedhub control message"


def _time_ago(seconds: float) -> str:
    return format_time(datetime.now(UTC) - timedelta(seconds=seconds))


async def test_each_malformed_or_forged_control_message_gets_one_typed_error_a_person_can_read(
    world: World, raw: NatsClient, node: NodeDaemon
) -> None:
    good = control(world, CALLER, "status", "A" * 22)
    klaus = world.store.load(CALLER)
    fields = {"op": "status", "id": "A" * 22, "caller": CALLER, "kid": klaus.kid}
    other_header = control(world, CALLER, "status", "C" * 22)[8:-64]
    cases = {
        "header not JSON": (frame_with(good, b"{not json"), "400", "invalid_arguments"),
        "header not an object": (signed_frame(world, CALLER, [1, 2]), "400", "invalid_arguments"),
        "no caller": (signed_frame(world, CALLER, {"op": "status"}), "400", "invalid_arguments"),
        "caller of the wrong type": (
            signed_frame(world, CALLER, {**fields, "caller": 7}),
            "400",
            "invalid_arguments",
        ),
        "length beyond the frame": (
            good[:4] + b"\xff\xff\xff\xff" + good[8:],
            "400",
            "invalid_arguments",
        ),
        "huge header": (
            frame_with(good, b'{"pad":"' + b"x" * 200_000 + b'"}'),
            "400",
            "invalid_arguments",
        ),
        "a signature over another header": (frame_with(good, other_header), "401", "unauthorized"),
        "an unregistered key": (
            control(world, STRANGER, "status", "A" * 22),
            "401",
            "unauthorized",
        ),
        "a kid of someone else": (
            signed_frame(world, CALLER, {**fields, "caller": OTHER}),
            "401",
            "unauthorized",
        ),
        "signed, an unknown op": (
            signed_frame(
                world,
                CALLER,
                {**fields, "op": "explode", "v": 1, "time": now(), "nonce": b64e(b"n" * 12)},
            ),
            "400",
            "invalid_arguments",
        ),
        "signed, a nonce that is no base64": (
            signed_frame(world, CALLER, {**fields, "v": 1, "time": now(), "nonce": "*&^%"}),
            "400",
            "invalid_arguments",
        ),
        "sent an hour ago": (
            control(world, CALLER, "status", "A" * 22, sent=_time_ago(3600)),
            "409",
            "replay",
        ),
    }
    for what, (data, status, code) in cases.items():
        got_status, got_code, text = await refused(raw, data)
        assert (got_status, got_code) == (status, code), (what, text)
        assert text and len(text) <= 1000 and "'" + "caller'" not in text, (what, text)
        assert "control message" in text or "key" in text, (what, text)
    # the node serves on: a well-formed status is answered as before
    assert (await refused(raw, good))[:2] == ("404", "not_found")


async def test_a_captured_control_message_sent_again_is_refused_as_a_replay(
    world: World, node: NodeDaemon, raw: NatsClient, cfg: NodeConfig
) -> None:
    async with await Client.connect(node.url, CALLER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[1.0], timeout=15)
        assert await handle.result() == [2.0]
    fetch = control(world, CALLER, "fetch", handle.request_id)
    first = await raw.request(status_subject("hereon"), fetch, timeout=5)
    assert first.headers is None or ERROR_HEADER not in first.headers, first.headers
    status, code, text = await refused(raw, fetch)
    assert (status, code) == ("409", "replay")
    assert f"fetch of {handle.request_id}" in text and "used before" in text
    fetched = LogView(cfg.log_path).events("result.fetched")
    assert len(fetched) == 1, "the log says klaus fetched it once: the replay logged nothing"


async def test_a_control_message_about_someone_elses_request_reads_as_an_unknown_request(
    world: World, node: NodeDaemon, raw: NatsClient
) -> None:
    async with await Client.connect(node.url, CALLER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[1.0], timeout=15)
        assert await handle.result() == [2.0]
    rid = handle.request_id
    for op in ("status", "fetch", "cancel"):
        status, code, text = await refused(raw, control(world, OTHER, op, rid))
        assert (status, code) == ("404", "not_found"), (op, text)
        assert text == f"no request {rid} of {OTHER} at this node"


async def test_a_malformed_admin_message_is_a_400_and_a_forged_revocation_a_401(
    world: World, raw: NatsClient
) -> None:
    bad = await raw.request(admin_subject("hereon"), b"{}", timeout=5)
    assert bad.headers is not None
    assert (bad.headers[ERROR_CODE_HEADER], bad.headers[CODE_HEADER]) == (
        "400",
        "invalid_arguments",
    )
    klaus = world.store.load(CALLER)
    forged = sign_record(
        Revocation(identity=CALLER, kid=klaus.kid, time=now(), reason="forged"),
        world.store.load(STRANGER).signing_key,
    )
    refused = await raw.request(admin_subject("hereon"), admin_message("revoke", forged), timeout=5)
    assert refused.headers is not None
    assert (refused.headers[ERROR_CODE_HEADER], refused.headers[CODE_HEADER]) == (
        "401",
        "unauthorized",
    )


async def _revoke_klaus(world: World, raw: NatsClient) -> Msg:
    """Klaus's key revoked by his site ("left"), sent to hereon's admin service; its answer."""
    revocation = sign_record(
        Revocation(identity=CALLER, kid=world.store.load(CALLER).kid, time=now(), reason="left"),
        world.site("geomar").signing_key,
    )
    return await raw.request(
        admin_subject("hereon"), admin_message("revoke", revocation), timeout=5
    )


async def test_a_revocation_by_the_callers_site_is_answered_with_an_admin_answer(
    world: World, raw: NatsClient
) -> None:
    klaus = world.store.load(CALLER)
    msg = await _revoke_klaus(world, raw)
    assert not msg.headers or ERROR_CODE_HEADER not in msg.headers
    answer = AdminAnswer.model_validate_json(msg.data)
    assert (answer.op, answer.kid) == ("revoke", klaus.kid)


async def test_a_control_message_signed_with_a_revoked_key_is_a_401_naming_the_revocation(
    world: World, raw: NatsClient
) -> None:
    klaus = world.store.load(CALLER)
    await _revoke_klaus(world, raw)
    status, code, text = await refused(raw, control(world, CALLER, "status", "A" * 22))
    assert (status, code) == ("401", "unauthorized")
    assert f"key {klaus.kid} of {CALLER} was revoked" in text and "left" in text


async def test_an_answer_too_large_for_one_message_is_told_as_a_413_not_left_to_time_out(
    raw: NatsClient,
) -> None:
    # e.g. a catalog answer about a very long history: the service's publish is refused
    # by the client library, and without an answer the asker would wait out its timeout
    async def service(msg: Msg) -> None:
        await _respond(raw, msg, bytes(raw.max_payload + 1))

    sub = await raw.subscribe("fh.test.big", cb=service)
    try:
        msg = await raw.request("fh.test.big", b"", timeout=5)
    finally:
        await sub.unsubscribe()
    assert msg.data == b"" and msg.headers is not None
    assert (msg.headers[ERROR_CODE_HEADER], msg.headers[CODE_HEADER]) == ("413", "oversize")
    assert "more than one message carries" in msg.headers[ERROR_HEADER]


async def test_the_info_answer_is_a_module_description(raw: NatsClient) -> None:
    msg = await raw.request(info_subject("hereon", "climate"), b"", timeout=5)
    info = ModuleDescription.model_validate_json(msg.data)
    assert (info.site, info.module) == ("hereon", "climate")
    assert "compute_sum" in info.functions
    assert info.functions["compute_sum"].schema_hash
    assert json.loads(msg.data) == info.model_dump(mode="json")


async def test_status_of_a_finished_call_is_a_typed_answer_for_the_client_and_raw_nats(
    node: NodeDaemon, world: World, raw: NatsClient
) -> None:
    async with await Client.connect(node.url, CALLER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[1.0], timeout=15)
        assert await handle.result() == [2.0]
        status = await handle.status()
    assert isinstance(status, RequestStatus)
    assert status.state == RequestState.COMPLETED
    msg = await raw.request(
        status_subject("hereon"), control(world, CALLER, "status", handle.request_id), timeout=5
    )
    assert RequestStatus.model_validate_json(msg.data) == status


async def test_an_unregistered_caller_gets_the_same_typed_error_from_a_call_and_a_status(
    node: NodeDaemon, world: World
) -> None:
    async with await Client.connect(node.url, STRANGER, home=world.store.home) as fed:
        with pytest.raises(UnauthorizedError) as by_reply:
            await fed.call("hereon.climate.scale", values=[1.0], timeout=15)
        with pytest.raises(UnauthorizedError) as by_answer:
            await fed.status("hereon", "A" * 22)
    assert by_reply.value.code == by_answer.value.code == "unauthorized"


async def test_fetching_a_request_the_node_never_saw_raises_not_found_from_the_headers(
    node: NodeDaemon, world: World
) -> None:
    async with await Client.connect(node.url, CALLER, home=world.store.home) as fed:
        with pytest.raises(NotFoundError) as err:
            await fed.fetch("hereon", "B" * 22)
    assert "B" * 22 in err.value.message
