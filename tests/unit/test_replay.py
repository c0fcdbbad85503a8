"""Replay protection: a nonce is accepted once, its memory is bounded by the window, each
request costs O(1), a clock that steps never reopens a replay, and a restart remembers."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from helpers.logs import Keys, open_new_log
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hub.canonical import b64e, canonical_bytes
from hub.errors import CanonicalError, ReplayError
from hub.events import RequestAccepted, RequestReceived
from node.replay import ReplayGuard, recent_nonces

W = 300.0


def accepted(guard: ReplayGuard, nonce: str, sent: float, now: float) -> bool:
    try:
        guard.check_and_remember(nonce, sent, now)
    except ReplayError:
        return False
    return True


# --- the rules --------------------------------------------------------------------------


def test_a_fresh_request_is_accepted_and_its_replay_inside_the_window_refused() -> None:
    guard = ReplayGuard(W)
    guard.check_and_remember("n1", 1000.0, 1000.5)
    with pytest.raises(ReplayError, match="nonce n1 was used before") as caught:
        guard.check_and_remember("n1", 1000.0, 1000.0 + W)
    assert caught.value.code == "replay"
    assert len(guard) == 1


@pytest.mark.parametrize("offset", [-W - 0.001, W + 0.001, -1e9, 1e300, float("nan"), float("inf")])
def test_a_request_time_outside_the_window_is_refused_with_a_clock_hint(offset: float) -> None:
    guard = ReplayGuard(W)
    now = 1_800_000_000.0
    with pytest.raises(ReplayError) as caught:
        guard.check_and_remember("n1", now + offset, now)
    line = caught.value.diagnostics()
    assert "is outside the 300 s window" in line
    assert "check the caller's clock" in line
    assert "n1" not in guard


def test_a_request_time_at_the_edge_of_the_window_is_accepted() -> None:
    guard = ReplayGuard(W)
    guard.check_and_remember("early", 1000.0 - W, 1000.0)
    guard.check_and_remember("late", 1000.0 + W, 1000.0)
    assert len(guard) == 2


def test_a_nonce_is_forgotten_only_after_twice_the_window() -> None:
    guard = ReplayGuard(W)
    guard.check_and_remember("n1", 0.0, 0.0)
    # the same nonce with a fresh time: still refused while a copy could be accepted
    assert not accepted(guard, "n1", 2 * W, 2 * W)
    assert accepted(guard, "n1", 2 * W + 1, 2 * W + 1)


def test_a_refused_request_is_not_remembered() -> None:
    guard = ReplayGuard(W)
    assert not accepted(guard, "n1", 0.0, 10 * W)
    assert accepted(guard, "n1", 10 * W, 10 * W)


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayGuard(0)


def test_the_wall_clock_is_the_default_now() -> None:
    guard = ReplayGuard(W)
    guard.check_and_remember("n1", time.time())
    with pytest.raises(ReplayError, match="outside"):
        guard.check_and_remember("n2", time.time() - 2 * W)


# --- cost and memory --------------------------------------------------------------------


def test_memory_stays_bounded_by_the_window_and_each_call_forgets_what_expired() -> None:
    """100,000 calls, 100 per simulated second, window 5 s: at most the calls of the last
    10 s are held, and once full each call forgets exactly one nonce (no rebuild, no scan:
    the cost of a call does not grow with the calls before it)."""
    window, step, calls = 5.0, 0.01, 100_000
    guard = ReplayGuard(window)
    bound = round(2 * window / step) + 1
    sizes: list[int] = []
    for i in range(calls):
        now = i * step
        guard.check_and_remember(f"n{i}", now, now)
        sizes.append(len(guard))
    assert max(sizes) <= bound
    steady = sizes[bound + 10 :]
    assert min(steady) >= bound - 1
    assert len(set(steady)) <= 2  # flat: each call adds one nonce and forgets about one


# --- a clock that steps -----------------------------------------------------------------


def test_a_clock_stepping_back_forgets_nothing_early() -> None:
    guard = ReplayGuard(W)
    guard.check_and_remember("n1", 1000.0, 1000.0)
    guard.check_and_remember("n2", 900.0, 900.0)  # the clock stepped back 100 s
    # n1 would expire at 1000 + 2W; the step back must not make n2's entry expire first
    assert not accepted(guard, "n1", 1000.0 + W, 1000.0 + 2 * W)
    assert not accepted(guard, "n2", 900.0 + 2 * W, 900.0 + 2 * W + 1)


def test_a_clock_jumping_forward_then_back_never_reopens_a_forgotten_nonce() -> None:
    guard = ReplayGuard(W)
    guard.check_and_remember("n1", 1000.0, 1000.0)
    guard.check_and_remember("other", 1000.0 + 10 * W, 1000.0 + 10 * W)  # jump: n1 forgotten
    assert "n1" not in guard
    with pytest.raises(ReplayError, match="older than requests this node has forgotten") as c:
        guard.check_and_remember("n1", 1000.0, 1001.0)  # the clock is set right again
    assert "clock stepped back" in c.value.diagnostics()


def test_a_clock_stepping_back_and_forth_never_reopens_a_forgotten_nonce() -> None:
    guard = ReplayGuard(W)
    guard.check_and_remember("n1", 1000.0 + W, 1000.0)  # sent as late as the window allows
    guard.check_and_remember("n2", 900.0, 900.0)  # the clock stepped back 100 s
    guard.check_and_remember("n3", 1000.0 + 2 * W + 1, 1000.0 + 2 * W + 1)  # both forgotten
    assert len(guard) == 1
    with pytest.raises(ReplayError, match="forgotten"):
        guard.check_and_remember("n1", 1000.0 + W, 1000.0)  # and back again


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),  # which nonce
            st.integers(-700, 700),  # sent, relative to the first call
            st.integers(-2000, 2000),  # the clock's step before this call (either way)
        ),
        max_size=60,
    )
)
def test_whatever_the_clock_does_a_request_is_never_accepted_twice(
    calls: list[tuple[int, int, int]],
) -> None:
    guard = ReplayGuard(W)
    now = 0.0
    seen: set[tuple[str, float]] = set()
    for which, sent, step in calls:
        now += step
        request = (f"n{which}", float(sent))
        if accepted(guard, *request, now):
            assert request not in seen
            seen.add(request)


# --- the guard against a plain model ----------------------------------------------------


class GuardVersusModel(RuleBasedStateMachine):
    """On a clock that never goes back, the guard decides exactly as a dict that keeps
    every nonce with its arrival time forever, across restarts too."""

    def __init__(self) -> None:
        super().__init__()
        self.window = 10.0
        self.guard = ReplayGuard(self.window)
        self.now = 0.0
        self.arrived: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.fresh = 0

    def model(self, nonce: str, sent: float) -> bool:
        if abs(self.now - sent) > self.window:
            return False
        arrived = self.arrived.get(nonce)
        return arrived is None or arrived + 2 * self.window < self.now

    def call(self, nonce: str, sent: float) -> None:
        expected = self.model(nonce, sent)
        assert accepted(self.guard, nonce, sent, self.now) == expected
        if expected:
            self.arrived[nonce] = self.now
            self.sent[nonce] = sent
        # each call forgets what expired: nothing else is held
        live = [n for n, a in self.arrived.items() if a + 2 * self.window >= self.now]
        assert len(self.guard) == len(live)

    @rule(seconds=st.integers(0, 25))
    def tick(self, seconds: int) -> None:
        self.now += seconds

    @rule(offset=st.integers(-12, 12))
    def new_request(self, offset: int) -> None:
        self.fresh += 1
        self.call(f"n{self.fresh}", self.now + offset)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.sent)))
        self.call(nonce, self.sent[nonce])

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), offset=st.integers(-12, 12))
    def same_nonce_new_time(self, data: st.DataObject, offset: int) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.sent)))
        self.call(nonce, self.now + offset)

    @rule()
    def restart(self) -> None:
        """A new guard loaded with what the log holds of the last two windows."""
        self.guard = ReplayGuard(self.window)
        recent = [(n, a) for n, a in self.arrived.items() if a >= self.now - 2 * self.window]
        self.guard.load(reversed(recent))

    @invariant()
    def every_nonce_that_could_still_be_accepted_is_held(self) -> None:
        for nonce, arrived in self.arrived.items():
            if arrived + 2 * self.window >= self.now:
                assert nonce in self.guard


TestGuardVersusModel = GuardVersusModel.TestCase
TestGuardVersusModel.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)


# --- a restart --------------------------------------------------------------------------


def _AcceptedV2(request_id: str, header: str) -> RequestAccepted:
    """A log v2 ``request.accepted``: it carries the caller's signed header."""
    return RequestAccepted(
        request_id=request_id,
        header=header,
        sig="c2ln",
    )


