"""A caller's call publishes and their stream acks (hub.client_transport.CallAcks), against a
real nats-server: every answer the stream can give reaches the one try that waits for it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from hub import client_transport
from hub.client_transport import CallAcks, publish_call
from hub.nats import NatsServer
from hub.nats import connect as nats_connect


@pytest.fixture
async def acks(nats_server: NatsServer) -> AsyncIterator[tuple[CallAcks, NatsClient, str]]:
    """Call acks on a connection, and a small stream of this test's own (``<token>.calls``)."""
    nc = await nats_connect(nats_server.url)
    token = f"t{secrets.token_hex(6)}"
    await nc.jetstream().add_stream(
        name=f"ACKS_{token}", subjects=[f"{token}.>"], max_msg_size=256, duplicate_window=60
    )
    acks = CallAcks(nc)
    await acks.start()
    yield acks, nc, token
    await acks.stop()
    await nc.jetstream().delete_stream(f"ACKS_{token}")
    await nc.close()


async def test_a_call_the_stream_stores_is_confirmed_and_tries_of_it_are_kept_once(
    acks: tuple[CallAcks, NatsClient, str],
) -> None:
    calls, nc, token = acks
    for _ in range(3):  # tries of one call: same request id, one stored copy
        await calls.publish_once(f"{token}.calls", b"call", "rid-of-one-call", 5.0)
    info = await nc.jetstream().stream_info(f"ACKS_{token}")
    assert info.state.messages == 1
    assert not calls._waiting, "no try is left waiting once confirmed"


async def test_a_call_to_a_subject_no_stream_takes_fails_as_no_stream_response(
    acks: tuple[CallAcks, NatsClient, str],
) -> None:
    calls, _, token = acks
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await calls.publish_once(f"x{token}.nowhere", b"call", "rid-nowhere", 5.0)
    assert not calls._waiting


async def test_a_call_the_stream_refuses_fails_with_the_streams_error(
    acks: tuple[CallAcks, NatsClient, str],
) -> None:
    calls, _, token = acks
    with pytest.raises(nats.js.errors.APIError) as refused:
        await calls.publish_once(f"{token}.calls", b"x" * 1000, "rid-too-large", 5.0)
    assert "size" in (refused.value.description or "")
    assert not calls._waiting


async def test_a_call_nobody_confirms_is_tried_again_until_its_deadline_then_times_out(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_transport, "_CONFIRM_TRY", 0.3)
    nc = await nats_connect(nats_server.url)
    try:
        calls = CallAcks(nc)
        await calls.start()
        silent = await nc.subscribe("silent.calls")  # takes the call, never acks it
        until = asyncio.get_running_loop().time() + 1.5
        with pytest.raises(TimeoutError):
            await publish_call(calls, "silent.calls", b"call", "rid-silent", until)
        assert silent.pending_msgs >= 2, "the call went out again after an unconfirmed try"
        assert not calls._waiting
        await calls.stop()
    finally:
        await nc.close()


@pytest.mark.parametrize("answer", [b'"stored"', b"[]", b'{"seq": 1}', b"not json"])
async def test_an_answer_that_is_not_a_streams_ack_confirms_nothing(
    acks: tuple[CallAcks, NatsClient, str], answer: bytes
) -> None:
    """Whatever answers on a call's subject without being its stream (here a plain
    subscriber) cannot make the caller believe the call was stored."""
    calls, nc, token = acks
    subject = f"other{token}.calls"  # no stream takes it

    async def impostor(msg: Msg) -> None:
        await msg.respond(answer)

    sub = await nc.subscribe(subject, cb=impostor)
    try:
        with pytest.raises(nats.js.errors.APIError, match="bad ack"):
            await calls.publish_once(subject, b"call", secrets.token_urlsafe(16), timeout=5)
    finally:
        await sub.unsubscribe()
