import json
import subprocess
import sys

import numpy as np


def shmstore(*args: str) -> dict:
    """Run `shmstore ARGS --json` and return its JSON document."""
    # `python -m shmstore` is the same program as `shmstore`, from this Python.
    command = [sys.executable, "-m", "shmstore", *args, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


np.save("weights.npy", np.arange(12_000, dtype=np.float32).reshape(1_000, 12))

# Write the .npy file as dataset "weights" of data.h5, streamed.
shmstore("put", "data.h5", "weights", "weights.npy")
info = shmstore("info", "data.h5")
for dataset in info["datasets"]:
    print(dataset["name"], dataset["shape"], dataset["dtype"], dataset["layout"])
print("valid:", shmstore("validate", "data.h5", "--full")["valid"])

# As in a SLURM prologue: load rows once per node; a second call finds them there.
for _ in range(2):
    preload = shmstore("preload", "data.h5", "weights", "--rows", "0:500")
    print("preload rows", preload["rows"], "loaded:", preload["loaded"])
listing = shmstore("ls")
# Rows are cached in blocks (64 MiB by default): these 1,000 rows are one block.
for dataset in listing["datasets"]:
    rows, blocks, nbytes = dataset["rows"], dataset["blocks"], dataset["nbytes"]
    print(f"{dataset['dataset']}: rows {rows} cached, {blocks} block, {nbytes} bytes")

evicted = shmstore("evict", "--all")
print("evict --all:", [(a["kind"], a["outcome"]) for a in evicted["actions"]])
