"""Fixtures of the cache tests: a file for cached rows to come from, a tmpfs of their own."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A real file standing for the source the cached rows are a copy of."""
    path = tmp_path / "origin.bin"
    path.write_bytes(b"the file the cached rows are a copy of")
    return path


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 8 MiB of its own (mode 700), remountable read-only; unmounted afterwards.

    Needs the right to mount (root); the test is skipped where it is missing.
    """
    point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=700", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
