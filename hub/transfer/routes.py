"""Which subjects the two sides of a transfer listen on, for each direction across sites.

The caller's side is always one of the caller's inboxes (``fh.inbox.<caller-site>.<user>.
<transfer>``), the called site's side always ``fh.bulk.<site>.<transfer>``: exactly what the
hub's accounts let through (docs/topology.md), so an upload and a download cross the hub
with per-site accounts and nothing else does.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.subjects import bulk_subject, inbox_subject

__all__ = ["Route", "download_route", "upload_route"]


@dataclass(frozen=True, slots=True)
class Route:
    """Subjects of one transfer: where the receiver listens (``to``), where the sender does."""

    to: str
    control: str


def upload_route(caller_site: str, user: str, site: str, transfer: str) -> Route:
    """Caller ``user@caller_site`` sends to ``site`` (an argument): chunks go to the site."""
    return Route(
        to=bulk_subject(site, transfer), control=inbox_subject(caller_site, user, transfer)
    )


def download_route(caller_site: str, user: str, site: str, transfer: str) -> Route:
    """``site`` sends to caller ``user@caller_site`` (a result): chunks go to the inbox."""
    return Route(
        to=inbox_subject(caller_site, user, transfer), control=bulk_subject(site, transfer)
    )
