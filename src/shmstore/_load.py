"""Filling a shared buffer with rows of a dataset, straight from the file.

The cache hands the loader a writeable array mapped on the new segment; the
rows are read into it directly, never through a private copy, so a loader's
own memory stays small next to the slice:

* a contiguous or external dataset is one block of one file: ``preadv``
  copies its bytes straight into the mapping;
* a chunked (possibly compressed) dataset goes through h5py's
  ``read_direct`` into the mapping, one block of rows at a time, so HDF5's
  conversion buffers stay at a block.

Loads that last longer than a second show a tqdm progress bar on stderr
when it is a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import InvalidStoreError
from .manifest import ArrayInfo

__all__ = ["BLOCK_BYTES", "block_filler", "dataset_filler"]

BLOCK_BYTES = 64 << 20
"""Bytes read per system call or per ``read_direct``: the progress step."""


def _progress(total: int, what: str) -> Any:
    from tqdm import tqdm  # imported when a load runs: most imports of shmstore never load

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=what,
        delay=1.0,  # only loads that last over a second show a bar
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
    )


def block_filler(path: Path, offset: int, what: str) -> Callable[[np.ndarray[Any, Any]], None]:
    """A fill callback copying ``out.nbytes`` bytes of *path* from byte *offset* into ``out``.

    :raises InvalidStoreError: (when called) the file ends before the block does.
    """

    def fill(out: np.ndarray[Any, Any]) -> None:
        target = memoryview(out.reshape(-1).view(np.uint8).data) if out.size else memoryview(b"")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _progress(len(target), what) as bar:
                done = 0
                while done < len(target):
                    step = os.preadv(fd, [target[done : done + BLOCK_BYTES]], offset + done)
                    if step == 0:
                        raise InvalidStoreError(
                            f"{path} ended after {offset + done} bytes while loading {what}: "
                            "the file is truncated"
                        )
                    done += step
                    bar.update(step)
        finally:
            os.close(fd)

    return fill


def dataset_filler(
    dataset: h5py.Dataset, info: ArrayInfo, start: int, what: str
) -> Callable[[np.ndarray[Any, Any]], None]:
    """A fill callback reading rows ``start, start + len(out)`` of *dataset* into ``out``.

    :raises InvalidStoreError: (when called) HDF5 cannot read or decode the rows.
    """

    def fill(out: np.ndarray[Any, Any]) -> None:
        rows = len(out)
        step = max(1, BLOCK_BYTES // max(info.row_nbytes, 1))
        try:
            with _progress(out.nbytes, what) as bar:
                for first in range(0, rows, step):
                    last = min(rows, first + step)
                    dataset.read_direct(
                        out,
                        source_sel=np.s_[start + first : start + last],
                        dest_sel=np.s_[first:last],
                    )
                    bar.update((last - first) * info.row_nbytes)
        except (OSError, RuntimeError, ValueError) as err:
            raise InvalidStoreError(f"reading {what} failed: {err}") from err

    return fill
