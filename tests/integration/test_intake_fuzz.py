"""Fuzzing the node's intake: whatever arrives on the call stream, the node never crashes,
never runs an unauthorized or replayed call, and logs every rejection.

One node for the module (its own embedded server), served on a loop in its own thread;
hypothesis drives :meth:`node.pipeline.Pipeline.handle` with random bytes, truncated and
bit-flipped envelopes, wrong signers, unknown, ungranted and revoked keys, stale and future
timestamps, reused nonces, replays and misrouted requests. A last pass pushes hostile
messages through the real stream and consumer.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile import (
    Crafted,
    LogView,
    NodeThread,
    audit_node,
    craft_request,
    flip_bit,
    time_text,
    wait_until,
)
from support.world import World

from hub.canonical import b64d, canonical_bytes, parse_canonical
from hub.client import Client
from hub.clock import now
from hub.crypto import sign
from hub.envelopes import DOMAIN_REQUEST, REQUEST_MAGIC, split_request
from hub.events import KeyRevoked
from hub.keys import KeyPair
from hub.nats import connect as nats_connect
from hub.records import Revocation, sign_record
from hub.subjects import CALLS_CONSUMER, CALLS_STREAM
from node.bootstrap import open_log
from node.config import NodeConfig
from node.daemon import NodeDaemon
from node.pipeline import Outcome

KLAUS = "klaus@geomar"  # registered and granted
EVE = "eve@geomar"  # registered, no grant
RITA = "rita@geomar"  # registered and granted, then revoked
MALLORY = "mallory@geomar"  # never registered
ADDRESS = "hereon.climate.scale"
SUBJECT = "fh.call.hereon.climate.scale"

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Intake:
    """The node under test and what the attackers know."""

    world: World
    cfg: NodeConfig
    node: NodeThread
    node_kid: str
    node_box_key: bytes
    first: Crafted  # a call klaus made (and that completed)
    first_nonce: str = ""

    def handle(self, data: bytes, subject: str = SUBJECT, delivery: int = 1) -> Outcome:
        """Feed one message to the pipeline, as the pull loop would."""
        pipeline = self.node.node.pipeline
        assert pipeline is not None
        return self.node.run(pipeline.handle(data, subject, delivery=delivery), timeout=30)

    def runs(self) -> int:
        """Function runs the runner has seen start (whatever their end)."""
        runner = self.node.node.runner
        assert runner is not None
        s = runner.stats()["climate"]
        return sum(s[k] for k in ("in_flight", "completed", "failed", "timed_out", "cancelled"))

    @property
    def view(self) -> LogView:
        """The node's log."""
        return LogView(self.cfg.log_path)

    def request(self, who: str = KLAUS, **overrides: Any) -> Crafted:
        """A fresh request signed by ``who`` (overrides go to :func:`craft_request`)."""
        args: dict[str, Any] = {
            "node_kid": self.node_kid,
            "node_box_key": self.node_box_key,
            "address": ADDRESS,
            "kwargs": {"values": [1.0, 2.0]},
        }
        args.update(overrides)
        return craft_request(self.world.store.load(who), **args)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    """The node: klaus, eve and rita registered; klaus and rita granted; rita revoked."""
    world = World(tmp_path_factory.mktemp("intake"))
    for who in (KLAUS, EVE, RITA):
        world.person(who)
    world.person(MALLORY, vouch=False)
    cfg = world.node_config(
        "hereon",
        trust=["geomar"],
        users=[KLAUS, EVE, RITA],
        grants=[(KLAUS, "climate", "*"), (RITA, "climate", "*")],
    )

    async def register() -> None:
        async with NodeDaemon(cfg, grace=1):
            pass

    asyncio.run(register())  # the node registers the users' keys in its log
    rita = world.store.load(RITA)
    revocation = Revocation(identity=RITA, kid=rita.kid, time=now(), reason="left the project")
    with open_log(cfg) as log:  # a local ban, signed by hereon (no admin command yet)
        log.append(KeyRevoked(revocation=sign_record(revocation, world.site("hereon").signing_key)))

    node = NodeThread(cfg, grace=1)
    try:
        key = node.node.eventlog.key  # type: ignore[union-attr]
        probe = Intake(world, cfg, node, key.kid, key.box_public, first=None)  # type: ignore[arg-type]
        first = probe.request()
        assert probe.handle(first.data).state == "completed"
        probe.first = first
        header = b64d(probe.view.events("request.accepted")[0]["data"]["header"])
        probe.first_nonce = json.loads(header)["nonce"]
        yield probe
    finally:
        node.stop()


def check_rejected(intake: Intake, data: bytes, subject: str = SUBJECT) -> Outcome:
    """``data`` is rejected, logged once as a rejection, and runs nothing."""
    rejections, runs = intake.view.count("request.rejected"), intake.runs()
    outcome = intake.handle(data, subject)
    assert outcome.state == "rejected", outcome
    new = intake.view.rejections(skip=rejections)
    assert [r["code"] for r in new] == [outcome.code], "each rejection logged once"
    assert intake.runs() == runs, "nothing ran"
    return outcome


