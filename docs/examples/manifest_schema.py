"""Read a store's manifest as JSON and validate it against the checked-in schema.

Run ``python manifest_schema.py [DIRECTORY]`` from a checkout of shmstore
(it reads ``schemas/manifest.schema.json``); needs ``jsonschema``
(``pip install jsonschema``, part of the ``test`` extra).
"""

import json
import sys
import tempfile
from pathlib import Path

import h5py
import jsonschema
import numpy as np

import shmstore

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
with shmstore.open(path, mode="w") as store:
    store.write("weights", np.zeros((100, 8), dtype=np.float32))
    store.append("run1/spikes", np.arange(12).reshape(3, 4))
    manifest = store.manifest  # a frozen pydantic model
print("revision", manifest.revision, "datasets", sorted(manifest.arrays))

# Any HDF5 tool can read it: JSON text in the root attribute "shmstore_manifest".
with h5py.File(path, "r") as f:
    document = json.loads(f.attrs["shmstore_manifest"])
print(json.dumps(document["arrays"]["weights"], indent=1)[:200], "...")

schema = json.loads((SCHEMAS / "manifest.schema.json").read_text())
jsonschema.validate(document, schema)  # raises ValidationError when invalid
assert shmstore.Manifest.model_validate(document) == manifest

print("ok: the stored manifest is valid against schemas/manifest.schema.json")
