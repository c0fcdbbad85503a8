"""Shared plumbing of the ``fedhub`` and ``fedhub-node`` command lines.

One readable error line and a nonzero exit for every failure a person can cause; logging
configured once (console on a terminal, JSON otherwise or with ``--log-json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.errors import ConfigError, FederationError, KeyStoreError

__all__ = [
    "EXIT_CODES",
    "HelpFormatter",
    "add_examples",
    "configure_logging",
    "examples",
    "fail",
    "notice",
    "read_passphrase",
    "run_main",
]

#: Whether this process logs JSON lines (``--log-json``): then :func:`notice` writes JSON too.
_json_logs = False

#: The exit codes of ``fedhub`` and ``fedhub-node``, as their ``--help`` shows them.
EXIT_CODES = """exit codes:
  0    done (audit: the log verified)
  1    failed: refused or failed remotely, NATS, config or key store (audit: log not verified)
  2    the command line is wrong: unknown option, malformed argument, missing @file
       (audit: its input cannot be read)
  130  interrupted (Ctrl-C)
"""


class HelpFormatter(argparse.HelpFormatter):
    """Fills descriptions as usual, but keeps indented lines (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        parts = []
        for block in text.split("\n\n"):
            if re.search(r"^  \S", block, re.MULTILINE):
                parts.append(textwrap.indent(block, indent))
            else:
                parts.append(super()._fill_text(block, width, indent))
        return "\n\n".join(parts)


def examples(*lines: str) -> str:
    """A ``--help`` epilog: ``example:`` and the command lines, indented (kept as written)."""
    head = "example:" if len(lines) == 1 else "examples:"
    return head + "\n" + "\n".join(f"  {line}" for line in lines)


def add_examples(parser: argparse.ArgumentParser, table: dict[str, list[str]]) -> None:
    """Give every command of ``parser`` its examples from ``table`` (command path → lines;
    "" is the program itself) and the formatter that keeps them as written."""
    pending = [("", parser)]
    while pending:
        path, each = pending.pop()
        each.formatter_class = HelpFormatter
        if path in table:
            each.epilog = examples(*table[path])
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    pending.append((f"{path} {name}".strip(), child))


def notice(text: str, event: str, *, level: str = "info", **fields: Any) -> None:
    """A line for the person at the terminal, on stderr (``request <id>``, ``wrote FILE``);
    with ``--log-json`` a JSON log line instead, so the stream stays JSON only."""
    if _json_logs:
        stamp = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        line = {**fields, "event": event, "level": level, "timestamp": stamp}
        print(json.dumps(line, default=str), file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def fail(exc: FederationError, code: int) -> None:
    """The one error line of a failed command (a JSON line with ``--log-json``)."""
    if _json_logs:
        notice(
            "",
            "command.failed",
            level="error",
            error=type(exc).__name__,
            message=exc.message,
            hint=exc.hint,
            exit_code=code,
        )
    else:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)


def configure_logging(*, json_logs: bool = False, level: str = "warning") -> None:
    """Configure structlog once for a CLI process (logs go to stderr)."""
    global _json_logs
    _json_logs = json_logs
    import logging  # here, not at the top: `--help` and `--version` never log

    import structlog

    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.WARNING)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if level.lower() != "debug":
        # asyncio's warning of a peer closing a TLS stream ("returning true from
        # eof_received() has no effect when using ssl") is harmless and not the user's
        logging.getLogger("asyncio").setLevel(logging.ERROR)


def read_passphrase(
    passphrase_file: Path | None, *, prompt: str | None = None, confirm: bool = False
) -> str | None:
    """A passphrase from a file, ``$FEDHUB_PASSPHRASE``, or (on a terminal) a prompt."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise KeyStoreError(
                f"cannot read passphrase file {passphrase_file}: {exc.strerror}"
            ) from exc
    env = os.environ.get("FEDHUB_PASSPHRASE")
    if env:
        return env
    if prompt is None:
        return None
    if not sys.stdin.isatty():
        raise KeyStoreError(
            "a passphrase is needed but there is no terminal to ask on",
            hint="pass --passphrase-file or set FEDHUB_PASSPHRASE",
        )
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise KeyStoreError("the two passphrases differ")
    return first


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI main: FederationError → one line on stderr and exit 1 (or its own code)."""
    try:
        return main(argv)
    except FederationError as exc:
        code = int(getattr(exc, "exit_code", 1))
        fail(exc, code)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition``."""
    if not condition:
        raise ConfigError(message)
