"""Kept results as arguments of other calls, by reference (docs/results.md, "References").

``fed.submit("geomar.climate.scale", values=fed.ref("hereon", rid))`` passes the result
kept at hereon without fetching it: for each reference the caller asks the storing site
for its own wrap of the result's content key (only the owner may), opens it, wraps the key
for the target node's box key (verified from the module info) and shares it with that
node (``result.shared`` at the storing site, principal ``node:SITE/NAME``, ``for_call`` = the
new call's id). The call's signed header names each reference (site, request id, result
hash); the target node fetches the ciphertext straight from the storing site with its own
key, checks the hash and opens it (:mod:`node.staging`; a large result comes as a bulk
transfer from the storing node). The data never passes through the caller, and the hub
carries only ciphertext.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hub.canonical import b64e
from hub.crypto import wrap_key
from hub.envelopes import ResultRef
from hub.errors import ArgumentError
from hub.results_client import catalog, own_content_key

if TYPE_CHECKING:
    from hub.call_handle import ModuleInfo
    from hub.client import Client

__all__ = ["REF_PREFIX", "Ref", "stage_refs"]

#: How a reference is written on the command line: ``x=ref:SITE/REQUEST_ID``.
REF_PREFIX = "ref:"
_TEXT = re.compile(r"^ref:([a-z][a-z0-9_-]{0,31})/([A-Za-z0-9_-]{16,64})$")


@dataclass(frozen=True, slots=True)
class Ref:
    """The kept result of request ``request_id`` at ``site``, as an argument."""

    site: str
    request_id: str

    def __str__(self) -> str:
        return f"{REF_PREFIX}{self.site}/{self.request_id}"

    @classmethod
    def parse(cls, text: str) -> Ref:
        """A reference from its text ``ref:SITE/REQUEST_ID`` (ArgumentError if it is not)."""
        m = _TEXT.match(text)
        if m is None:
            raise ArgumentError(f"{text!r} is not a reference", hint="write ref:SITE/REQUEST_ID")
        return cls(m.group(1), m.group(2))


async def stage_refs(
    client: Client, kwargs: Mapping[str, Any], target: ModuleInfo, request_id: str
) -> tuple[dict[str, Any], dict[str, ResultRef] | None]:
    """The arguments without their references, and the references for the call's header,
    each shared with ``target``'s node for the call ``request_id``.

    Raises the storing site's typed error (``NotFoundError`` for a result that is not the
    caller's, or not kept), before anything is sent to ``target``.
    """
    refs = {name: v for name, v in kwargs.items() if isinstance(v, Ref)}
    if not refs:
        return dict(kwargs), None
    staged: dict[str, ResultRef] = {}
    for name, ref in refs.items():
        own = await own_content_key(client, ref.site, ref.request_id)
        keys = client.keys
        for_node = wrap_key(keys.box_secret, keys.box_public, target.node_box_key, own.key)
        await catalog(
            client,
            "share",
            ref.site,
            ref.request_id,
            {
                "principal": target.node,
                "wraps": {target.node_kid: b64e(for_node)},
                "node_key": target.info.node_key.model_dump(mode="json"),
                "for_call": request_id,
            },
        )
        staged[name] = ResultRef(site=ref.site, id=ref.request_id, hash=own.result_hash)
    return {k: v for k, v in kwargs.items() if k not in refs}, staged
