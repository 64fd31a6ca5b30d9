"""A directory of the original module's files, brought into the store.

Run ``python migrating_original_files.py [DIRECTORY]``.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from shmstore import shared_numpy_store

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()) / "old"
directory.mkdir()
# What the original left: raw files named <name>__<shape>__<dtype>.
voltages = np.arange(3_000.0).reshape(1_000, 3)
voltages.tofile(directory / "voltages__1000_3__float64")
np.array(["soma", "axon"], dtype="<U4").tofile(directory / "labels__2__<U4")
(directory / "spikes__10_3__float64").write_bytes(bytes(16))  # damaged: too short

store = shared_numpy_store.SharedNumpyStore(directory)
try:
    store.append_save(voltages[:5], "voltages")  # would hide the file's 1,000 rows
except shared_numpy_store.OriginalNotImportedError as err:
    print("refused:", err)

report = store.import_original()  # every file it can; a report on each
print(report)
assert report.imported == ["labels", "voltages"]
assert [f.file for f in report.refused] == ["spikes__10_3__float64"]

store.append_save(voltages[:5], "voltages")  # now adds to the imported rows
assert store.load("voltages", mode="memory").shape == (1_005, 3)

voltages[:10].tofile(directory / "spikes__10_3__float64")  # restored from a copy
assert store.import_original().imported == ["spikes"]  # the rest is skipped: in already

print("ok: the original's files were imported, the damaged one once restored")
