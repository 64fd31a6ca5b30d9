"""The SLURM recipe of the sharing guide runs as shown, with srun replaced by a local one.

There is no SLURM cluster here: a stand-in ``srun`` first on ``PATH`` starts a
step's tasks on this machine, which plays one node, as srun would
(``--ntasks``, else ``$SLURM_NTASKS`` of the job; each task with its
``SLURM_PROCID``).  Everything else is real: the job script run by bash,
the ``shmstore`` console script, ``simulate.py``, the HDF5 file and the
node's shared memory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import shmstore
from tests.docs._pages import DOCS, EXAMPLES_DIR, code_blocks

RECIPE = EXAMPLES_DIR / "slurm"
TASKS = 4

SRUN = """#!/bin/bash
# Stand-in for srun on one node: start the step's tasks here and wait for them.
ntasks=$SLURM_NTASKS
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in --ntasks=*) ntasks=${1#*=} ;; esac
    shift
done
# Like srun, hand on each task's output whole (tasks print at the same time).
out=$(mktemp -d)
pids=()
for ((i = 0; i < ntasks; i++)); do
    SLURM_PROCID=$i SLURM_NTASKS=$ntasks "$@" >"$out/$i" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for ((i = 0; i < ntasks; i++)); do cat "$out/$i"; done
rm -r "$out"
exit $status
"""


def _run_job(workdir: Path, cache_directory: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(SRUN)
    srun.chmod(0o755)
    env = {
        **os.environ,
        # srun first, then this interpreter's scripts (shmstore, python).
        "PATH": os.pathsep.join(
            [str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "SHMSTORE_DIR": str(cache_directory),
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NTASKS": str(TASKS),
        "SLURM_NTASKS_PER_NODE": str(TASKS),
    }
    return subprocess.run(
        ["bash", str(workdir / "job.sh")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def job_directory(tmp_path: Path) -> Path:
    """The submit directory: the recipe's files and a model.h5 of 1,000,000 x 4 float32."""
    for name in ("job.sh", "simulate.py"):
        shutil.copy(RECIPE / name, tmp_path / name)
    weights = np.full((1_000_000, 4), 0.5, dtype=np.float32)  # 16,000,000 bytes
    with shmstore.open(tmp_path / "model.h5", mode="w") as store:
        store.write("weights", weights)
    return tmp_path


@pytest.fixture
def cache_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    directory.mkdir()
    return directory


def test_the_job_loads_once_and_every_task_maps_the_node_copy(
    job_directory: Path, cache_directory: Path
) -> None:
    result = _run_job(job_directory, cache_directory)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len([line for line in lines if line.startswith("loaded weights[0:1000000]")]) == 1
    tasks = sorted(line for line in lines if line.startswith("task "))
    assert tasks == [f"task {i} of {TASKS}: 250000 rows, mean 0.500" for i in range(TASKS)]
    entries = shmstore.Cache(cache_directory).entries()
    assert [(e.dataset, e.rows) for e in entries] == [("weights", (0, 1_000_000))]


def test_a_second_job_on_the_node_finds_the_rows_loaded(
    job_directory: Path, cache_directory: Path
) -> None:
    assert _run_job(job_directory, cache_directory).returncode == 0
    again = _run_job(job_directory, cache_directory)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"weights\[0:1000000\] .* is already in .*nothing to do", again.stdout)
    assert len(shmstore.Cache(cache_directory).entries()) == 1


def test_the_sharing_guide_shows_the_recipe_whole() -> None:
    page = DOCS / "guide" / "sharing.md"
    includes = [b for b in code_blocks(page) if b.language == "literalinclude"]
    targets = {(page.parent / b.argument).resolve(): b.body for b in includes}
    for name in ("job.sh", "simulate.py"):
        assert RECIPE / name in targets, f"the sharing guide does not show {name}"
        assert ":start" not in targets[RECIPE / name], f"{name} is shown in part"
        assert ":end" not in targets[RECIPE / name], f"{name} is shown in part"
        assert ":lines" not in targets[RECIPE / name], f"{name} is shown in part"
