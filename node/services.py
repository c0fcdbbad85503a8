"""The node's NATS micro services: what stock NATS tools (``nats micro ls/info``) show.

Each module is a micro service ``fedhub-<site>-<module>`` whose metadata names the site,
module, node and functions (``fedhub ls`` reads it), with one endpoint per function, named
after it (``Class.method`` becomes ``Class-method``), on
``fh.info.<site>.<module>.<function>``: that function's description. Its metadata holds the
subject calls go to and the JSON Schemas of its arguments and result, so
``nats micro info fedhub-<site>-<module>`` shows every function with its schema. Calls
themselves do not go through these endpoints: they travel durably through the site's call
stream (docs/protocol.md).

A module's own description (schemas, docs, the node's key record, which callers verify
before they call) answers on ``fh.info.<site>.<module>``, through one subscription per node
to ``fh.info.<site>.*``: a module the node serves is answered at once; one it does not
serve with ``not_found`` after :data:`MISSING_GRACE` (a node of the site that serves it
has answered by then, and the caller took that answer), so a caller learns of a mistyped
module at once instead of waiting out a timeout. One subscription, not a micro endpoint
beside a wildcard: a node may answer a request once per delivery, and two subscriptions
of one connection matching the same request would each take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest

from hub import __version__
from hub.answers import ModuleDescription, error_headers
from hub.errors import NotFoundError
from hub.subjects import SUBJECT_ROOT, call_subject, info_subject, service_name
from node.modules import BackendModule

__all__ = ["MISSING_GRACE", "endpoint_name", "start_services"]

log = structlog.get_logger(__name__)

#: How long a node waits before answering that no node of its site serves a module.
MISSING_GRACE = 0.3
#: Longest JSON Schema text put into an endpoint's metadata (larger ones: see its info).
_MAX_SCHEMA_TEXT = 16_000


def endpoint_name(function: str) -> str:
    """A micro endpoint name for a function (``[A-Za-z0-9_-]``: ``Class.method`` → ``-``)."""
    return function.replace(".", "-")


def _schema_text(schema: Any) -> str:
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= _MAX_SCHEMA_TEXT else '{"$comment":"too large: see the info"}'


async def start_services(
    nc: NatsClient,
    site: str,
    node: str,
    modules: Mapping[str, BackendModule],
    describe: Callable[[str, dict[str, Any]], ModuleDescription],
    stack: contextlib.AsyncExitStack,
) -> None:
    """Add every module's micro service and the not-served answerer; stopped by ``stack``."""
    payloads: dict[str, bytes] = {}
    for name, module in modules.items():
        description = describe(name, module.info())
        payloads[name] = description.model_dump_json().encode()
        svc = await add_service(
            nc,
            name=service_name(site, name),
            version=__version__,
            description=(module.doc or f"{name} at {site}").strip().splitlines()[0][:200],
            metadata={
                "fedhub.site": site,
                "fedhub.module": name,
                "fedhub.node": node,
                "fedhub.functions": ",".join(sorted(module.functions)),
                "fedhub.info_subject": info_subject(site, name),
            },
        )
        stack.push_async_callback(svc.stop)
        for function, info in sorted(description.functions.items()):
            await svc.add_endpoint(
                name=endpoint_name(function),
                subject=f"{info_subject(site, name)}.{function}",
                handler=_answer(info),
                metadata={
                    "fedhub.call_subject": call_subject(site, name, function),
                    "fedhub.signature": info.signature[:1000],
                    "fedhub.arguments": _schema_text(info.arguments),
                    "fedhub.returns": _schema_text(info.returns),
                },
            )
    pending: set[asyncio.Task[None]] = set()

    async def on_info(msg: Msg) -> None:
        if not msg.reply:
            return
        payload = payloads.get(msg.subject.rsplit(".", 1)[-1])
        if payload is not None:
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(msg.reply, payload)
            return
        task = asyncio.create_task(_missing(nc, site, msg))  # the grace time blocks no one
        pending.add(task)
        task.add_done_callback(pending.discard)

    sub = await nc.subscribe(f"{SUBJECT_ROOT}.info.{site}.*", cb=on_info)
    stack.push_async_callback(sub.unsubscribe)


def _answer(answer: Any) -> Callable[[MicroRequest], Any]:
    payload = answer.model_dump_json().encode()

    async def respond(req: MicroRequest) -> None:
        await req.respond(payload)

    return respond


async def _missing(nc: NatsClient, site: str, msg: Msg) -> None:
    """Answer not_found for a module this node does not serve, after the grace time."""
    module = msg.subject.rsplit(".", 1)[-1]
    await asyncio.sleep(MISSING_GRACE)
    error = NotFoundError(
        f"no node serves {site}.{module}",
        hint="check the module name (`fedhub ls` lists what each site serves)",
    )
    with contextlib.suppress(nats.errors.Error):
        await nc.publish(msg.reply, b"", headers=error_headers(error))
    log.info("info.not_served", module=module)
