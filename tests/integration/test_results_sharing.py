"""Kept results shared with a colleague: the owner wraps the content key for the
colleague's key (nothing uploaded again), the colleague fetches with their own key store,
a third person is refused everything, a revoked share stops later fetches, a forged share
is refused, and every step is an event the audit accepts.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from support.bulk import BULKDATA, MiB
from support.results import (
    COLLEAGUE,
    MEMBER,
    OWNER,
    PEOPLE,
    THIRD,
    audit_clean,
    hereon_node,
    people_world,
    stored_result,
)
from support.world import World

from hub.answers import RequestStatus, error_from_headers
from hub.canonical import b64e, parse_canonical
from hub.client import Client, connect
from hub.clock import now
from hub.crypto import wrap_key
from hub.envelopes import pack_stored_result, unpack_stored_result
from hub.errors import (
    DecryptionError,
    IntegrityError,
    NotFoundError,
    ReplayError,
    UnauthorizedError,
)
from hub.lifecycle import RequestState
from hub.logfile import iter_log
from hub.nats import connect as nats_connect
from hub.nats import put_object
from hub.records import GroupRecord, sign_record
from hub.results_wire import CatalogHeader, pack_catalog
from hub.subjects import RESULTS_BUCKET, admin_subject, status_subject
from node.admin import admin_message
from node.config import NodeConfig
from node.daemon import NodeDaemon


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Four people of geomar; ben is in geomar's group ``ocean``."""
    return people_world(tmp_path, (*PEOPLE, MEMBER), groups={MEMBER: ["ocean"]})


@pytest.fixture
def cfg(world: World) -> NodeConfig:
    """A hereon node: all four are registered (ben's record names his group); only klaus
    may call."""
    cfg = hereon_node(world, (*PEOPLE, MEMBER))
    world.record_file(world.store.load(MEMBER), groups=["ocean"])  # read when the node starts
    return cfg


async def _kept_result(node: NodeDaemon, world: World) -> str:
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        handle = await fed.submit("hereon.climate.scale", values=[1.0, 2.0], timeout=15)
        assert await handle.result() == [2.0, 4.0]
        return handle.request_id


def _event_types(cfg: NodeConfig) -> list[str]:
    return [str(parse_canonical(e.body)["type"]) for e in iter_log(cfg.log_path)]


