#!/bin/bash
#SBATCH --job-name=simulate
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=32
#SBATCH --mem=64G  # per node, the slice included: its pages count against this job
set -euo pipefail

# Submit from the directory holding model.h5, on a file system every node reads.
# Step 1: one task per node loads rows 0:1000000 of "weights" into the node's
# shared memory. Where another job loaded them already, it exits at once.
nodes=$SLURM_JOB_NUM_NODES
srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 \
    shmstore preload model.h5 weights --rows 0:1000000

# Step 2: every task maps the node's copy: no HDF5 read, no second copy.
srun python simulate.py
