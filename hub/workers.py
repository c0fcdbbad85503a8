"""Worker processes on pipes: start one, feed it, stop it (for signing and verifying).

A worker is a fresh Python running a small source string, with its input on stdin and its
answers on a private pipe whose write end's fd number is its first argument (so nothing
it prints can be mistaken for an answer). Only the standard library is imported here: the
audit's helper process loads modules of this package without its ``__init__``.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["spawn_worker", "stop_worker", "write_all"]


def spawn_worker(source: str) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``source`` in a new Python; return the process and the read end of its answers."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", source, str(write_end)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_end,),
            bufsize=0,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return proc, read_end


def stop_worker(proc: subprocess.Popen[bytes], answers: int, *, kill: bool) -> None:
    """End a worker: kill it (or let it end with its input), close its pipes, reap it."""
    if kill and proc.poll() is None:
        proc.kill()
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    os.close(answers)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
