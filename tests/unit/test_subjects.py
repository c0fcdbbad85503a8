"""Subject and identity names: build/parse round-trips, and bad names refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import subjects
from hub.errors import ConfigError

sites = st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
functions = st.one_of(identifiers, st.builds("{}.{}".format, identifiers, identifiers))
names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
tokens = st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)

# Each contains something no valid site may: a dot, a space, a wildcard, upper case ...
bad_sites = st.one_of(
    st.just(""),
    st.just("a" * 33),
    st.builds("{}{}{}".format, sites, st.sampled_from([".", " ", "*", ">", "\n", "A"]), sites),
    st.sampled_from(["1site", "-site", "_site", "*", ">", "hereon\n"]),
)
bad_identifiers = st.one_of(
    st.sampled_from(["", "1abc", "a-b", "a b", "*", ">", "a.b.c", "a\n", "é"]),
    st.builds("{}{}".format, identifiers, st.sampled_from(["*", ">", " ", "-", "."])),
)


@given(sites, identifiers, functions)
def test_a_call_subject_parses_back_to_its_parts(site: str, module: str, function: str) -> None:
    subject = subjects.call_subject(site, module, function)
    address = subjects.parse_call_subject(subject)
    assert (address.site, address.module, address.function) == (site, module, function)
    assert address.subject == subject
    assert subjects.parse_address(address.address) == address


@given(sites, identifiers, functions)
def test_a_call_subject_has_one_token_per_part(site: str, module: str, function: str) -> None:
    subject = subjects.call_subject(site, module, function)
    assert subject.split(".")[:4] == ["fh", "call", site, module]
    assert len(subject.split(".")) == 4 + len(function.split("."))


def test_the_user_facing_address_names_site_module_and_function() -> None:
    address = subjects.parse_address("hereon.climate.compute_sum")
    assert address == subjects.CallAddress("hereon", "climate", "compute_sum")
    assert address.subject == "fh.call.hereon.climate.compute_sum"
    method = subjects.parse_address("hereon.climate.Model.run")
    assert method.function == "Model.run"
    assert str(method) == "hereon.climate.Model.run"


@given(bad_sites)
def test_a_bad_site_name_is_refused(site: str) -> None:
    with pytest.raises(ConfigError, match="site"):
        subjects.validate_site(site)
    with pytest.raises(ConfigError):
        subjects.call_subject(site, "m", "f")


@given(bad_identifiers)
def test_a_bad_module_name_is_refused(module: str) -> None:
    with pytest.raises(ConfigError, match="module"):
        subjects.call_subject("hereon", module, "f")


@given(bad_identifiers.filter(lambda s: s.count(".") <= 1))
def test_a_bad_function_name_is_refused(function: str) -> None:
    with pytest.raises(ConfigError, match="function"):
        subjects.call_subject("hereon", "m", function)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hereon",
        "hereon.climate",
        "hereon.climate.A.b.c",
        "hereon.climate.*",
        "hereon.climate.>",
        "hereon..f",
        "Hereon.climate.f",
        "hereon.climate.f ",
    ],
)
def test_a_malformed_address_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        subjects.parse_address(bad)


@pytest.mark.parametrize(
    "bad",
    ["fh.call.hereon", "fh.events.hereon.m.f", "call.hereon.m.f", "fh.call.hereon.m.*", ""],
)
def test_a_subject_that_is_not_a_call_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        subjects.parse_call_subject(bad)


@given(names, sites)
def test_a_user_identity_round_trips(name: str, site: str) -> None:
    identity = subjects.validate_identity(f"{name}@{site}")
    assert identity == subjects.Identity(kind="user", name=name, site=site)
    assert identity.id == f"{name}@{site}"


@given(sites)
def test_a_site_identity_round_trips(site: str) -> None:
    identity = subjects.validate_identity(f"site:{site}")
    assert (identity.kind, identity.name, identity.site) == ("site", site, site)
    assert str(identity) == f"site:{site}"


@given(sites, names)
def test_a_node_identity_round_trips(site: str, name: str) -> None:
    identity = subjects.validate_identity(f"node:{site}/{name}")
    assert (identity.kind, identity.name, identity.site) == ("node", name, site)
    assert identity.id == f"node:{site}/{name}"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "klaus",
        "klaus@",
        "@geomar",
        "Klaus@geomar",
        "klaus@geo.mar",
        "klaus@geomar@x",
        "site:",
        "site:Geomar",
        "node:geomar",
        "node:geomar/",
        "node:/worker",
        "node:geomar/a b",
        "k*@geomar",
        "k>@geomar",
        "a" * 65 + "@geomar",
    ],
)
def test_a_malformed_identity_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        subjects.validate_identity(bad)


@given(sites, names, tokens)
def test_an_inbox_lies_under_its_users_prefix(site: str, user: str, token: str) -> None:
    inbox = subjects.inbox_subject(site, user, token)
    assert inbox == f"fh.inbox.{site}.{user}.{token}"
    assert inbox.startswith(subjects.inbox_prefix(site, user) + ".")


@pytest.mark.parametrize("token", ["", "a.b", "*", ">", "a b"])
def test_a_bad_inbox_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        subjects.inbox_subject("hereon", "klaus", token)


def test_every_subject_builder_follows_the_documented_layout() -> None:
    assert subjects.calls_filter("hereon") == "fh.call.hereon.>"
    assert subjects.events_subject("hereon", "worker-1") == "fh.events.hereon.worker-1"
    assert subjects.events_filter("hereon") == "fh.events.hereon.>"
    assert subjects.info_subject("hereon", "climate") == "fh.info.hereon.climate"
    assert subjects.status_subject("hereon") == "fh.status.hereon"
    assert subjects.service_name("hereon", "climate") == "fedhub-hereon-climate"
    assert subjects.hub_events_stream("geo-mar_x") == "FH_EVENTS_GEO_MAR_X"


@given(sites, identifiers)
def test_a_service_name_uses_only_micro_service_characters(site: str, module: str) -> None:
    name = subjects.service_name(site, module)
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


@given(sites)
def test_the_hub_copy_of_a_stream_has_a_valid_stream_name(site: str) -> None:
    name = subjects.hub_events_stream(site)
    assert name.startswith("FH_EVENTS_")
    assert not set(name) & set(">*. /\\\t\r\n")


def test_bad_node_names_are_refused_in_event_subjects() -> None:
    with pytest.raises(ConfigError, match="node name"):
        subjects.events_subject("hereon", "a.b")


@given(sites, names, tokens)
def test_every_inbox_built_for_a_user_is_an_inbox_of_that_user(
    site: str, name: str, token: str
) -> None:
    assert subjects.is_inbox_of(f"{name}@{site}", subjects.inbox_subject(site, name, token))


@pytest.mark.parametrize(
    "reply",
    [
        "fh.inbox.geomar.klaus",  # no token
        "fh.inbox.geomar.klaus.",  # an empty token
        "fh.inbox.geomar.klaus.a.b",  # two tokens
        "fh.inbox.geomar.klaus.*",
        "fh.inbox.geomar.klaus.>",
        "fh.inbox.geomar.klaus.a b",
        "fh.inbox.geomar.klaus.a\n",
        "fh.inbox.geomar.klausx.a",  # another user whose name starts the same
        "fh.inbox.geomar.anna.a",
        "fh.inbox.hereon.klaus.a",
        "$JS.API.STREAM.DELETE.fh-calls-geomar",
        "fh.events.geomar.n1",
    ],
)
def test_a_subject_that_is_not_one_inbox_of_the_caller_is_refused(reply: str) -> None:
    assert not subjects.is_inbox_of("klaus@geomar", reply)


@pytest.mark.parametrize("identity", ["site:geomar", "node:geomar/n1", "not an identity", ""])
def test_only_a_user_has_inboxes(identity: str) -> None:
    assert not subjects.is_inbox_of(identity, "fh.inbox.geomar.site.a")
    assert not subjects.is_inbox_of(identity, "fh.inbox.geomar.n1.a")
