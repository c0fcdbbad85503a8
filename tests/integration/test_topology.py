"""Real nats-server processes: launcher, site streams, and a hub with two site leaves."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api

import hub.nats.federation as federation_module
from hub import subjects
from hub.cli_lookup import discover
from hub.errors import ConfigError, TransportError
from hub.nats import (
    HUB_DOMAIN,
    LeafUser,
    LocalFederation,
    NatsServer,
    connect,
    ensure_calls_consumer,
    ensure_site_streams,
    find_nats_server,
    hub_config,
    leaf_config,
    source_site_events,
    start_local_federation,
    wait_jetstream_ready,
    wait_message_route,
)

if TYPE_CHECKING:
    from conftest import Federation

FederationFactory = Callable[..., Coroutine[Any, Any, "Federation"]]


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A client of the shared server."""
    client = await connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def federation(open_federation: Federation) -> Federation:
    """What the hub keeps apart is seen by clients allowed everything on their site's
    server: the federation whose site servers take anyone (the hub is secured as ever)."""
    return open_federation


@pytest.fixture
async def clients(federation: Federation) -> AsyncIterator[dict[str, NatsClient]]:
    """One client per site leaf, plus ``"hub"``."""
    conns = {site: await connect(federation.site_url(site)) for site in federation.sites}
    conns["hub"] = await connect(federation.hub_url, **federation.hub_options())
    for site in federation.sites:
        await ensure_site_streams(conns[site].jetstream(), site)
    yield conns
    for client in conns.values():
        await client.close()


