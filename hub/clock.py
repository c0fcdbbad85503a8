"""Timestamps in fedhub's one text form: UTC, microseconds, fixed width, sortable as text."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_time", "now", "parse_time"]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(moment: datetime) -> str:
    """``2026-11-22T02:22:10.123456Z`` for an aware datetime (naive means UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(_FORMAT)


def now() -> str:
    """The current time in fedhub's text form."""
    # isoformat is C all the way (strftime goes through the C library): ends in +00:00
    return datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """Parse fedhub's text form into an aware datetime (ValueError if malformed)."""
    # the fixed width pins the one form; fromisoformat is ~20x faster than strptime
    if len(text) != 27 or text[10] != "T" or text[19] != "." or text[26] != "Z":
        raise ValueError(f"time {text!r} is not in the form 2026-11-22T02:22:10.123456Z")
    return datetime.fromisoformat(text)