def _received(rid: str, nonce: str) -> RequestReceived:
    return RequestReceived(
        request_id=rid,
        caller="klaus@geomar",
        address="hereon.climate.compute_sum",
        header=b64e(canonical_bytes({"nonce": "not-this-one"})),
        sig="c2ln",
        nonce=nonce,
        payload_hash="ab" * 32,
        payload_size=1,
    )


def _header(rid: str, nonce: str) -> str:
    header = {
        "v": 1,
        "id": rid,
        "caller": "klaus@geomar",
        "site": "hereon",
        "module": "climate",
        "function": "compute_sum",
        "nonce": nonce,
        "time": "t",
    }
    return b64e(canonical_bytes(header))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """A real log: v1 requests, then (as after an upgrade) v2 accepted events."""
    path = tmp_path / "events.db"
    with open_new_log(path, Keys.generate()) as log:
        log.append_many([_received("req00001", "bm9uY2Ux"), RequestAccepted(request_id="req00001")])
        log.append_many([_received("req00002", "bm9uY2Uy")])
        log.append_many(
            [_AcceptedV2(request_id="req00003", header=_header("req00003", "djJub25jZQ"))]
        )
    return path


def _read(path: Path, window: float, now: float) -> list[tuple[str, float]]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return recent_nonces(conn, window, now)
    finally:
        conn.close()


