"""A command run with its stderr on a pseudo-terminal, as a person at a terminal sees it
(``fedhub call`` draws its progress bar only there)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path


def run_on_terminal(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, limit: float = 60.0
) -> tuple[int, bytes, str]:
    """Run ``argv`` with stderr on a terminal: (exit code, stdout, all the terminal got).

    The terminal is read until the process closes it or ends, for ``limit`` seconds at most.
    """
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, env=env, cwd=cwd
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, seen.decode()
