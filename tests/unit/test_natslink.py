"""The pure parts of the node's NATS link: backoff, error descriptions, URLs in logs."""

from __future__ import annotations

from pathlib import Path

import nats.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.errors import ConfigError
from node import natslink
from node.natslink import (
    backoff_delay,
    describe_nats_error,
    is_auth_error,
    nats_auth_options,
    safe_url,
)


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


@pytest.fixture
def with_nkeys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(natslink, "_nkeys_installed", lambda: True)


CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4
------END USER NKEY SEED------
"""


def test_a_creds_file_and_a_bare_nkey_seed_are_both_understood(
    tmp_path: Path, with_nkeys: None
) -> None:
    creds, seed = tmp_path / "node.creds", tmp_path / "node.nk"
    creds.write_text(CREDS)
    seed.write_text("SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n")
    assert nats_auth_options(creds) == {"user_credentials": str(creds)}
    assert nats_auth_options(seed) == {"nkeys_seed": str(seed)}


def test_a_credentials_file_that_is_neither_is_a_config_error(
    tmp_path: Path, with_nkeys: None
) -> None:
    junk = tmp_path / "node.creds"
    junk.write_text("user: hereon\npassword: secret\n")
    with pytest.raises(ConfigError, match=r"neither a \.creds file nor an NKey user seed"):
        nats_auth_options(junk)
    with pytest.raises(ConfigError, match="cannot read"):
        nats_auth_options(tmp_path / "missing.creds")


def test_credentials_without_the_nkeys_package_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(natslink, "_nkeys_installed", lambda: False)
    creds = tmp_path / "node.creds"
    creds.write_text(CREDS)
    with pytest.raises(ConfigError) as err:
        nats_auth_options(creds)
    assert err.value.hint is not None and "pip install nkeys" in err.value.hint
