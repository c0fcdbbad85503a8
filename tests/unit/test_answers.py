"""One error encoding: wire codes, error classes, service headers and the answer models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from hub.answers import (
    CODE_HEADER,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    HINT_HEADER,
    AdminAnswer,
    CancelAnswer,
    FunctionInfo,
    ModuleDescription,
    RequestStatus,
    error_from_headers,
    error_headers,
)
from hub.call_recovery import call_error as _error
from hub.canonical import b64e
from hub.clock import now
from hub.errors import (
    CallCancelledError,
    CallTimeoutError,
    CanonicalError,
    FederationError,
    FunctionFailedError,
    IntegrityError,
    NotFoundError,
    OversizeError,
    RemoteError,
    ReplayError,
    SignatureError,
    UnauthorizedError,
    ValidationError,
    caller_code,
    error_code,
    error_from_code,
    service_status,
    wire_codes,
)
from hub.keys import KeyPair
from hub.lifecycle import RequestState
from hub.records import KeyRecord, sign_record
from hub.schemas import protocol_schemas
from node.intake import Rejection


@pytest.mark.parametrize("code", wire_codes())
def test_every_wire_code_maps_to_its_class_and_back(code: str) -> None:
    err = error_from_code(code, "what happened")
    assert error_code(err) == code
    assert err.message == "what happened"


@pytest.mark.parametrize("code", [*wire_codes(), "something_new"])
def test_a_call_reply_and_a_service_answer_raise_the_same_error_for_each_code(code: str) -> None:
    by_reply = _error(code, "what happened", "hereon.climate.scale")
    by_answer = error_from_headers(error_headers(error_from_code(code, "what happened")))
    assert by_answer is not None
    assert type(by_reply) is type(by_answer)
    assert error_code(by_reply) == error_code(by_answer) == code
    assert by_reply.message == by_answer.message == "what happened"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ValidationError("bad"), "400", "invalid_arguments"),
        (UnauthorizedError("who?"), "401", "unauthorized"),
        (NotFoundError("gone"), "404", "not_found"),
        (OversizeError("big"), "413", "oversize"),
        (FunctionFailedError("boom"), "500", "function_failed"),
        (IntegrityError("altered"), "500", "integrity"),
        (RemoteError("busy", code="busy"), "503", "busy"),
        (CallTimeoutError("late"), "504", "timeout"),
    ],
)
def test_error_headers_carry_a_numeric_status_and_fedhubs_code(
    error: Any, status: str, code: str
) -> None:
    headers = error_headers(error)
    assert (headers[ERROR_CODE_HEADER], headers[CODE_HEADER]) == (status, code)
    assert headers[ERROR_HEADER] == error.message


def test_typed_errors_keep_their_class_and_hint_through_the_headers() -> None:
    back = error_from_headers(error_headers(NotFoundError("no such request", hint="check it")))
    assert isinstance(back, NotFoundError)
    assert back.hint == "check it"
    back = error_from_headers(error_headers(CallCancelledError("stop", code="interrupted")))
    assert isinstance(back, CallCancelledError) and back.code == "interrupted"


def test_header_values_are_one_bounded_line() -> None:
    headers = error_headers(RemoteError("line one\r\nline two " + "x" * 5000, hint="a\nb"))
    assert "\n" not in headers[ERROR_HEADER] and "\r" not in headers[ERROR_HEADER]
    assert len(headers[ERROR_HEADER]) <= 1000
    assert headers[HINT_HEADER] == "a b"


def test_a_micro_error_without_fedhubs_code_is_a_remote_error_with_its_status() -> None:
    err = error_from_headers({ERROR_CODE_HEADER: "503"})
    assert isinstance(err, RemoteError) and err.code == "remote_error"
    assert "503" in err.message
    assert error_from_headers({"Nats-Msg-Id": "x"}) is None
    assert error_from_headers(None) is None


def test_unknown_codes_are_a_500() -> None:
    assert service_status("never_heard_of") == 500


def _function() -> FunctionInfo:
    return FunctionInfo(
        name="scale",
        qualified_name="scale",
        kind="function",
        is_async=False,
        signature="scale(values: list[float]) -> list[float]",
        summary="Scale.",
        description="",
        raises={},
        progress=False,
        arguments={"type": "object"},
        returns={"type": "array"},
        schema_hash="0" * 64,
    )


def _answers() -> list[BaseModel]:
    node = KeyPair.generate("node:hereon/n1")
    site = KeyPair.generate("site:hereon")
    record = KeyRecord(
        identity=node.identity,
        role="node",
        site="hereon",
        kid=node.kid,
        sign_key=b64e(node.sign_public),
        box_key=b64e(node.box_public),
        valid_from=now(),
    )
    return [
        ModuleDescription(
            site="hereon",
            module="climate",
            node="node:hereon/n1",
            node_key=sign_record(record, site.signing_key),
            max_payload=1 << 20,
            doc="Climate.",
            functions={"scale": _function()},
            skipped={"_helper": "private"},
        ),
        RequestStatus(
            request_id="A" * 22,
            caller="klaus@geomar",
            address="hereon.climate.scale",
            state=RequestState.COMPLETED,
            attempts=1,
            progress_ppm=1_000_000,
            result_hash="a" * 64,
            result_object="r/" + "A" * 22,
        ),
        CancelAnswer(id="A" * 22, cancelling=False, state=RequestState.FAILED),
        AdminAnswer(op="revoke", kid="0" * 20, seq=7),
    ]


@pytest.mark.parametrize("answer", _answers(), ids=lambda a: type(a).__name__)
def test_answers_round_trip_through_json(answer: BaseModel) -> None:
    assert type(answer).model_validate_json(answer.model_dump_json()) == answer


@pytest.mark.parametrize("answer", _answers(), ids=lambda a: type(a).__name__)
def test_answers_refuse_unknown_fields_and_are_frozen(answer: BaseModel) -> None:
    with pytest.raises(PydanticValidationError):
        type(answer).model_validate({**answer.model_dump(mode="json"), "surprise": 1})
    first = next(iter(type(answer).model_fields))
    with pytest.raises(PydanticValidationError):
        setattr(answer, first, getattr(answer, first))


def test_a_status_with_an_unknown_state_is_refused() -> None:
    with pytest.raises(PydanticValidationError):
        RequestStatus.model_validate({"request_id": "A" * 22, "state": "finished-ish"})


def test_every_answer_model_is_in_the_exported_schemas() -> None:
    schemas = protocol_schemas()
    for name, model in {
        "answers/module-info": ModuleDescription,
        "answers/request-status": RequestStatus,
        "answers/cancel": CancelAnswer,
        "answers/admin": AdminAnswer,
    }.items():
        assert schemas[name] == model.model_json_schema()


#: The error intake refuses with, for each reason it logs (node.intake.open_request, admit).
REFUSALS: dict[str, FederationError] = {
    "malformed": CanonicalError("malformed request: no caller"),
    "bad_signature": SignatureError("request signature of klaus@geomar does not verify"),
    "misrouted": NotFoundError("request for hereon.climate.scale arrived elsewhere"),
    "unauthorized": UnauthorizedError("not granted"),
    "replay": ReplayError("nonce used before"),
    "oversize": OversizeError("request too large"),
}


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_a_rejection_told_by_its_reply_or_by_its_status_is_the_same_error(reason: str) -> None:
    rejection = Rejection(REFUSALS[reason], reason, None, True, "r" * 22, "klaus@geomar", "0" * 64)
    by_reply = _error(rejection.wire_code(), "refused", "hereon.climate.scale")
    by_status = _error(
        caller_code(reason), "refused", "hereon.climate.scale"
    )  # as recovery reads it
    assert type(by_reply) is type(by_status)
    assert error_code(by_reply) == error_code(by_status) == rejection.wire_code()