async def test_a_colleague_fetches_a_shared_result_with_their_own_key_until_the_share_is_revoked(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    rid = await _kept_result(node, world)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        answer = await owner.share("hereon", rid, COLLEAGUE)
        assert answer.recipients == (world.store.load(COLLEAGUE).kid,)
        mine = await owner.requests("hereon")
        assert [r.shares for r in mine if r.request_id == rid] == [(COLLEAGUE,)]
    async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
        listed = await anna.requests("hereon")
        assert [(r.request_id, r.shared_with_me, r.caller) for r in listed] == [(rid, True, OWNER)]
        handle = await anna.result(rid, site="hereon")
        assert await handle.result() == [2.0, 4.0]
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        await owner.unshare("hereon", rid, COLLEAGUE)
    async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
        with pytest.raises(NotFoundError):
            await (await anna.result(rid, site="hereon")).result()
        assert list(await anna.requests("hereon")) == []
    types = _event_types(cfg)
    assert types.count("result.shared") == 1
    assert types.count("result.unshared") == 1
    assert types.count("result.fetched") == 1  # the colleague's one fetch
    audit_clean(cfg, world)


async def test_a_third_person_can_neither_list_fetch_nor_share_anothers_result(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    rid = await _kept_result(node, world)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        await owner.share("hereon", rid, COLLEAGUE)
    async with await Client.connect(node.url, THIRD, home=world.store.home) as mallory:
        assert list(await mallory.requests("hereon")) == []
        with pytest.raises(NotFoundError):
            await mallory.result(rid, site="hereon")
        with pytest.raises(NotFoundError):
            await mallory.share("hereon", rid, THIRD)
        with pytest.raises(NotFoundError):
            await mallory.unshare("hereon", rid, COLLEAGUE)
        with pytest.raises(NotFoundError):
            await mallory.fetch("hereon", rid)
    assert _event_types(cfg).count("result.fetched") == 0


async def test_a_share_sent_under_the_owners_name_but_signed_by_another_key_is_refused(
    node: NodeDaemon, world: World
) -> None:
    rid = await _kept_result(node, world)
    mallory, anna = world.store.load(THIRD), world.store.load(COLLEAGUE)
    forged = CatalogHeader(
        op="share",
        id=rid,
        caller=OWNER,
        kid=world.store.load(OWNER).kid,
        time=now(),
        nonce=b64e(secrets.token_bytes(12)),
        args={
            "principal": THIRD,
            "wraps": {
                mallory.kid: b64e(
                    wrap_key(mallory.box_secret, mallory.box_public, anna.box_public, b"k" * 32)
                )
            },
        },
    )
    nc = await nats_connect(node.url)
    try:
        msg = await nc.request(
            status_subject("hereon"), pack_catalog(forged, mallory.signing_key), timeout=5
        )
    finally:
        await nc.close()
    assert isinstance(error_from_headers(msg.headers), UnauthorizedError)


async def test_a_wrap_not_made_by_the_owners_key_and_a_replayed_share_are_refused(
    node: NodeDaemon, world: World
) -> None:
    rid = await _kept_result(node, world)
    owner, mallory, anna = (world.store.load(w) for w in (OWNER, THIRD, COLLEAGUE))
    header = CatalogHeader(
        op="share",
        id=rid,
        caller=OWNER,
        kid=owner.kid,
        time=now(),
        nonce=b64e(secrets.token_bytes(12)),
        args={
            "principal": COLLEAGUE,
            "wraps": {
                anna.kid: b64e(
                    wrap_key(mallory.box_secret, mallory.box_public, anna.box_public, b"k" * 32)
                )
            },
        },
    )
    signed = pack_catalog(header, owner.signing_key)
    nc = await nats_connect(node.url)
    try:
        first = await nc.request(status_subject("hereon"), signed, timeout=5)
        again = await nc.request(status_subject("hereon"), signed, timeout=5)
    finally:
        await nc.close()
    assert isinstance(error_from_headers(first.headers), UnauthorizedError)
    assert isinstance(error_from_headers(again.headers), ReplayError)


async def test_a_result_shared_with_a_group_opens_for_its_member_and_not_for_others(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    rid = await _kept_result(node, world)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        answer = await owner.share("hereon", rid, "group:ocean")
    assert answer.recipients == (world.store.load(MEMBER).kid,)
    async with await Client.connect(node.url, MEMBER, home=world.store.home) as ben:
        assert await (await ben.result(rid, site="hereon")).result() == [2.0, 4.0]
    async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
        with pytest.raises(NotFoundError):
            await anna.result(rid, site="hereon")
    audit_clean(cfg, world)


async def test_the_owner_still_fetches_and_sees_the_size_after_sharing(
    node: NodeDaemon, world: World
) -> None:
    rid = await _kept_result(node, world)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        await owner.share("hereon", rid, COLLEAGUE)
        assert await owner.fetch("hereon", rid) == [2.0, 4.0]
        assert await (await owner.result(rid, site="hereon")).result() == [2.0, 4.0]
        status = await owner.status("hereon", rid)
    assert isinstance(status, RequestStatus)
    assert status.state == RequestState.COMPLETED
    assert status.result_size is not None and status.result_size > 0


async def test_the_blocking_client_lists_shares_and_opens_a_shared_result(
    node: NodeDaemon, world: World
) -> None:
    rid = await _kept_result(node, world)

    def as_people() -> tuple[list[str], object]:
        with connect(node.url, OWNER, home=world.store.home) as owner:
            owner.share("hereon", rid, COLLEAGUE)
            owner.tag("hereon", rid, ["seen"], shared=True)
        with connect(node.url, COLLEAGUE, home=world.store.home) as anna:
            tags = [t for r in anna.requests("hereon") for t in r.shared_tags]
            return tags, anna.result(rid, site="hereon").result(timeout=15)

    tags, value = await asyncio.to_thread(as_people)
    assert tags == ["seen"]
    assert value == [2.0, 4.0]


async def _tamper(node: NodeDaemon, rid: str, change: Callable[[bytes], bytes]) -> None:
    assert node.nc is not None
    js = node.nc.jetstream()
    stored = await stored_result(js, rid)
    await put_object(js, RESULTS_BUCKET, rid, change(stored))


async def test_a_tampered_stored_result_fails_cleanly_for_the_owner_and_the_reader(
    node: NodeDaemon, world: World
) -> None:
    rid = await _kept_result(node, world)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        await owner.share("hereon", rid, COLLEAGUE)
    await _tamper(node, rid, lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        with pytest.raises(IntegrityError):
            await owner.fetch("hereon", rid)
    async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
        with pytest.raises(IntegrityError):
            await (await anna.result(rid, site="hereon")).result()


async def test_a_stored_head_with_a_wrap_swapped_in_cannot_trick_the_owner_into_sharing(
    node: NodeDaemon, world: World
) -> None:
    rid = await _kept_result(node, world)
    owner, mallory = world.store.load(OWNER), world.store.load(THIRD)
    forged = b64e(wrap_key(mallory.box_secret, mallory.box_public, owner.box_public, b"k" * 32))

    def swap(data: bytes) -> bytes:
        head, ciphertext = unpack_stored_result(data)
        return pack_stored_result({**head.wraps, owner.kid: forged}, ciphertext)

    await _tamper(node, rid, swap)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as fed:
        with pytest.raises(DecryptionError):
            await fed.share("hereon", rid, COLLEAGUE)
        with pytest.raises(DecryptionError):
            await fed.fetch("hereon", rid)


async def test_a_large_shared_result_reaches_the_colleague_as_a_bulk_transfer(
    world: World, tmp_path: Path
) -> None:
    cfg = world.node_config(
        "hereon",
        name="bulk",
        trust=["geomar"],
        users=[OWNER, COLLEAGUE, THIRD],
        modules=[("bulk", BULKDATA)],
        grants=[(OWNER, "bulk", "*")],
        calls={"bulk_threshold": MiB},
    )
    async with NodeDaemon(cfg, grace=2) as node:
        async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
            owner.bulk_threshold = MiB
            handle = await owner.submit("hereon.bulk.blob", size=3 * MiB + 5, timeout=60)
            data = await handle.result()
            await owner.share("hereon", handle.request_id, COLLEAGUE)
        async with await Client.connect(node.url, COLLEAGUE, home=world.store.home) as anna:
            again = await (await anna.result(handle.request_id, site="hereon")).result()
        async with await Client.connect(node.url, THIRD, home=world.store.home) as mallory:
            with pytest.raises(NotFoundError):
                await mallory.result(handle.request_id, site="hereon")
    assert len(data) == 3 * MiB + 5
    assert again == data
    assert _event_types(cfg).count("result.fetched") == 1


async def test_a_result_shared_with_a_federation_group_opens_for_members_of_its_nested_groups(
    node: NodeDaemon, world: World, cfg: NodeConfig
) -> None:
    anna = world.store.load(COLLEAGUE)
    team, project = f"group:{COLLEAGUE}/team", f"group:{COLLEAGUE}/project"
    records = [
        GroupRecord(group=team, owner=COLLEAGUE, members=(MEMBER,), serial=1, time=now()),
        GroupRecord(group=project, owner=COLLEAGUE, members=(team,), serial=1, time=now()),
    ]
    nc = await nats_connect(node.url)
    try:
        for record in records:
            signed = sign_record(record, anna.signing_key)
            msg = await nc.request(admin_subject("hereon"), admin_message("group", signed), 5)
            assert error_from_headers(msg.headers) is None
    finally:
        await nc.close()
    rid = await _kept_result(node, world)
    async with await Client.connect(node.url, OWNER, home=world.store.home) as owner:
        answer = await owner.share("hereon", rid, project)
    assert answer.recipients == (world.store.load(MEMBER).kid,)
    async with await Client.connect(node.url, MEMBER, home=world.store.home) as ben:
        assert await (await ben.result(rid, site="hereon")).result() == [2.0, 4.0]
    async with await Client.connect(node.url, THIRD, home=world.store.home) as mallory:
        with pytest.raises(NotFoundError):
            await mallory.result(rid, site="hereon")
    audit_clean(cfg, world)
