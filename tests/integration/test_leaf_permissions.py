"""What a site's leaf server lets each client do, tried as an intruder would.

The shared ``federation`` runs from the configs ``fedhub federation init`` generates: TLS
on every client port, and every client logs in with the NKey of its role (node, caller,
operator, auditor). Each refusal below is the server's: the client library is asked to do
the forbidden thing and the server says no (a refused connection, or a permissions
violation it reports while the message is dropped); the stream is then checked unharmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
import pytest
from conftest import node_nats
from nats.aio.client import Client as NatsClient
from support.world import World

from hub.client import Client
from hub.errors import TransportError
from hub.nats import ensure_calls_consumer, ensure_site_streams
from hub.subjects import CALLS_CONSUMER, CALLS_STREAM, EVENTS_STREAM, call_subject
from node.check import check_nats

if TYPE_CHECKING:
    from conftest import Federation

SITE = "hereon"
#: Refusals a JetStream request can meet: the server drops the request (no answer comes).
REFUSED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)


@dataclass
class Errors:
    """What the server told a client asynchronously (permission violations)."""

    seen: list[str] = field(default_factory=list)

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc).lower())

    async def wait_for(self, text: str) -> None:
        async with asyncio.timeout(5):
            while not any(text.lower() in e for e in self.seen):  # noqa: ASYNC110
                await asyncio.sleep(0.02)


async def login(
    fed: Federation, site: str, role: str, name: str | None = None
) -> tuple[NatsClient, Errors]:
    errors = Errors()
    options: dict[str, Any] = fed.client_options(site, role, name)  # type: ignore[arg-type]
    nc = await nats.connect(
        fed.site_url(site),
        **options,
        error_cb=errors.record,
        allow_reconnect=False,
        connect_timeout=3,
    )
    return nc, errors


@pytest.fixture
async def node(federation: Federation) -> AsyncIterator[NatsClient]:
    """hereon's node: streams and the calls consumer exist."""
    nc, _ = await login(federation, SITE, "node")
    js = nc.jetstream()
    await ensure_site_streams(js, SITE)
    await ensure_calls_consumer(js, SITE)
    yield nc
    await nc.close()


@pytest.fixture
async def queued_call(federation: Federation, node: NatsClient) -> AsyncIterator[int]:
    """A call klaus@hereon queued for hereon's own module (as a caller may): its seq."""
    nc, _ = await login(federation, SITE, "caller", "klaus")
    try:
        subject = call_subject(SITE, "probe", f"f{uuid.uuid4().hex[:8]}")
        ack = await nc.jetstream().publish(
            subject, b"sealed call", headers={"Nats-Msg-Id": uuid.uuid4().hex}
        )
        assert ack.stream == CALLS_STREAM
        yield ack.seq
    finally:
        await nc.close()


async def refused(action: Callable[[], Awaitable[Any]], errors: Errors, subject: str) -> None:
    """``action`` gets no answer, and the server names ``subject`` as a violation."""
    with pytest.raises(REFUSED):
        await action()
    await errors.wait_for(f'permissions violation for publish to "{subject}"')


async def test_a_client_without_credentials_is_refused_at_every_sites_leaf(
    federation: Federation,
) -> None:
    for site in federation.sites:
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(
                federation.site_url(site),
                tls=federation.tls_context(),
                allow_reconnect=False,
                connect_timeout=3,
                error_cb=Errors().record,
            )
        # Nor without TLS: the server's certificate is not one the system trusts, and
        # a plain-text client is not served.
        plain = federation.site_url(site).replace("tls://", "nats://")
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(
                plain, allow_reconnect=False, connect_timeout=3, error_cb=Errors().record
            )


async def test_a_caller_without_credentials_or_without_the_ca_is_told_why_at_once(
    federation: Federation, tmp_path: Path
) -> None:
    world = World(tmp_path / "world")
    world.person("klaus@geomar")
    url, home = federation.site_url("geomar"), world.store.home
    with pytest.raises(TransportError, match="refused the credentials"):
        await Client.connect(url, "klaus@geomar", home=home, tls=federation.tls_context())
    creds = federation.credentials("geomar", "caller", "klaus")
    with pytest.raises(TransportError, match="certificate is not trusted"):
        await Client.connect(url, "klaus@geomar", home=home, creds=creds)


