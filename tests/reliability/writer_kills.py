"""Killing the crash tests' writer (``_children_writer.py``) at an exact write.

Shared by the crash loops here and the metadata migration's kill loop:
``strace`` injects a SIGKILL at the writer's *n*-th ``pwrite``, so a loop
over *n* lands between and inside every step of a change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WRITER = Path(__file__).with_name("_children_writer.py")
"""The writer script, run as ``python WRITER STORE NAME BATCH``."""

STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(
    not (
        STRACE and subprocess.run([STRACE, "-o", os.devnull, "true"], check=False).returncode == 0
    ),
    reason="needs a working strace (ptrace) to kill at an exact write",
)


def run_killed_at(nth: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the writer with ``args``, SIGKILLed by strace at its *nth* ``pwrite``."""
    assert STRACE is not None
    return subprocess.run(
        [
            STRACE,
            "-o",
            os.devnull,
            "-e",
            "trace=pwrite64",
            "-e",
            f"inject=pwrite64:signal=SIGKILL:when={nth}",
            sys.executable,
            str(WRITER),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(WRITER.parent)},
    )