def test_recent_nonces_come_from_v1_received_events_and_v2_signed_headers(
    log_path: Path,
) -> None:
    now = time.time()
    found = _read(log_path, W, now)
    assert [nonce for nonce, _ in found] == ["bm9uY2Ux", "bm9uY2Uy", "djJub25jZQ"]
    assert all(now - 60 < received <= now for _, received in found)


def test_recent_nonces_leave_out_requests_older_than_twice_the_window(log_path: Path) -> None:
    later = time.time() + 2 * W + 60
    assert _read(log_path, W, later) == []


def test_a_restarted_guard_refuses_a_replay_of_a_request_received_before(log_path: Path) -> None:
    now = time.time()
    guard = ReplayGuard(W)
    assert guard.load(_read(log_path, W, now)) == 3
    for nonce in ("bm9uY2Ux", "djJub25jZQ"):
        with pytest.raises(ReplayError, match="used before"):
            guard.check_and_remember(nonce, now, now)
    guard.check_and_remember("bm9uY2Uz", now, now)


def test_loaded_nonces_are_forgotten_twice_the_window_after_they_arrived() -> None:
    guard = ReplayGuard(W)
    guard.load([("b", 20.0), ("a", 10.0), ("a", 10.0)])
    assert len(guard) == 2
    guard.check_and_remember("c", 20.0 + 2 * W + 1, 20.0 + 2 * W + 1)
    assert len(guard) == 1


def test_an_unreadable_signed_header_in_the_log_is_an_error_naming_the_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    with open_new_log(path, Keys.generate()) as log:
        log.append_many([_AcceptedV2(request_id="req00009", header="bm90IGpzb24")])
    with pytest.raises(CanonicalError, match="event 2: cannot read the request's nonce"):
        _read(path, W, time.time())


def test_a_restart_on_a_clock_set_ahead_then_set_right_never_reopens_a_request_left_out(
    log_path: Path,
) -> None:
    """The node restarts while its clock reads 3 windows ahead: the log's requests are too
    old to be read back. Once the clock is set right, a replay of one of them (its time
    still inside the window) is refused: the guard starts as if it had forgotten them."""
    sent = time.time()
    ahead = sent + 3 * W
    guard = ReplayGuard(W)
    assert guard.load(_read(log_path, W, ahead), read_at=ahead) == 0
    with pytest.raises(ReplayError, match="older than requests this node has forgotten"):
        guard.check_and_remember("bm9uY2Ux", sent, sent + 1)
    guard.check_and_remember("fresh", ahead, ahead)  # a request on the clock it read is fine


def test_the_floor_a_restart_sets_refuses_nothing_the_window_would_accept(log_path: Path) -> None:
    now = time.time()
    guard = ReplayGuard(W)
    guard.load(_read(log_path, W, now), read_at=now)
    guard.check_and_remember("early", now - W + 1, now)  # inside the window, never seen
    with pytest.raises(ReplayError, match="outside"):
        guard.check_and_remember("late", now - W - 1, now)