async def test_the_hubs_client_port_refuses_a_client_without_the_admins_nkey(
    federation: Federation,
) -> None:
    for options in ({}, federation.client_options(SITE, "node")):
        options = {**options, "tls": federation.tls_context()}
        options.pop("inbox_prefix", None)
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(federation.hub_url, **options, allow_reconnect=False,
                               connect_timeout=3, error_cb=Errors().record)  # fmt: skip


async def test_a_node_config_with_the_generated_nkey_and_ca_passes_the_nats_check(
    federation: Federation, tmp_path: Path
) -> None:
    world = World(tmp_path / "world")
    cfg = world.node_config(SITE, **node_nats(federation, SITE), init=False)
    findings = await check_nats(cfg)
    assert [f.line() for f in findings if not f.ok] == []
    # and without the CA the server's certificate is not trusted: named, not hidden
    bare = world.node_config(
        SITE,
        name="n2",
        nats_url=federation.site_url(SITE),
        nats_credentials=federation.credentials(SITE, "node"),
        init=False,
    )
    assert [f.ok for f in await check_nats(bare)] == [False]


async def test_another_sites_credentials_are_refused_at_this_leaf(federation: Federation) -> None:
    for role, name in (("caller", "klaus"), ("node", "n1"), ("operator", "operator")):
        options = federation.client_options("geomar", role, name)  # type: ignore[arg-type]
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
            await nats.connect(
                federation.site_url(SITE),
                **options,
                allow_reconnect=False,
                connect_timeout=3,
                error_cb=Errors().record,
            )


async def test_a_caller_cannot_read_take_or_delete_the_queued_calls(
    federation: Federation, node: NatsClient, queued_call: int
) -> None:
    nc, errors = await login(federation, SITE, "caller", "klaus")
    js = nc.jetstream(timeout=0.5)
    api = "$JS.API"
    try:
        await refused(
            lambda: js.stream_info(CALLS_STREAM), errors, f"{api}.STREAM.INFO.{CALLS_STREAM}"
        )
        pull = await js.pull_subscribe_bind(CALLS_CONSUMER, CALLS_STREAM)
        await refused(
            lambda: pull.fetch(1, timeout=0.5),
            errors,
            f"{api}.CONSUMER.MSG.NEXT.{CALLS_STREAM}.{CALLS_CONSUMER}",
        )
        await refused(
            lambda: js.delete_stream(CALLS_STREAM), errors, f"{api}.STREAM.DELETE.{CALLS_STREAM}"
        )
        await refused(
            lambda: js.purge_stream(CALLS_STREAM), errors, f"{api}.STREAM.PURGE.{CALLS_STREAM}"
        )
        await refused(
            lambda: js.delete_consumer(CALLS_STREAM, CALLS_CONSUMER),
            errors,
            f"{api}.CONSUMER.DELETE.{CALLS_STREAM}.{CALLS_CONSUMER}",
        )
    finally:
        await nc.close()
    # The call is still queued, untaken: the node's view.
    stored = await node.jetstream().get_msg(CALLS_STREAM, queued_call)
    assert stored.data == b"sealed call"


async def test_a_caller_hears_neither_everything_nor_another_callers_inbox(
    federation: Federation, node: NatsClient
) -> None:
    klaus, errors = await login(federation, SITE, "caller", "klaus")
    anna, _ = await login(federation, SITE, "caller", "anna")
    heard: list[str] = []

    async def note(msg: Any) -> None:
        heard.append(msg.subject)

    try:
        for subject in (">", "fh.>", "fh.inbox.hereon.anna.>", "_INBOX.>", "fh.call.>"):
            await klaus.subscribe(subject, cb=note)
            await errors.wait_for(f'permissions violation for subscription to "{subject}"')
        own: list[str] = []

        async def mine(msg: Any) -> None:
            own.append(msg.subject)

        sub = await anna.subscribe("fh.inbox.hereon.anna.>", cb=mine)
        await anna.flush()
        token = uuid.uuid4().hex
        # The node answers anna, and anna queues a call: klaus must hear neither.
        async with asyncio.timeout(5):
            while not own:
                await node.publish(f"fh.inbox.hereon.anna.{token}", b"reply")
                await node.flush()
                await asyncio.sleep(0.05)
        await anna.jetstream().publish(
            call_subject(SITE, "probe", "g"), b"call", headers={"Nats-Msg-Id": token}
        )
        await klaus.flush()
        await asyncio.sleep(0.2)  # anything klaus could hear has had its chance
        await sub.unsubscribe()
    finally:
        await klaus.close()
        await anna.close()
    assert own and all(s.startswith("fh.inbox.hereon.anna.") for s in own)
    assert heard == []


