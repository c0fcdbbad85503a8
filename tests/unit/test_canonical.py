"""Canonical bytes: deterministic, round-tripping, and refusing what has no canonical form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.canonical import (
    _orjson_dumps,
    _stdlib_canonical_bytes,
    b64d,
    b64e,
    canonical_bytes,
    check_canonical,
    parse_canonical,
)
from hub.errors import CanonicalError

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | ints | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_canonical_bytes_round_trip(value: Any) -> None:
    data = canonical_bytes(value)
    assert parse_canonical(data) == value
    assert check_canonical(data) == value
    assert canonical_bytes(parse_canonical(data)) == data


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(texts, ints, max_size=8), st.randoms())
def test_canonical_bytes_do_not_depend_on_key_insertion_order(
    value: dict[str, int], rnd: Any
) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_bytes(dict(items)) == canonical_bytes(value)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_canonical_bytes_are_compact_utf8_json(value: Any) -> None:
    data = canonical_bytes(value)
    assert data == json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")


def test_keys_are_sorted_by_code_point_and_text_is_escaped_minimally() -> None:
    value = {"b": 1, "a": [True, None], "é": 'ü\n"\\\x01', "B": -5}
    assert (
        canonical_bytes(value) == '{"B":-5,"a":[true,null],"b":1,"é":"ü\\n\\"\\\\\\u0001"}'.encode()
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.5, "floats"),
        ({"x": [0.0]}, "floats"),
        (2**63, "64-bit"),
        (-(2**63) - 1, "64-bit"),
        ({1: "a"}, "not a string"),
        ("\ud800", "surrogate"),
        ({"k": b"bytes"}, "bytes"),
        ({"k": {1, 2}}, "set"),
    ],
)
def test_values_without_a_canonical_form_are_refused(value: Any, reason: str) -> None:
    with pytest.raises(CanonicalError, match=reason):
        canonical_bytes(value)


def test_nesting_deeper_than_64_levels_is_refused() -> None:
    value: Any = 1
    for _ in range(70):
        value = [value]
    with pytest.raises(CanonicalError, match="deeper"):
        canonical_bytes(value)


def test_the_64_level_limit_counts_the_top_level() -> None:
    """docs/audit.md: 64 levels of arrays and objects, the outermost one included."""
    value: Any = 1
    for _ in range(64):
        value = [value]
    assert canonical_bytes(value) == b"[" * 64 + b"1" + b"]" * 64
    with pytest.raises(CanonicalError, match="deeper"):
        canonical_bytes({"data": value})
    with pytest.raises(CanonicalError, match="deeper"):
        check_canonical(b"[" * 65 + b"1" + b"]" * 65)


def test_bytes_that_are_json_but_not_canonical_are_refused() -> None:
    with pytest.raises(CanonicalError, match="not in canonical form"):
        check_canonical(b'{"b":1, "a":2}')
    with pytest.raises(CanonicalError, match="not valid JSON"):
        parse_canonical(b"{")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100))
def test_base64_round_trips_without_padding(data: bytes) -> None:
    text = b64e(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64d(text) == data


@pytest.mark.parametrize("text", ["a+b/", "!!!!", "a"])
def test_text_that_is_not_url_safe_base64_is_refused(text: str) -> None:
    with pytest.raises(CanonicalError):
        b64d(text)


any_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30) | st.text(
    st.characters(max_codepoint=0x7F), max_size=30
)
any_values = st.recursive(
    st.none() | st.booleans() | ints | any_texts,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(any_texts, inner, max_size=6)
    ),
    max_leaves=40,
)


@pytest.mark.skipif(_orjson_dumps is None, reason="orjson is not installed")
@settings(max_examples=300, deadline=None)
@given(any_values)
def test_the_fast_encoder_writes_the_same_bytes_as_the_standard_library(value: Any) -> None:
    """With orjson installed, canonical_bytes uses it: byte for byte the documented form."""
    assert canonical_bytes(value) == _stdlib_canonical_bytes(value)
