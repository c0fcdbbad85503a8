"""The lineage of a result, proven by the node's signed log (``fedhub provenance``).

:func:`provenance` asks the node for the events of one request with their proofs of
inclusion (:class:`hub.proofs.EventProof`), checks every proof against the pinned site
key, and reads the lineage out of the proven events only: who asked for which function
(the caller's signed request header in ``request.accepted``), the inputs by their hashes
and sizes, the schema hash the call was made against, the node, the times, the result's
hash and size, and for each step the log event (seq, hash) that says it. A proof that does
not check raises; nothing unproven is reported.

A call that took results by reference names them in its signed header (site, request id,
result hash); the lineage follows each to the site that keeps it and asks that site for
the earlier call's lineage (``earlier``), proven by that site's own log, and checks that
its result is the one the reference named.

The code that ran is named by the ``node.started`` the node puts first. That it is the
last ``node.started`` before the request (no later process handled it) is proven by the
checkpoint the request's first event is proven in: it names the last ``node.started``
among the events it covers (``started``), and a node writes one just before each
``node.started``, so the first checkpoint covering an event names the process that logged
it (:func:`_code_in_force`; ``code_proven``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from hub.answers import ProvenanceAnswer
from hub.canonical import b64d, parse_canonical
from hub.errors import CanonicalError, IntegrityError
from hub.proofs import EventProof, verify_event_proof
from hub.records import Checkpoint, one_line

if TYPE_CHECKING:
    from hub.client import Client

__all__ = ["Provenance", "Step", "proofs_note", "provenance"]


@dataclass(frozen=True)
class Step:
    """One proven event of the request: what happened, when, and where in which log."""

    seq: int
    hash: str
    type: str
    time: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Provenance:
    """A result's lineage at one site, every field read from a proven log event."""

    request_id: str
    site: str
    log: str
    caller: str | None
    address: str | None
    schema_hash: str | None
    #: The hash of the module's code that ran, as the node logged it (None before nodes
    #: logged it).
    code_hash: str | None
    inputs: dict[str, Any]
    result: dict[str, Any]
    received_time: str | None
    ended_time: str | None
    steps: tuple[Step, ...]
    proofs: tuple[EventProof, ...] = field(repr=False)
    #: The arguments passed by reference: name → ``{"site", "id", "hash"}``.
    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The lineage of each referenced result, in the order of ``refs``.
    earlier: tuple[Provenance, ...] = ()
    #: Whether the ``node.started`` naming ``code_hash`` is proven the last one before the
    #: request (True), or cannot be (None: no ``node.started``, or the checkpoint is from a
    #: node that did not name it); a disproof raises IntegrityError.
    code_proven: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The lineage as JSON (``fedhub provenance --json``); proofs are left out."""
        return {
            "request_id": self.request_id,
            "site": self.site,
            "log": self.log,
            "caller": self.caller,
            "address": self.address,
            "schema_hash": self.schema_hash,
            "code_hash": self.code_hash,
            "code_proven": self.code_proven,
            "inputs": self.inputs,
            "result": self.result,
            "received_time": self.received_time,
            "ended_time": self.ended_time,
            "steps": [
                {"seq": s.seq, "hash": s.hash, "type": s.type, "time": s.time} for s in self.steps
            ],
            "refs": self.refs,
            "earlier": [e.to_json() for e in self.earlier],
        }

    def lines(self) -> list[str]:
        """The lineage as text, one fact a line."""
        out = [
            f"request   {self.request_id}",
            f"function  {self.address}",
            f"caller    {self.caller}",
            f"site      {self.site} (log {self.log})",
        ]
        if self.schema_hash:
            out.append(f"schemas   {self.schema_hash}")
        if self.code_hash:
            proven = "" if self.code_proven else " (not proven the process that ran it)"
            out.append(f"code      {self.code_hash}{proven}")
        out.append(
            f"inputs    {self.inputs.get('payload_hash')} ({self.inputs.get('payload_size')} B"
            + (f", bulk {self.inputs['bulk_hash']}" if self.inputs.get("bulk_hash") else "")
            + ")"
        )
        if self.result:
            out.append(f"result    {self.result.get('hash')} ({self.result.get('size')} B)")
        out.append(f"times     {self.received_time} .. {self.ended_time}")
        out += [f"  #{s.seq:<8} {s.type:<22} {s.time}  {s.hash}" for s in self.steps]
        for (name, ref), before in zip(self.refs.items(), self.earlier, strict=False):
            out.append(f"ref       {name} = {ref['site']}/{ref['id']} (result {ref['hash']})")
            out += [f"    {line}" for line in before.lines()]
        return out

    def mermaid(self) -> str:
        """A Mermaid flowchart: inputs → call at the site → result, with the log steps,
        and the earlier calls whose results it took by reference."""
        return "\n".join(["flowchart LR", *self._graph("mermaid", "p")]) + "\n"

    def dot(self) -> str:
        """The same as a Graphviz digraph."""
        lines = ["digraph provenance {", "  rankdir=LR;", *self._graph("dot", "p"), "}"]
        return "\n".join(lines) + "\n"

    def _graph(self, form: str, p: str) -> list[str]:
        """This call's nodes and edges (ids prefixed ``p``), then the earlier calls'."""
        mer = form == "mermaid"
        br = "<br/>" if mer else "\\n"
        call = f"{self.address}{br}{self.site} log {self.log}{br}{self.request_id}"
        inputs = f"inputs {_short(self.inputs.get('payload_hash'))}"
        lines = (
            [f'  {p}in["{inputs}"] --> {p}call["{call}"]']
            if mer
            else [
                f'  {p}in [label="{inputs}"];',
                f'  {p}call [shape=box, label="{call}"];',
                f"  {p}in -> {p}call;",
            ]
        )
        if self.result:
            result = f"result {_short(self.result.get('hash'))}"
            lines += (
                [f'  {p}call --> {p}out["{result}"]']
                if mer
                else [f'  {p}out [label="{result}"];', f"  {p}call -> {p}out;"]
            )
        for s in self.steps:
            label = f"#{s.seq} {s.type}{br}{_short(s.hash)}"
            lines += (
                [f'  {p}call -.- {p}s{s.seq}["{label}"]']
                if mer
                else [
                    f'  {p}s{s.seq} [shape=note, label="{label}"];',
                    f"  {p}call -> {p}s{s.seq} [style=dotted];",
                ]
            )
        for i, (name, before) in enumerate(zip(self.refs, self.earlier, strict=False)):
            q = f"{p}r{i}"
            lines += before._graph(form, q)
            lines.append(
                f"  {q}out -->|{name}| {p}call" if mer else f'  {q}out -> {p}call [label="{name}"];'
            )
        return lines


def _short(value: object) -> str:
    return str(value)[:16] if value else "-"


#: How many calls back a lineage follows references.
MAX_DEPTH = 32


async def provenance(
    client: Client, site: str, request_id: str, *, depth: int = MAX_DEPTH
) -> Provenance:
    """The proven lineage of my request at ``site`` (or of one shared with me), with
    the lineage of every result it took by reference, up to ``depth`` calls back."""
    from hub.results_client import catalog

    data = await catalog(client, "provenance", site, request_id, timeout=30.0)
    try:
        answer = ProvenanceAnswer.model_validate_json(data)
    except PydanticValidationError as exc:
        raise CanonicalError(f"malformed provenance answer: {one_line(exc)}") from exc
    if answer.request_id != request_id or answer.site != site:
        raise IntegrityError(f"site {site} answered about another request")
    steps: list[Step] = []
    for proof in answer.steps:
        verdict = verify_event_proof(proof, client.trusted_sites)
        if verdict.log != answer.log or proof.site != site:
            raise IntegrityError(f"a proof of {request_id} is about another log or site")
        body = parse_canonical(b64d(proof.event.body))
        assert isinstance(body, dict)
        data_ = body.get("data")
        first = not steps and body.get("type") == "node.started"  # the process that ran it
        if not isinstance(data_, dict) or (data_.get("request_id") != request_id and not first):
            raise IntegrityError(f"event {proof.event.seq} is not about request {request_id}")
        steps.append(
            Step(proof.event.seq, proof.event.hash, str(body["type"]), str(body["time"]), data_)
        )
    lineage = replace(
        _lineage(answer, tuple(steps)), code_proven=_code_in_force(tuple(steps), answer.steps)
    )
    if not lineage.refs or depth <= 0:
        return lineage
    earlier = []
    for name, ref in lineage.refs.items():
        before = await provenance(client, ref["site"], ref["id"], depth=depth - 1)
        if before.result.get("hash") != ref["hash"]:
            raise IntegrityError(
                f"argument {name} of {request_id} names result {ref['hash']}, but "
                f"{ref['site']} logged {before.result.get('hash')} for {ref['id']}"
            )
        earlier.append(before)
    return replace(lineage, earlier=tuple(earlier))


def _code_in_force(steps: tuple[Step, ...], proofs: tuple[EventProof, ...]) -> bool | None:
    """Whether the ``node.started`` heading ``steps`` is proven the last one before the
    request's first event: the (verified) checkpoint that event is proven in names it as
    the last ``node.started`` it covers. None when that cannot be said; IntegrityError
    when the checkpoint names another (a later process, or one the node left out)."""
    first = next((i for i, s in enumerate(steps) if s.type != "node.started"), None)
    if first is None:
        return None
    checkpoint = Checkpoint.model_validate_json(b64d(proofs[first].checkpoint.record))
    if checkpoint.started is None:
        return None
    shown = steps[0].seq if steps[0].type == "node.started" else None
    if checkpoint.started != shown:
        raise IntegrityError(
            f"the checkpoint over event {steps[first].seq} names node.started "
            f"{checkpoint.started} as the last before it, the answer {shown}"
        )
    return True


def proofs_note(lineage: Provenance) -> str:
    """What the proofs of ``lineage`` (and of the calls it took results from) prove about
    the code that ran, in one line (``fedhub provenance --proofs``)."""
    calls, unproven = [lineage], []
    while calls:
        call = calls.pop()
        calls += call.earlier
        if call.code_hash and not call.code_proven:
            unproven.append(call.request_id)
    if not unproven:
        return (
            "each event is proven in its site's signed log; the code of each call is the one "
            "its node logged in the node.started proven the last before the call"
        )
    return (
        "each event is proven in its site's signed log; for "
        + ", ".join(unproven)
        + " only that the node logged the code named, not that no later process ran the "
        "call (a checkpoint from before nodes named their node.started; a full "
        "`fedhub audit` of the log says)"
    )


def _lineage(answer: ProvenanceAnswer, steps: tuple[Step, ...]) -> Provenance:
    header: dict[str, Any] = {}
    result: dict[str, Any] = {}
    received = ended = None
    codes: dict[str, Any] = {}
    for s in steps:
        if s.type == "node.started":
            codes = s.data.get("code") or {}
        elif s.type == "request.accepted" and "header" in s.data:
            value = parse_canonical(b64d(s.data["header"]))
            header = value if isinstance(value, dict) else {}
            received = s.time
        elif s.type == "request.completed":
            result = {"hash": s.data.get("result_hash"), "size": s.data.get("result_size")}
            ended = s.time
        elif s.type == "request.failed":
            result = {}
            ended = s.time
    code = codes.get(str(header.get("module"))) if isinstance(codes, dict) else None
    bulk = header.get("bulk") or {}
    address = (
        f"{header['site']}.{header['module']}.{header['function']}"
        if {"site", "module", "function"} <= set(header)
        else None
    )
    return Provenance(
        request_id=answer.request_id,
        site=answer.site,
        log=answer.log,
        caller=header.get("caller"),
        address=address,
        schema_hash=header.get("schema_hash"),
        code_hash=str(code) if code else None,
        inputs={
            "payload_hash": header.get("payload_hash"),
            "payload_size": header.get("payload_size"),
            "bulk_hash": bulk.get("hash"),
            "bulk_size": bulk.get("size"),
        },
        result=result,
        received_time=received,
        ended_time=ended,
        steps=steps,
        proofs=answer.steps,
        refs={
            str(name): {k: str(v) for k, v in ref.items() if k in ("site", "id", "hash")}
            for name, ref in (header.get("refs") or {}).items()
            if isinstance(ref, dict)
        },
    )
