"""fedhub's common language: protocol, keys, crypto, subjects, topology, client and audit."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