async def stream_count(js: nats.js.JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


# ------------------------------------------------------------------ launcher


def test_the_nats_server_binary_is_found_next_to_python() -> None:
    exe = find_nats_server()
    assert exe.is_file()
    assert os.access(exe, os.X_OK)


async def test_a_single_server_answers_jetstream_on_a_random_local_port(
    nats_server: NatsServer, nc: NatsClient
) -> None:
    assert nats_server.url.startswith("nats://127.0.0.1:")
    assert nats_server.pid is not None
    assert nats_server.leafnode_url is None
    await wait_jetstream_ready(nc, timeout=5)


async def test_stopping_a_server_twice_is_harmless(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, jetstream=False)
    async with server:
        assert server.running
    await server.stop()
    assert not server.running


async def test_a_server_that_exits_while_starting_reports_its_log(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    port = int(nats_server.url.rpartition(":")[2])
    clash = NatsServer(tmp_path, port=port, jetstream=False, start_timeout=5)
    with pytest.raises(TransportError, match="address already in use"):
        await clash.start()
    assert not clash.running


async def test_a_restarted_server_keeps_its_port_and_its_streams(
    fresh_nats_server: NatsServer,
) -> None:
    url = fresh_nats_server.url
    client = await connect(url)
    await ensure_site_streams(client.jetstream(), "hereon")
    await client.jetstream().publish(subjects.call_subject("hereon", "m", "f"), b"call")
    await client.close()

    await fresh_nats_server.kill()
    assert not fresh_nats_server.running
    await fresh_nats_server.restart()

    assert fresh_nats_server.url == url
    client = await connect(url)
    try:
        info = await client.jetstream().stream_info(subjects.CALLS_STREAM)
        assert info.state.messages == 1
    finally:
        await client.close()


# ------------------------------------------------------------------ site streams


async def test_site_streams_are_created_idempotently(nc: NatsClient, shared_site: str) -> None:
    js = nc.jetstream()
    await ensure_site_streams(js, shared_site)
    await ensure_site_streams(js, shared_site)

    calls = (await js.stream_info(subjects.CALLS_STREAM)).config
    assert calls.subjects == [subjects.calls_filter(shared_site)]
    assert calls.retention == api.RetentionPolicy.WORK_QUEUE
    assert calls.storage == api.StorageType.FILE
    assert calls.duplicate_window == 120
    events = (await js.stream_info(subjects.EVENTS_STREAM)).config
    assert events.subjects == [subjects.events_filter(shared_site)]
    assert events.retention == api.RetentionPolicy.LIMITS
    assert events.deny_delete
    assert events.deny_purge
    await js.object_store(subjects.RESULTS_BUCKET)


async def test_the_calls_consumer_is_a_durable_explicit_ack_pull_consumer(
    nc: NatsClient, shared_site: str
) -> None:
    js = nc.jetstream()
    await ensure_site_streams(js, shared_site)
    await ensure_calls_consumer(js, shared_site)
    info = await ensure_calls_consumer(js, shared_site)
    assert info.name == subjects.CALLS_CONSUMER
    assert info.config.durable_name == subjects.CALLS_CONSUMER
    assert info.config.ack_policy == api.AckPolicy.EXPLICIT
    assert info.config.ack_wait == 5
    assert info.config.max_deliver == 5
    assert info.config.deliver_subject is None


async def test_a_new_ack_wait_updates_the_existing_calls_consumer(
    nc: NatsClient, shared_site: str
) -> None:
    js = nc.jetstream()
    await ensure_site_streams(js, shared_site)
    await ensure_calls_consumer(js, shared_site, ack_wait=30)
    await ensure_calls_consumer(js, shared_site, ack_wait=4)
    info = await js.consumer_info(subjects.CALLS_STREAM, subjects.CALLS_CONSUMER)
    assert info.config.ack_wait == 4


async def test_events_cannot_be_deleted_from_the_events_stream(
    nc: NatsClient, shared_site: str
) -> None:
    js = nc.jetstream()
    await ensure_site_streams(js, shared_site)
    ack = await js.publish(subjects.events_subject(shared_site, "node1"), b"event")
    with pytest.raises(nats.js.errors.APIError):
        await js.delete_msg(subjects.EVENTS_STREAM, ack.seq)
    with pytest.raises(nats.js.errors.APIError):
        await js.purge_stream(subjects.EVENTS_STREAM)


async def test_a_stream_of_another_site_is_refused_not_taken_over(
    nc: NatsClient, shared_site: str
) -> None:
    js = nc.jetstream()
    await ensure_site_streams(js, shared_site)
    with pytest.raises(ConfigError, match="holds subjects"):
        await ensure_site_streams(js, "othersite")
    calls = (await js.stream_info(subjects.CALLS_STREAM)).config
    assert calls.subjects == [subjects.calls_filter(shared_site)]


async def test_an_updatable_difference_updates_the_stream(
    fresh_nats_server: NatsServer,
) -> None:
    client = await connect(fresh_nats_server.url)
    try:
        js = client.jetstream()
        await ensure_site_streams(js, "hereon")
        await ensure_site_streams(js, "hereon", duplicate_window=30)
        info = await js.stream_info(subjects.CALLS_STREAM)
        assert info.config.duplicate_window == 30
    finally:
        await client.close()


async def test_the_same_msg_id_published_twice_is_stored_once(
    nc: NatsClient, unique: Callable[[str], str], shared_site: str
) -> None:
    js = nc.jetstream()
    await ensure_site_streams(js, shared_site)
    subject = subjects.call_subject(shared_site, unique("m"), "f")
    msg_id = unique("request")

    first = await js.publish(subject, b"call", headers={"Nats-Msg-Id": msg_id})
    second = await js.publish(subject, b"call", headers={"Nats-Msg-Id": msg_id})

    assert not first.duplicate
    assert second.duplicate
    assert second.seq == first.seq
    assert await stream_count(js, subjects.CALLS_STREAM, subject) == 1


# ------------------------------------------------------------------ federation


async def test_a_core_message_published_at_hereon_reaches_geomars_inbox(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    subject = subjects.inbox_subject("geomar", "klaus", unique("probe"))
    sub = await clients["geomar"].subscribe(subject)
    await clients["geomar"].flush()
    async with asyncio.timeout(5):
        while True:  # interest needs a moment to travel geomar -> hub -> hereon
            await clients["hereon"].publish(subject, b"hello")
            try:
                msg = await sub.next_msg(timeout=0.1)
            except nats.errors.TimeoutError:
                continue
            break
    assert msg.data == b"hello"


async def test_a_call_published_at_geomar_lands_in_hereons_calls_stream(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    subject = subjects.call_subject("hereon", unique("m"), "f")
    ack = (
        await clients["geomar"]
        .jetstream()
        .publish(subject, b"call", headers={"Nats-Msg-Id": unique("request")})
    )
    assert ack.stream == subjects.CALLS_STREAM
    assert ack.domain == "hereon"
    assert await stream_count(clients["hereon"].jetstream(), subjects.CALLS_STREAM, subject) == 1


async def test_the_hub_sources_hereons_events(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    hub_js = clients["hub"].jetstream(domain=HUB_DOMAIN)
    await source_site_events(hub_js, "hereon")
    await source_site_events(hub_js, "hereon")
    node = unique("node")
    subject = subjects.events_subject("hereon", node)
    await clients["hereon"].jetstream().publish(subject, b"event")

    copy = subjects.hub_events_stream("hereon")
    async with asyncio.timeout(10):
        while await stream_count(hub_js, copy, subject) == 0:  # noqa: ASYNC110 - polls the hub
            await asyncio.sleep(0.05)
    info = await hub_js.stream_info(copy)
    assert info.config.deny_delete


async def test_geomar_cannot_publish_events_in_hereons_name(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    subject = subjects.events_subject("hereon", unique("node"))
    with pytest.raises((nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError)):
        await clients["geomar"].jetstream().publish(subject, b"forged", timeout=0.5)
    assert await stream_count(clients["hereon"].jetstream(), subjects.EVENTS_STREAM, subject) == 0


# ------------------------------------------------------------------ one account per site
#
# A third site (awi) and the hub's own clients are bystanders: they listen on the subjects
# meant for another site and on ">", and must receive nothing of it.


async def listen(nc: NatsClient, *patterns: str) -> list[tuple[str, bytes]]:
    """Subscribe ``nc`` to ``patterns``; return the list every message is appended to."""
    seen: list[tuple[str, bytes]] = []

    async def keep(msg: Msg) -> None:
        seen.append((msg.subject, bytes(msg.data)))

    for pattern in patterns:
        await nc.subscribe(pattern, cb=keep)
    await nc.flush()
    return seen


async def wait_listening(clients: dict[str, NatsClient], unique: Callable[[str], str]) -> None:
    """Return once hereon reaches every other site: its earlier subscriptions are known."""
    for site in ("geomar", "awi"):
        subject = subjects.inbox_subject(site, "probe", unique("p"))
        await wait_message_route(clients["hereon"], clients[site], subject=subject, timeout=5)


async def test_calls_to_hereon_reach_hereons_stream_and_no_other_site_or_the_hub(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    seen = {
        name: await listen(clients[name], subjects.calls_filter("hereon"), ">")
        for name in ("geomar", "awi", "hub")
    }
    await wait_listening(clients, unique)
    hereon_js = clients["hereon"].jetstream()
    sent: dict[str, bytes] = {}
    for caller in ("geomar", "awi"):
        subject = subjects.call_subject("hereon", unique("m"), "f")
        sent[caller] = f"call from {caller} {unique('c')}".encode()
        ack = (
            await clients[caller]
            .jetstream()
            .publish(subject, sent[caller], headers={"Nats-Msg-Id": unique("request")})
        )
        assert (ack.stream, ack.domain) == (subjects.CALLS_STREAM, "hereon")
        assert await stream_count(hereon_js, subjects.CALLS_STREAM, subject) == 1
    await asyncio.sleep(0.3)  # room for a stray copy to arrive

    # A caller's own server carries its own call out; nobody else's call reaches it.
    assert {d for s, d in seen["geomar"] if s.startswith("fh.call.")} == {sent["geomar"]}
    assert {d for s, d in seen["awi"] if s.startswith("fh.call.")} == {sent["awi"]}
    assert [s for s, _ in seen["hub"] if s.startswith("fh.call.")] == []
    for name, caller in (("geomar", "awi"), ("awi", "geomar"), ("hub", "geomar"), ("hub", "awi")):
        assert [s for s, d in seen[name] if sent[caller] in d] == [], (name, caller)


async def test_replies_to_awis_callers_reach_awi_and_not_geomar_or_the_hub(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    at_geomar = await listen(clients["geomar"], "fh.inbox.awi.>", ">")
    at_hub = await listen(clients["hub"], ">")
    # hereon answers a caller at awi and one at geomar; both answers arrive.
    to_awi = subjects.inbox_subject("awi", "anna", unique("t"))
    to_geomar = subjects.inbox_subject("geomar", "klaus", unique("t"))
    await wait_message_route(clients["hereon"], clients["awi"], subject=to_awi, timeout=5)
    await wait_message_route(clients["hereon"], clients["geomar"], subject=to_geomar, timeout=5)
    await asyncio.sleep(0.3)

    assert [s for s, _ in at_geomar if s == to_geomar], "geomar's listener is live"
    assert [s for s, _ in at_geomar if s.startswith("fh.inbox.awi.")] == []
    assert [s for s, _ in at_hub if s.startswith("fh.inbox.")] == []


async def test_bulk_transfer_messages_to_a_site_reach_that_site_and_no_other_or_the_hub(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    at_awi = await listen(clients["awi"], "fh.bulk.hereon.>", "fh.bulk.geomar.>", ">")
    at_hub = await listen(clients["hub"], ">")
    # geomar sends to hereon's bulk subjects (chunks of an upload, acks of a download)
    # and hereon to geomar's; both arrive, and the bystander and the hub see neither.
    to_hereon = subjects.bulk_subject("hereon", unique("t"))
    to_geomar = subjects.bulk_subject("geomar", unique("t"))
    await wait_message_route(clients["geomar"], clients["hereon"], subject=to_hereon, timeout=5)
    await wait_message_route(clients["hereon"], clients["geomar"], subject=to_geomar, timeout=5)
    await asyncio.sleep(0.3)

    assert [s for s, _ in at_awi if s.startswith("fh.bulk.")] == []
    assert [s for s, _ in at_hub if s.startswith("fh.bulk.")] == []
    # what hereon sends to awi's bulk subjects reaches awi and not geomar
    at_geomar = await listen(clients["geomar"], "fh.bulk.awi.>", ">")
    to_awi = subjects.bulk_subject("awi", unique("t"))
    await wait_message_route(clients["hereon"], clients["awi"], subject=to_awi, timeout=5)
    await asyncio.sleep(0.3)
    assert [s for s, _ in at_geomar if s.startswith("fh.bulk.awi.")] == []


async def test_info_and_status_requests_reach_hereon_but_its_admin_and_api_do_not(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    module = unique("m")
    got: list[str] = []

    async def answer(msg: Msg) -> None:
        got.append(msg.subject)
        await msg.respond(b"ok")

    hereon = clients["hereon"]
    for subject in (
        subjects.info_subject("hereon", module),
        subjects.status_subject("hereon"),
        subjects.admin_subject("hereon"),
    ):
        await hereon.subscribe(subject, cb=answer)
    await hereon.flush()
    at_awi = await listen(clients["awi"], "fh.info.hereon.>", "fh.status.hereon", ">")
    await wait_listening(clients, unique)

    geomar = clients["geomar"]
    for subject in (subjects.info_subject("hereon", module), subjects.status_subject("hereon")):
        async with asyncio.timeout(5):
            while True:  # the answer's route back needs the request's interest first
                try:
                    reply = await geomar.request(subject, b"ask", timeout=0.5)
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.05)
                    continue
                break
        assert reply.data == b"ok"
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await geomar.request(subjects.admin_subject("hereon"), b"forged", timeout=0.5)
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await geomar.request("$JS.hereon.API.INFO", b"", timeout=0.5)
    await asyncio.sleep(0.2)

    assert subjects.admin_subject("hereon") not in got
    assert [s for s, _ in at_awi if s.startswith(("fh.info.hereon", "fh.status.hereon"))] == []


async def test_module_discovery_at_geomar_hears_every_sites_modules_through_the_hub(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    module = unique("m")

    def answerer(site: str) -> Callable[[Msg], Coroutine[Any, Any, None]]:
        async def answer(msg: Msg) -> None:
            meta = {"fedhub.site": site, "fedhub.module": module}
            await msg.respond(json.dumps({"name": site, "metadata": meta}).encode())

        return answer

    for site in ("hereon", "geomar", "awi"):
        await clients[site].subscribe("$SRV.INFO", cb=answerer(site))
        await clients[site].flush()
    await wait_listening(clients, unique)

    found: set[str] = set()
    async with asyncio.timeout(10):
        while found != {"hereon", "geomar", "awi"}:  # interest takes a moment to travel
            answers = await discover(clients["geomar"], 0.3)
            found = {a["metadata"]["fedhub.site"] for a in answers if a["name"] in clients}
    assert found == {"hereon", "geomar", "awi"}


async def test_the_hub_copies_every_sites_events_also_past_flow_control(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    hub_js = clients["hub"].jetstream(domain=HUB_DOMAIN)
    count, data = 300, os.urandom(20_000)  # ~6 MB per site: flow control must answer
    wanted = {}
    for site in ("hereon", "geomar"):
        await source_site_events(hub_js, site)
        wanted[site] = subjects.events_subject(site, unique("node"))
        js = clients[site].jetstream()
        for _ in range(count):
            await js.publish(wanted[site], data)
    for site, subject in wanted.items():
        copy = subjects.hub_events_stream(site)
        async with asyncio.timeout(30):
            while await stream_count(hub_js, copy, subject) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        info = await hub_js.stream_info(copy)
        assert info.sources is not None
        assert [source.error for source in info.sources] == [None]


async def test_a_leaf_without_credentials_is_refused_by_the_hub(
    federation: Federation, clients: dict[str, NatsClient], tmp_path: Path
) -> None:
    assert federation.hub.leafnode_url is not None
    async with NatsServer(
        tmp_path, jetstream=False, leafnode_remotes=[federation.hub.leafnode_url]
    ) as rogue:
        rogue_client = await connect(rogue.url)
        try:
            subject = subjects.info_subject("hereon", "rogue_probe")
            with pytest.raises(TransportError):
                await wait_message_route(
                    rogue_client, clients["hereon"], subject=subject, timeout=1
                )
        finally:
            await rogue_client.close()


async def test_a_result_stored_at_geomar_stays_in_geomars_bucket(
    clients: dict[str, NatsClient], unique: Callable[[str], str]
) -> None:
    name = unique("result")
    geomar_bucket = await clients["geomar"].jetstream().object_store(subjects.RESULTS_BUCKET)
    await geomar_bucket.put(name, b"ciphertext")

    hereon_bucket = await clients["hereon"].jetstream().object_store(subjects.RESULTS_BUCKET)
    with pytest.raises(nats.js.errors.ObjectNotFoundError):
        await hereon_bucket.get_info(name)
    # ... and hereon cannot reach geomar's JetStream API at all (no pulling, no deleting).
    with pytest.raises((nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)):
        await clients["hereon"].jetstream(domain="geomar").object_store(subjects.RESULTS_BUCKET)


async def test_a_killed_and_restarted_leaf_keeps_its_streams(
    federation_factory: FederationFactory,
) -> None:
    fed = await federation_factory(secure=False)
    hereon = await connect(fed.site_url("hereon"))
    await ensure_site_streams(hereon.jetstream(), "hereon")
    await hereon.jetstream().publish(subjects.call_subject("hereon", "m", "f"), b"call")
    await hereon.close()

    await fed.leaves["hereon"].kill()
    await fed.leaves["hereon"].restart()
    await fed.wait_connected()

    hereon = await connect(fed.site_url("hereon"))
    geomar = await connect(fed.site_url("geomar"))
    try:
        js = hereon.jetstream()
        assert (await js.stream_info(subjects.CALLS_STREAM)).state.messages == 1
        ack = await geomar.jetstream().publish(subjects.call_subject("hereon", "m", "g"), b"call")
        assert ack.domain == "hereon"
    finally:
        await geomar.close()
        await hereon.close()


async def test_a_local_federation_is_a_context_manager_that_closes_twice_harmlessly(
    tmp_path: Path,
) -> None:
    async with LocalFederation(tmp_path, sites=("hereon", "geomar")) as fed:
        hereon = await connect(fed.site_url("hereon"), **fed.client_options("hereon", "node"))
        try:
            await ensure_site_streams(hereon.jetstream(), "hereon")
        finally:
            await hereon.close()
        servers = [fed.hub, *fed.leaves.values()]
        assert all(server.running for server in servers)
    assert not any(server.running for server in servers)
    await fed.aclose()
    await fed.stop()
    # Started again, it runs on the same folders: hereon's streams are still there.
    await fed.start()
    try:
        hereon = await connect(fed.site_url("hereon"), **fed.client_options("hereon", "node"))
        try:
            info = await hereon.jetstream().stream_info(subjects.CALLS_STREAM)
            assert info.config.subjects == [subjects.calls_filter("hereon")]
        finally:
            await hereon.close()
    finally:
        await fed.aclose()


async def test_a_new_local_federation_whose_port_was_taken_meanwhile_starts_on_new_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process binds the first port chosen, between the choice and the server's bind
    # (on a busy machine, another test's server or client does).
    chosen = federation_module._free_port
    taken: list[socket.socket] = []

    def then_taken() -> int:
        port = chosen()
        if not taken:
            holder = socket.socket()
            holder.bind(("127.0.0.1", port))
            holder.listen()
            taken.append(holder)
        return port

    monkeypatch.setattr(federation_module, "_free_port", then_taken)
    try:
        fed = await start_local_federation(tmp_path, ("hereon", "geomar"))
        try:
            port = int(fed.hub_url.rpartition(":")[2])
            assert port != taken[0].getsockname()[1]
            await fed.wait_connected()
        finally:
            await fed.aclose()
    finally:
        taken[0].close()


async def test_a_federation_that_ran_before_keeps_its_ports_and_fails_when_one_is_taken(
    tmp_path: Path,
) -> None:
    fed = await start_local_federation(tmp_path, ("hereon", "geomar"))
    port = int(fed.hub_url.rpartition(":")[2])
    await fed.aclose()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old TIME_WAIT
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(TransportError, match="address already in use"):
            await start_local_federation(tmp_path, ("hereon", "geomar"))
    finally:
        holder.close()


def test_a_local_federation_refuses_a_site_named_twice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distinct sites"):
        LocalFederation(tmp_path, sites=("hereon", "hereon"))


def test_a_site_without_a_running_leaf_has_no_url(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, sites=("hereon",))
    with pytest.raises(TransportError, match="no running leaf"):
        fed.site_url("geomar")


# ------------------------------------------------------------------ config builders


def test_hub_and_leaf_configs_are_accepted_by_nats_server(tmp_path: Path) -> None:
    import subprocess

    exe = find_nats_server()
    hub = hub_config("hub", 4222, 7422, tmp_path / "hub")
    leaf = leaf_config("hereon-1", "hereon", 4223, tmp_path / "leaf", ["nats-leaf://h:7422"])
    for name, text in (("hub.conf", hub), ("leaf.conf", leaf)):
        path = tmp_path / name
        path.write_text(text)
        result = subprocess.run(
            [str(exe), "-t", "-c", str(path)], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, result.stderr + result.stdout
    assert 'domain: "hub"' in hub
    assert 'domain: "hereon"' in leaf


def test_a_leaf_without_hub_urls_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        leaf_config("hereon-1", "hereon", 4223, tmp_path, [])


def test_the_example_configs_are_what_the_builders_produce() -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    hub = hub_config(
        "hub-1",
        4222,
        7422,
        "/var/lib/fedhub/nats-hub",
        leaf_users=[
            LeafUser("hereon", "leaf-hereon", "change-me-hereon"),
            LeafUser("geomar", "leaf-geomar", "change-me-geomar"),
        ],
        client_users=[("operator", "change-me-operator")],
    )
    leaf = leaf_config(
        "hereon-1",
        "hereon",
        4222,
        "/var/lib/fedhub/nats-hereon",
        ["nats-leaf://leaf-hereon:change-me-hereon@hub.example.org:7422"],
    )
    assert (configs / "nats-hub.conf").read_text().endswith(hub)
    assert (configs / "nats-leaf-hereon.conf").read_text().endswith(leaf)
