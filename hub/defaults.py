"""Where a caller connects and as whom, when not told: shared by the ``fedhub`` CLI and
:func:`hub.sync_client.connect` (so the two never disagree).

* URL: the explicit one, else ``$FEDHUB_URL``, else the embedded server of the one node
  running on this machine with the same key store (:mod:`hub.localnodes`), else
  :data:`DEFAULT_URL`.
* identity: the explicit one, else ``$FEDHUB_IDENTITY``, else the only person key
  (``name@site``) in the key store.
* key store home: ``--home``/``home=``, else ``$FEDHUB_HOME`` (see :func:`hub.keys.default_home`).

NATS credentials (``$FEDHUB_CREDS``) and the CA (``$FEDHUB_CA``) are defaulted by
:meth:`hub.client.Client.connect` itself. This module imports nothing heavy: the CLI's
start-up depends on it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from hub.errors import ConfigError
from hub.keys import KeyStore
from hub.localnodes import local_url
from hub.subjects import validate_identity

if TYPE_CHECKING:
    from hub.client import Client

__all__ = ["DEFAULT_URL", "aconnect", "default_identity", "default_url"]

#: Where a caller connects when nothing else says where.
DEFAULT_URL = "nats://127.0.0.1:4222"


def default_url(explicit: str | None, store: KeyStore) -> str:
    """``explicit``, else ``$FEDHUB_URL``, else the local node's server, else DEFAULT_URL."""
    return explicit or os.environ.get("FEDHUB_URL") or local_url(store.home) or DEFAULT_URL


def default_identity(explicit: str | None, store: KeyStore) -> str:
    """``explicit``, else ``$FEDHUB_IDENTITY``, else the only person key in ``store``."""
    chosen = explicit or os.environ.get("FEDHUB_IDENTITY")
    if chosen:
        return chosen
    people = []
    for keys in store.list():
        try:
            kind = validate_identity(keys.identity).kind
        except ConfigError:
            continue
        if kind == "user" and store.exists(keys.identity):
            people.append(keys.identity)
    if len(people) == 1:
        return people[0]
    if not people:
        raise ConfigError(
            f"no person key (name@site) in {store.dir} to call with",
            hint="create one with `fedhub keys new NAME@SITE`, or pass --as",
        )
    shown = ", ".join(people[:4]) + (", ..." if len(people) > 4 else "")
    raise ConfigError(
        f"{len(people)} person keys in {store.dir} ({shown}); which one calls?",
        hint="pass --as NAME@SITE or set FEDHUB_IDENTITY",
    )


async def aconnect(
    url: str | None = None,
    identity: str | None = None,
    *,
    home: Path | None = None,
    passphrase: str | None = None,
    default_timeout: float = 300.0,
    creds: str | Path | None = None,
    tls: ssl.SSLContext | str | Path | None = None,
) -> Client:
    """An async client with the CLI's defaults (as :func:`hub.connect` for the blocking one):
    ``async with await aconnect() as fed: ...``."""
    from hub.client import Client
    from hub.cliutil import read_passphrase

    store = KeyStore(Path(home) if home is not None else None)
    return await Client.connect(
        default_url(url, store),
        default_identity(identity, store),
        home=store.home,
        passphrase=passphrase if passphrase is not None else read_passphrase(None),
        default_timeout=default_timeout,
        creds=creds,
        tls=tls,
    )
