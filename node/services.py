"""A module as a NATS micro service: discovery with stock NATS tools.

Each module a node serves is one micro service, ``fedhub-<site>-<module>``, answering
``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` (so ``nats micro ls`` and ``nats micro
info`` list it at the serving site), with endpoints:

- ``_module`` at ``fh.info.<site>.<module>``: the module's description, with the node's key
  record signed by the site (what :meth:`hub.client.Client.module_info` verifies);
- one endpoint per function at ``fh.info.<site>.<module>.<function>``, named like the
  function (``Class-method`` for methods: micro names take no dot), whose metadata holds
  the function's JSON Schemas, schema hash, summary and the subject its calls go to; a
  request answers with the function's description.

Calls themselves never go to these endpoints: they are published into the site's call
stream (JetStream), where they are durable, deduplicated and logged.
"""

from __future__ import annotations

import json

from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service

from hub import __version__
from hub.answers import FunctionInfo, ModuleDescription
from hub.subjects import call_subject, function_info_subject, info_subject, service_name

__all__ = ["announce_module", "endpoint_metadata"]


def endpoint_metadata(site: str, module: str, fn: FunctionInfo) -> dict[str, str]:
    """The micro endpoint metadata of one function (values are strings, as micro wants)."""
    return {
        "fedhub.function": fn.name,
        "fedhub.summary": fn.summary,
        "fedhub.signature": fn.signature,
        "fedhub.arguments": json.dumps(fn.arguments, sort_keys=True),
        "fedhub.returns": json.dumps(fn.returns, sort_keys=True),
        "fedhub.schema_hash": fn.schema_hash,
        "fedhub.progress": "true" if fn.progress else "false",
        "fedhub.call_subject": call_subject(site, module, fn.name),
    }


async def announce_module(nc: NatsClient, description: ModuleDescription) -> Service:
    """Start the micro service of one module (stop it with ``await service.stop()``)."""
    site, module = description.site, description.module
    doc = (description.doc or f"{module} at {site}").strip().splitlines()[0][:200]
    svc = await add_service(
        nc,
        name=service_name(site, module),
        version=__version__,
        description=doc,
        metadata={
            "fedhub.site": site,
            "fedhub.module": module,
            "fedhub.node": description.node,
            "fedhub.functions": ",".join(sorted(description.functions)),
        },
    )
    payload = description.model_dump_json().encode()

    async def answer_module(req: MicroRequest) -> None:
        await req.respond(payload)

    # "_module": no served function is private, so no function endpoint takes this name
    await svc.add_endpoint(
        name="_module", subject=info_subject(site, module), handler=answer_module
    )
    for name, fn in sorted(description.functions.items()):
        body = fn.model_dump_json().encode()

        async def answer_function(req: MicroRequest, body: bytes = body) -> None:
            await req.respond(body)

        await svc.add_endpoint(
            name=name.replace(".", "-"),
            subject=function_info_subject(site, module, name),
            handler=answer_function,
            metadata=endpoint_metadata(site, module, fn),
        )
    return svc