async def test_an_operator_reads_stream_information_but_changes_and_takes_nothing(
    federation: Federation, node: NatsClient, queued_call: int
) -> None:
    nc, errors = await login(federation, SITE, "operator")
    js = nc.jetstream(timeout=0.5)
    try:
        info = await js.stream_info(CALLS_STREAM)
        assert info.state.messages >= 1
        await refused(
            lambda: js.delete_stream(CALLS_STREAM), errors, f"$JS.API.STREAM.DELETE.{CALLS_STREAM}"
        )
        pull = await js.pull_subscribe_bind(CALLS_CONSUMER, CALLS_STREAM)
        await refused(
            lambda: pull.fetch(1, timeout=0.5),
            errors,
            f"$JS.API.CONSUMER.MSG.NEXT.{CALLS_STREAM}.{CALLS_CONSUMER}",
        )
    finally:
        await nc.close()
    assert (await node.jetstream().get_msg(CALLS_STREAM, queued_call)).data == b"sealed call"


async def test_an_auditor_reads_the_event_stream_and_nothing_else(
    federation: Federation, node: NatsClient
) -> None:
    marker = uuid.uuid4().hex.encode()
    ack = await node.jetstream().publish(f"fh.events.{SITE}.n1", marker)
    nc, errors = await login(federation, SITE, "auditor")
    js = nc.jetstream(timeout=2)
    try:
        sub = await js.subscribe(
            f"fh.events.{SITE}.>",
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            config=nats.js.api.ConsumerConfig(
                deliver_policy=nats.js.api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=ack.seq
            ),
        )
        msg = await sub.next_msg(timeout=5)
        assert msg.data == marker
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        await refused(
            lambda: js.stream_info(CALLS_STREAM), errors, f"$JS.API.STREAM.INFO.{CALLS_STREAM}"
        )
        await refused(
            lambda: js.purge_stream(EVENTS_STREAM), errors, f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}"
        )
    finally:
        await nc.close()


async def test_a_node_cannot_delete_or_purge_its_sites_streams(
    federation: Federation,
) -> None:
    nc, errors = await login(federation, SITE, "node")
    js = nc.jetstream(timeout=0.5)
    try:
        await ensure_site_streams(js, SITE)
        await refused(
            lambda: js.delete_stream(CALLS_STREAM), errors, f"$JS.API.STREAM.DELETE.{CALLS_STREAM}"
        )
        await refused(
            lambda: js.purge_stream(EVENTS_STREAM), errors, f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}"
        )
        assert (await js.stream_info(CALLS_STREAM)).config.name == CALLS_STREAM
    finally:
        await nc.close()


async def test_a_node_asks_another_sites_status_service_but_sends_it_no_calls_info_or_admin(
    federation: Federation,
) -> None:
    """A node fetches results passed by reference from other sites (signed catalog
    messages on ``fh.status.<site>``); nothing else of another site is open to it."""
    geomar, _ = await login(federation, "geomar", "node")
    nc, errors = await login(federation, SITE, "node")

    async def answer(msg: Any) -> None:
        await msg.respond(b"answered by geomar")

    sub = await geomar.subscribe("fh.status.geomar", cb=answer)
    await geomar.flush()
    try:
        async with asyncio.timeout(10):  # the hub learns the new interest in its own time
            while True:
                try:
                    reply = await nc.request("fh.status.geomar", b"fetch", timeout=0.5)
                    break
                except REFUSED:
                    await asyncio.sleep(0.1)
        assert reply.data == b"answered by geomar"
        for subject in ("fh.info.geomar.climate", "fh.admin.geomar", "fh.status.geomar.x"):
            await refused(lambda s=subject: nc.request(s, b"?", timeout=0.5), errors, subject)
        call = call_subject("geomar", "climate", "scale")
        await refused(lambda: nc.jetstream(timeout=0.5).publish(call, b"call"), errors, call)
    finally:
        await sub.unsubscribe()
        await nc.close()
        await geomar.close()
