"""Read a dataset's metadata record as JSON and validate it against the checked-in schema.

Run ``python manifest_schema.py [DIRECTORY]`` from a checkout of shmstore
(it reads ``schemas/record.schema.json``); needs ``jsonschema``
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
from shmstore.manifest import DatasetRecord

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
with shmstore.open(path, mode="w") as store:
    store.write("weights", np.zeros((100, 8), dtype=np.float32))
    store.append("run1/spikes", np.arange(12).reshape(3, 4))
    info = store.info("weights")  # a frozen pydantic model, validated when first used
    manifest = store.manifest  # every dataset's, built on demand
print("datasets", sorted(manifest.arrays), "generation of weights", info.generation)

# Any HDF5 tool can read it: JSON text in the dataset's attribute "shmstore_record".
with h5py.File(path, "r") as f:
    document = json.loads(f["weights"].attrs["shmstore_record"])
print(json.dumps(document, indent=1)[:200], "...")

schema = json.loads((SCHEMAS / "record.schema.json").read_text())
jsonschema.validate(document, schema)  # raises ValidationError when invalid
assert DatasetRecord.model_validate(document).generation == info.generation

print("ok: the stored record is valid against schemas/record.schema.json")