# --- the harness sees a run when there is one ---------------------------------------------


def test_a_valid_request_runs_once_so_the_counters_below_mean_something(intake: Intake) -> None:
    runs, accepted = intake.runs(), intake.view.counts()["request.accepted"]
    assert intake.handle(intake.request().data).state == "completed"
    assert intake.runs() == runs + 1
    assert intake.view.counts()["request.accepted"] == accepted + 1


# --- noise, truncation, bit flips ---------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"FHR1", b"FHR1\x00\x00"]))
def test_random_bytes_are_rejected_and_logged(intake: Intake, data: bytes, prefix: bytes) -> None:
    check_rejected(intake, prefix + data)


@FUZZ
@given(cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_truncated_request_is_rejected(intake: Intake, cut: float) -> None:
    data = intake.request().data
    check_rejected(intake, data[: int(len(data) * cut)])


@FUZZ
@given(where=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_request_with_one_bit_flipped_is_rejected(intake: Intake, where: float) -> None:
    data = intake.request().data
    check_rejected(intake, flip_bit(data, int(len(data) * 8 * where)))


# --- who signs, who asks, when, how often -------------------------------------------------


def _impersonation(intake: Intake) -> tuple[bytes, str]:
    klaus = intake.world.store.load(KLAUS)
    return intake.request(MALLORY, claim=KLAUS, claim_kid=klaus.kid).data, SUBJECT


def _attack(intake: Intake, kind: str) -> tuple[bytes, str, str]:
    """(message, subject, expected rejection code) for one kind of attack."""
    if kind == "signed-by-someone-else":
        return (*_impersonation(intake), "bad_signature")
    if kind == "unregistered-key":
        return intake.request(MALLORY).data, SUBJECT, "unauthorized"
    if kind == "no-grant":
        return intake.request(EVE).data, SUBJECT, "unauthorized"
    if kind == "revoked-key":
        return intake.request(RITA).data, SUBJECT, "unauthorized"
    if kind == "stale":
        return intake.request(sent=time_text(-3600)).data, SUBJECT, "replay"
    if kind == "from-the-future":
        return intake.request(sent=time_text(+3600)).data, SUBJECT, "replay"
    if kind == "nonce-reused":
        return intake.request(nonce=intake.first_nonce).data, SUBJECT, "replay"
    if kind == "replayed":
        return intake.first.data, SUBJECT, "replay"
    if kind == "misrouted":
        return intake.request().data, "fh.call.hereon.climate.fail", "misrouted"
    if kind == "other-site":
        return intake.request(address="geomar.climate.scale").data, SUBJECT, "misrouted"
    if kind == "unknown-function":
        crafted = intake.request(address="hereon.climate.launch")
        return crafted.data, crafted.subject, "not_found"
    raise AssertionError(kind)


def _resigned(intake: Intake, change: Any, who: str = KLAUS) -> bytes:
    """A fresh request of ``who`` whose header ``change`` rewrote (a function of the
    header's fields returning the new fields, or header bytes), signed again by ``who``."""
    header_bytes, _, ciphertext = split_request(intake.request(who).data)
    fields = parse_canonical(header_bytes)
    new = change(fields)
    body = new if isinstance(new, bytes) else canonical_bytes(new)
    sig = sign(intake.world.store.load(who).signing_key, DOMAIN_REQUEST, body)
    return REQUEST_MAGIC + len(body).to_bytes(4, "big") + body + sig + ciphertext


def _without(field: str) -> Any:
    return lambda fields: {k: v for k, v in fields.items() if k != field}


def _with(**values: Any) -> Any:
    return lambda fields: {**fields, **values}


def _signature_of_another_header(intake: Intake) -> bytes:
    mine, other = intake.request().data, intake.request().data
    header, _, ciphertext = split_request(mine)
    _, sig, _ = split_request(other)
    return REQUEST_MAGIC + len(header).to_bytes(4, "big") + header + sig + ciphertext


#: (message maker, expected rejection code) of each malformed request a registered caller
#: could sign (or send with a valid signature of another message).
MALFORMED = {
    "signed-header-not-json": (lambda i: _resigned(i, lambda f: b"{not json"), "malformed"),
    "signed-header-not-an-object": (lambda i: _resigned(i, lambda f: b"[1,2]"), "malformed"),
    "signed-header-missing-a-field": (
        lambda i: _resigned(i, _without("payload_hash")),
        "malformed",
    ),
    "signed-header-field-of-wrong-type": (
        lambda i: _resigned(i, _with(timeout_ms="soon")),
        "malformed",
    ),
    "signed-header-unknown-field": (lambda i: _resigned(i, _with(surprise=1)), "malformed"),
    "signed-header-huge": (lambda i: _resigned(i, _with(pad="x" * 70_000)), "malformed"),
    "signed-wrap-not-base64": (lambda i: _resigned(i, _with(wraps={i.node_kid: "A"})), "malformed"),
    "signed-nonce-not-base64": (lambda i: _resigned(i, _with(nonce="%%%")), "malformed"),
    "signature-of-another-header": (_signature_of_another_header, "bad_signature"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_each_malformed_request_a_caller_signs_is_rejected_with_its_code(
    intake: Intake, kind: str
) -> None:
    make, code = MALFORMED[kind]
    assert check_rejected(intake, make(intake)).code == code
    assert intake.handle(intake.request().data).state == "completed", "the node serves on"


ATTACKS = [
    "signed-by-someone-else",
    "unregistered-key",
    "no-grant",
    "revoked-key",
    "stale",
    "from-the-future",
    "nonce-reused",
    "replayed",
    "misrouted",
    "other-site",
    "unknown-function",
]


@pytest.mark.parametrize("kind", ATTACKS)
def test_each_kind_of_hostile_request_is_rejected_with_its_code(intake: Intake, kind: str) -> None:
    data, subject, code = _attack(intake, kind)
    assert check_rejected(intake, data, subject).code == code


@settings(FUZZ, max_examples=50)
@given(kinds=st.lists(st.sampled_from(ATTACKS), min_size=1, max_size=6), valid=st.booleans())
def test_hostile_requests_mixed_with_valid_ones_never_run_and_the_valid_ones_do(
    intake: Intake, kinds: list[str], valid: bool
) -> None:
    for kind in kinds:
        data, subject, code = _attack(intake, kind)
        assert check_rejected(intake, data, subject).code == code
    if valid:
        runs = intake.runs()
        assert intake.handle(intake.request().data).state == "completed"
        assert intake.runs() == runs + 1


@FUZZ
@given(delivery=st.integers(min_value=2, max_value=5))
def test_a_redelivered_finished_request_is_answered_again_but_not_run(
    intake: Intake, delivery: int
) -> None:
    runs, finals = intake.runs(), len(intake.view.finals())
    outcome = intake.handle(intake.first.data, delivery=delivery)
    assert (outcome.state, outcome.code) == ("duplicate", "completed")
    assert intake.runs() == runs
    assert len(intake.view.finals()) == finals


def test_a_request_for_a_key_wrapped_for_someone_else_fails_without_running(
    intake: Intake,
) -> None:
    other = KeyPair.generate("node:hereon/n9")
    crafted = intake.request(node_kid=other.kid, node_box_key=other.box_public)
    runs = intake.runs()
    outcome = intake.handle(crafted.data)
    assert (outcome.state, outcome.code) == ("failed", "undecryptable")
    assert intake.runs() == runs


def test_a_forged_message_claiming_a_request_id_does_not_block_the_real_request(
    intake: Intake,
) -> None:
    # Request headers travel in the clear: anyone on the path learns a request's id. A
    # forgery carrying that id (bad signature) that reaches the node first must not make
    # the real request look like a replay.
    real = intake.request()
    header_end = 8 + int.from_bytes(real.data[4:8], "big")
    forged = flip_bit(real.data, (header_end + 5) * 8)  # inside the signature
    assert check_rejected(intake, forged).code == "bad_signature"
    assert intake.handle(real.data).state == "completed"


# --- through the real stream ----------------------------------------------------------------


async def test_hostile_messages_on_the_stream_are_acked_and_the_node_keeps_serving(
    intake: Intake,
) -> None:
    url = intake.node.node.url
    hostile = [
        secrets.token_bytes(300),
        intake.request().data[:100],
        flip_bit(intake.request().data, 900),
        _impersonation(intake)[0],
        intake.first.data,
    ]
    before = intake.view.count("request.rejected")
    nc = await nats_connect(url)
    try:
        js = nc.jetstream()
        for data in hostile:
            await js.publish(SUBJECT, data, headers={"Nats-Msg-Id": secrets.token_hex(8)})
        view = intake.view
        await wait_until(lambda: view.count("request.rejected") >= before + len(hostile), limit=15)

        async def settled() -> bool:
            info = await js.consumer_info(CALLS_STREAM, CALLS_CONSUMER)
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await wait_until(settled)
    finally:
        await nc.close()
    assert intake.view.count("request.rejected") == before + len(hostile)
    async with await Client.connect(url, KLAUS, home=intake.world.store.home) as fed:
        assert await fed.call(ADDRESS, values=[3.0], factor=3.0, timeout=15) == [9.0]


def test_after_all_of_it_the_log_audits_clean(intake: Intake) -> None:
    report = audit_node(intake.cfg, intake.world.site("hereon").sign_public)
    assert report.ok, [f.line() for f in report.findings]
    assert report.types["request.rejected"] > 100
