"""The auditor's page of the console: a log file audited in the console's process, with the
site keys pinned in the user's key store, as ``fedhub audit`` does."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from starlette.requests import Request

from hub.errors import ArgumentError, ConfigError
from hub.keys import KeyStore

__all__ = ["MAX_LOG_BYTES", "audit_upload"]

#: The largest log the page takes (larger ones: `fedhub audit FILE` on the command line).
MAX_LOG_BYTES = 1 << 30


async def audit_upload(request: Request, home: Path | None) -> dict[str, Any]:
    """Audit the log in the request body (SQLite or JSON Lines); the report as JSON, with
    the first bad event named (``first``)."""
    from hub.audit import audit_events
    from hub.cli_audit import pinned_site_keys
    from hub.logfile import iter_log

    trusted = pinned_site_keys([], KeyStore(home))
    if not trusted:
        raise ConfigError(
            "no site key is pinned in the key store, so nothing can be trusted",
            hint="fedhub keys import site-NAME.pub",
        )
    fd, name = tempfile.mkstemp(prefix="fedhub-audit-", suffix=".log")
    path = Path(name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_LOG_BYTES:
                    raise ArgumentError(
                        f"the log is larger than {MAX_LOG_BYTES >> 20} MiB",
                        hint="use fedhub audit FILE",
                    )
                out.write(chunk)
        if size == 0:
            raise ArgumentError("no log was sent", hint="choose a log file")
        report = await asyncio.to_thread(
            lambda: audit_events(iter_log(path, max_seconds=300), trusted_sites=trusted)
        )
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    out_json = report.to_json()
    first = report.first
    out_json["first"] = None if first is None else first.to_json()
    return out_json
