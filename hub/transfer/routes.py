"""Which subjects the two sides of a transfer listen on, for each direction across sites.

The caller's side is always one of the caller's inboxes (``fh.inbox.<caller-site>.<user>.
<transfer>``), the called site's side always ``fh.bulk.<site>.<transfer>``: exactly what the
hub's accounts let through (docs/topology.md), so an upload and a download cross the hub
with per-site accounts and nothing else does. Between two nodes (a kept result passed by
reference to a call at another site) both sides are ``fh.bulk`` subjects of their own site.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.subjects import bulk_subject, inbox_subject

__all__ = ["Route", "download_route", "site_route", "upload_route"]


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


def site_route(sender_site: str, receiver_site: str, transfer: str) -> Route:
    """A node of ``sender_site`` sends to a node of ``receiver_site`` (a kept result passed
    by reference): chunks go to the receiving site's ``fh.bulk``, acks to the sending
    site's, each under a token of its own (the two sites may be one)."""
    return Route(
        to=bulk_subject(receiver_site, f"{transfer}-in"),
        control=bulk_subject(sender_site, f"{transfer}-out"),
    )
