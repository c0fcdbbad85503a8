"""The pure parts of the node's NATS link: backoff, error descriptions, URLs in logs."""

from __future__ import annotations

import nats.errors
from hypothesis import given
from hypothesis import strategies as st

from node.natslink import backoff_delay, describe_nats_error, is_auth_error, safe_url


@given(st.integers(min_value=1, max_value=200))
def test_backoff_doubles_from_half_a_second_and_never_exceeds_its_cap(attempt: int) -> None:
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    delay = backoff_delay(attempt, cap=30.0)
    assert ceiling / 2 <= delay <= ceiling <= 30.0


def test_backoff_is_jittered_so_restarted_nodes_spread_out() -> None:
    assert len({backoff_delay(8) for _ in range(20)}) > 1


def test_an_authorization_violation_is_named_as_such() -> None:
    exc = nats.errors.Error("nats: 'Authorization Violation'")
    assert is_auth_error(exc)
    assert "authorization" in describe_nats_error(exc)
    assert is_auth_error(nats.errors.AuthorizationError())


def test_a_refused_connection_is_not_an_authorization_error() -> None:
    exc = ConnectionRefusedError(111, "Connect call failed")
    assert not is_auth_error(exc)
    assert describe_nats_error(exc) == "connection refused (no server listening)"
    assert "no answer" in describe_nats_error(TimeoutError())


def test_passwords_in_urls_are_hidden_from_the_log() -> None:
    assert safe_url("nats://node:s3cret@host:4222") == "nats://node:***@host:4222"
    assert safe_url("nats://host:4222") == "nats://host:4222"
    assert "s3cret" not in safe_url("tls://u:s3cret@a@host:1")
