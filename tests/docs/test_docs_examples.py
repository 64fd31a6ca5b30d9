"""Every example of the user guide (docs/examples/*.py) runs and checks its own results.

Each example asserts what it shows and ends by printing one line that starts
with ``ok:``, a line written in its source; it runs here in a fresh
interpreter, in its own directory, with its own cache directory, so examples
share neither files nor cached slices.  An example that imports a package
this environment lacks (``distributed`` without the ``dask`` extra) is
skipped, naming the package.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "docs" / "examples").glob("*.py"))
WITH_WORKERS = {"dask_from_store", "dask_handles", "sharing_workers"}
"""Examples that start a Dask cluster or worker processes: marked slow, as what they
show is also tested quickly in tests/dask/ and tests/sharing/."""


@pytest.fixture
def cache_directory(tmp_path: Path) -> Iterator[Path]:
    """A new cache directory on /dev/shm (tmpfs, as on a node), else under tmp_path."""
    if Path("/dev/shm").is_dir():
        directory = Path(tempfile.mkdtemp(prefix="shmstore-docs-", dir="/dev/shm"))
    else:
        directory = tmp_path / "cache"
        directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _missing_imports(example: Path) -> list[str]:
    """Top-level packages *example* imports that cannot be found here."""
    packages = set()
    for node in ast.parse(example.read_text()).body:
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return sorted(name for name in packages if importlib.util.find_spec(name) is None)


def test_the_guide_has_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(
            path, id=path.stem, marks=[pytest.mark.slow] if path.stem in WITH_WORKERS else []
        )
        for path in EXAMPLES
    ],
)
def test_example_runs_and_prints_its_ok_line(
    example: Path, tmp_path: Path, cache_directory: Path
) -> None:
    missing = _missing_imports(example)
    if missing:
        pytest.skip(f"{example.name} needs {', '.join(missing)}, not installed here")
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "SHMSTORE_DIR": str(cache_directory)}
    result = subprocess.run(
        [sys.executable, str(example), str(workdir)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith("ok: "), result.stdout
    assert last_line in example.read_text(), f"{last_line!r} is not printed by {example.name}"
