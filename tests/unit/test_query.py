"""The search language: Python query objects (``&``, ``|``, ``~``), their JSON form (a
saved search) and their text form (the command line) say the same thing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.errors import ValidationError
from hub.query import F, Query, Tag, Term, parse

CLIMATE: dict[str, Any] = {
    "module": "climate",
    "function": "scale",
    "state": "completed",
    "size": 2048,
    "kept": True,
    "shared": False,
    "caller": "klaus@geomar",
    "received": "2026-11-30T10:00:00.000000Z",
}


def test_and_or_not_combine_as_python_says() -> None:
    q = (Tag("calibrated") | Tag("final")) & ~(F.state == "failed") & (F.size > 1000)
    assert q.matches(CLIMATE, frozenset({"final"}))
    assert not q.matches(CLIMATE, frozenset({"draft"}))
    assert not q.matches({**CLIMATE, "state": "failed"}, frozenset({"final"}))
    assert not q.matches({**CLIMATE, "size": 10}, frozenset({"final"}))


def test_a_query_saved_as_json_reads_back_as_the_same_query() -> None:
    q = (Tag("a") & ~(F.module == "ocean")) | ((F.size >= 10) & (F.kept == True))  # noqa: E712
    saved = json.dumps(q.to_json())
    assert Query.from_json(json.loads(saved)) == q


def test_the_text_form_reads_back_as_the_same_query() -> None:
    q = (Tag("a") & ~(F.module == "ocean")) | (F.received >= "2026-11-30T10:00:00.000000Z")
    assert parse(str(q)) == q


def test_text_precedence_is_not_then_and_then_or() -> None:
    q = parse("tag:a OR tag:b AND NOT module:climate")
    assert q == Tag("a") | (Tag("b") & ~(F.module == "climate"))
    assert parse("tag:a tag:b") == Tag("a") & Tag("b")
    assert parse("(tag:a OR tag:b) AND size>=100") == (Tag("a") | Tag("b")) & (F.size >= 100)
    assert parse('caller:"klaus@geomar"') == (F.caller == "klaus@geomar")
    assert parse("calibrated") == Tag("calibrated")
    assert parse("kept:yes") == (F.kept == True)  # noqa: E712


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tag:a AND",
        "(tag:a",
        "tag:a)",
        "colour:red",
        "size>big",
        "kept:maybe",
        "tag>a",
        "NOT",
        "tag:bad/tag",
    ],
)
def test_a_malformed_text_query_is_a_validation_error(text: str) -> None:
    with pytest.raises(ValidationError):
        parse(text)


@pytest.mark.parametrize(
    "value",
    [
        {"and": []},
        {"tag": 3},
        {"field": "size", "op": "gt", "value": "big"},
        {"field": "size", "op": "like", "value": 3},
        {"nand": [{"tag": "a"}]},
        [],
        {"not": {"not": {"not": {"tag": "x" * 65}}}},
    ],
)
def test_a_malformed_json_query_is_a_validation_error(value: object) -> None:
    with pytest.raises(ValidationError):
        Query.from_json(value)


def test_a_hostile_deep_or_huge_json_query_is_refused() -> None:
    deep: dict[str, Any] = {"tag": "a"}
    for _ in range(100):
        deep = {"not": deep}
    with pytest.raises(ValidationError):
        Query.from_json(deep)
    with pytest.raises(ValidationError):
        Query.from_json({"or": [{"tag": "a"}] * 1000})


def test_an_order_on_a_missing_value_does_not_match() -> None:
    assert not (F.size > 0).matches({"size": None})
    assert (F.code != "timeout").matches({"code": None})


_TAGS = st.sampled_from(["a", "b", "c"]).map(Tag)
_TERMS = st.one_of(
    _TAGS,
    st.builds(lambda v: F.size > v, st.integers(0, 5000)),
    st.builds(lambda v: F.module == v, st.sampled_from(["climate", "ocean", "AND"])),
)
_QUERIES = st.recursive(
    _TERMS,
    lambda inner: st.one_of(
        st.builds(lambda a, b: a & b, inner, inner),
        st.builds(lambda a, b: a | b, inner, inner),
        st.builds(lambda a: ~a, inner),
    ),
    max_leaves=12,
)


@given(_QUERIES, st.frozensets(st.sampled_from(["a", "b", "c"])))
def test_json_and_text_forms_match_exactly_the_records_the_object_matches(
    q: Query, tags: frozenset[str]
) -> None:
    for form in (Query.from_json(json.loads(q.dumps())), parse(str(q))):
        assert form.matches(CLIMATE, tags) == q.matches(CLIMATE, tags)


def test_terms_check_their_types() -> None:
    with pytest.raises(ValidationError):
        Term("size", "gt", "10")
    with pytest.raises(ValidationError):
        F.size > 1.5  # noqa: B015
    with pytest.raises(ValidationError):
        F.nothing  # noqa: B018
