import json

import h5py
import jsonschema
import numpy as np

import shmstore
from shmstore.manifest import DatasetRecord

with shmstore.open("data.h5", mode="w") as store:
    store.write("weights", np.zeros((100, 8), dtype=np.float32))
    store.append("run1/spikes", np.arange(12).reshape(3, 4))
    info = store.info("weights")  # a frozen pydantic model, validated when first used
    print(info.shape, info.dtype, info.layout, info.checksums.algorithm)
    manifest = store.manifest  # every dataset's record, gathered on demand
    print(sorted(manifest.arrays))

# Any HDF5 tool reads a record: JSON text in the attribute "shmstore_record".
with h5py.File("data.h5", "r") as f:
    document = json.loads(f["weights"].attrs["shmstore_record"])
for key, value in sorted(document.items()):
    print(f"  {key}: {json.dumps(value)}")

# The model's JSON Schema: the same as schemas/record.schema.json in the repository.
schema = DatasetRecord.model_json_schema()
jsonschema.validate(document, schema)  # raises jsonschema.ValidationError if invalid
print("valid against the schema")
