"""Open a store, write three kinds of dataset, read rows back.

Run ``python getting_started_write_read.py [DIRECTORY]`` (default: a new
temporary directory); it writes ``data.h5`` there.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import shmstore

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
activations = np.arange(10_000 * 8, dtype=np.float32).reshape(10_000, 8)  # 320 KB
lookup = np.linspace(0.0, 1.0, 5_000).reshape(1_000, 5)

with shmstore.open(path, mode="w") as store:  # "w": create, or truncate
    store.write("activations", activations)  # contiguous: memory-mappable
    store.write("lookup", lookup, compression="gzip")  # chunked and compressed
    store.append("run1/spikes", np.arange(40).reshape(10, 4))  # appendable, grows on axis 0
    store.append("run1/spikes", np.arange(40, 80).reshape(10, 4))

with shmstore.open(path) as store:  # mode "r" is the default
    print(store.names())  # nested groups as "grp/ds"
    info = store.info("activations")
    print(info.shape, info.dtype, info.layout, info.nbytes, "bytes")

    rows = store.read("activations", rows=slice(100, 200))  # a private, writeable copy
    np.testing.assert_array_equal(rows, activations[100:200])
    last = store.read("activations", rows=(-10, None))  # negative rows count from the end
    np.testing.assert_array_equal(last, activations[-10:])
    np.testing.assert_array_equal(store.read("run1/spikes"), np.arange(80).reshape(20, 4))

    try:
        store.read("activations", rows=(9_990, 10_010))  # past the end: never clipped
    except shmstore.RowsError as err:  # also an IndexError
        print("RowsError:", err)
    try:
        store.read("missing")
    except KeyError as err:  # shmstore.ArrayNotFoundError is a KeyError
        print(type(err).__name__, err)

print("ok: wrote three datasets and read their rows back")
