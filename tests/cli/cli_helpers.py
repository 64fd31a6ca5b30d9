"""Running the installed ``shmstore`` console script in a subprocess, as a job script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "shmstore"
"""The console script pip installed beside this interpreter."""


def run(
    *args: str,
    cache_dir: Path | None = None,
    env: dict[str, str] | None = None,
    module: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``shmstore ARGS`` (or ``python -m shmstore ARGS``) with the test's cache directory."""
    environment = {**os.environ, **(env or {})}
    if cache_dir is not None:
        environment["SHMSTORE_DIR"] = str(cache_dir)
    command = [sys.executable, "-m", "shmstore"] if module else [str(SCRIPT)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def run_json(*args: str, cache_dir: Path | None = None, env: dict[str, str] | None = None) -> Any:
    """``shmstore ARGS --json``, which must succeed; its stdout parsed."""
    done = run(*args, "--json", cache_dir=cache_dir, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``shmstore: error: ...`` line of a failure (exit 1), checked to be alone."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("shmstore: error: "), lines[0]
    return lines[0]


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """argparse's message of a usage error (exit 2)."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    return done.stderr
