"""The fedhub site node: config, backend runner, request pipeline, event log, daemon."""

from __future__ import annotations

__all__: list[str] = []
