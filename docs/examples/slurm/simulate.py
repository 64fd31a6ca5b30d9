import os

import shmstore

task = int(os.environ["SLURM_PROCID"])  # this task's number, 0 to SLURM_NTASKS - 1
tasks = int(os.environ["SLURM_NTASKS"])

with (
    shmstore.open("model.h5") as store,
    store.view("weights", rows=(0, 1_000_000)) as weights,  # maps the node's copy
):
    mine = weights[task::tasks]  # this task's share of the rows, still shared pages
    print(f"task {task} of {tasks}: {len(mine)} rows, mean {float(mine.mean()):.3f}")
