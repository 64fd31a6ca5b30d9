from pathlib import Path

import numpy as np

from shmstore import shared_numpy_store

# What the original left in a directory: raw files named <name>__<shape>__<dtype>.
directory = Path("old")
directory.mkdir()
voltages = np.arange(3_000.0).reshape(1_000, 3)
voltages.tofile(directory / "voltages__1000_3__float64")
np.array(["soma", "axon"], dtype="<U4").tofile(directory / "labels__2__<U4")
(directory / "spikes__10_3__float64").write_bytes(bytes(16))  # damaged: too short

store = shared_numpy_store.SharedNumpyStore(directory)
try:
    store.append_save(voltages[:5], "voltages")  # would hide the file's 1,000 rows
except shared_numpy_store.OriginalNotImportedError as err:
    print("OriginalNotImportedError:", err)

report = store.import_original()  # every file it can; a line on each
print(report)

store.append_save(voltages[:5], "voltages")  # now adds to the imported rows
print("voltages:", store.load("voltages", mode="memory").shape)

voltages[:10].tofile(directory / "spikes__10_3__float64")  # restored from a backup
print(store.import_original())  # what is in the store already is skipped
