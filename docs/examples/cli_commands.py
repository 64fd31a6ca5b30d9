"""The ``shmstore`` command: put, info, validate, preload, ls, evict, each with --json.

Run ``python cli_commands.py [DIRECTORY]``.  Calls the command as
``python -m shmstore`` (the same program as ``shmstore``), with its own
cache directory under ``$SHMSTORE_DIR`` (or a temporary one).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
cache_dir = Path(os.environ.get("SHMSTORE_DIR") or tempfile.mkdtemp(dir="/dev/shm")) / "cli-demo"
store = directory / "data.h5"
np.save(directory / "weights.npy", np.arange(12_000, dtype=np.float32).reshape(1_000, 12))


def shmstore(*args: str) -> dict:
    """Run ``shmstore ARGS --json`` and return its JSON document; fail on a non-zero exit."""
    command = [sys.executable, "-m", "shmstore", *args, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


shmstore("put", str(store), "weights", str(directory / "weights.npy"))
info = shmstore("info", str(store))
print([(d["name"], d["shape"], d["layout"]) for d in info["datasets"]])
shmstore("validate", str(store), "--full")

# A SLURM prologue: load rows once per node; later calls exit at once.
shmstore("preload", str(store), "weights", "--rows", "0:500", "--cache-dir", str(cache_dir))
listing = shmstore("ls", "--cache-dir", str(cache_dir))
# Rows are cached in blocks (64 MiB by default): these 1000 rows are one.
print([(d["dataset"], d["rows"], d["blocks"], d["nbytes"]) for d in listing["datasets"]])
assert [(d["dataset"], d["rows"]) for d in listing["datasets"]] == [("weights", "0:1000")]

evicted = shmstore("evict", "--all", "--cache-dir", str(cache_dir))
print("evict --all:", evicted)
assert evicted["evicted"] == listing["datasets"][0]["keys"]

print("ok: put, info, validate, preload, ls and evict ran with --json")
