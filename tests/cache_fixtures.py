"""Fixtures of the cache tests, a plugin: ``pytest_plugins = ["tests.cache_fixtures"]``.

Every test gets its own cache directory on ``/dev/shm`` (the real tmpfs the
cache is made for), removed afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shmstore._cache import Cache

from ._cache_children import SHM


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    """A cache directory path on /dev/shm, not yet created; removed after the test."""
    if not SHM.is_dir():
        pytest.skip("needs /dev/shm, the tmpfs shared memory lives on")
    directory = SHM / f"shmstore-cachetest-{uuid.uuid4().hex[:12]}"
    yield directory
    if directory.is_symlink():
        directory.unlink()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cache(cache_dir: Path) -> Cache:
    """A cache in :func:`cache_dir` with a budget of 64 MiB."""
    return Cache(directory=cache_dir, budget="64M")


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
