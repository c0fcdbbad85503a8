"""References to kept results as call arguments: their text form and the CLI's reading."""

from __future__ import annotations

import pytest

from hub.argfiles import parse_cli_argument
from hub.errors import ArgumentError
from hub.refs import Ref

RID = "6pT3uGQ1dS8h5yqgq1wW1w"


def test_a_reference_reads_and_writes_as_ref_site_slash_request_id() -> None:
    ref = Ref.parse(f"ref:hereon/{RID}")
    assert ref == Ref("hereon", RID)
    assert str(ref) == f"ref:hereon/{RID}"


@pytest.mark.parametrize(
    "text",
    ["ref:hereon", f"ref:/{RID}", f"ref:Hereon/{RID}", "ref:hereon/short", f"ref:hereon/{RID}/x"],
)
def test_a_malformed_reference_is_refused_with_the_form_to_write(text: str) -> None:
    with pytest.raises(ArgumentError, match="is not a reference") as caught:
        Ref.parse(text)
    assert caught.value.hint == "write ref:SITE/REQUEST_ID"


def test_a_cli_argument_starting_with_ref_is_a_reference_and_other_text_stays_text() -> None:
    assert parse_cli_argument(f"x=ref:geomar/{RID}") == ("x", Ref("geomar", RID))
    assert parse_cli_argument("x=reference") == ("x", "reference")
