"""The JSON Schemas in ``schemas/`` are generated from the models and describe real manifests."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import jsonschema
import numpy as np
import pytest

import shmstore
from shmstore._metadata import RECORD_ATTR, STORE_ATTR
from shmstore._schemas import MODELS, generator, main, render

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("filename", sorted(MODELS))
def test_committed_schema_matches_the_model(filename: str) -> None:
    committed = (SCHEMAS / filename).read_text()
    if json.loads(committed).get("$comment") != generator():
        pytest.skip(f"schemas/{filename} was rendered by another pydantic release than this one")
    assert committed == render(MODELS[filename]), (
        f"schemas/{filename} drifted from its model: run python -m shmstore._schemas"
    )


def test_schema_check_command_fails_on_drift(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "manifest.schema.json").write_text("{}\n")
    assert main(["--out", str(tmp_path), "--check"]) == 1


def _stored_record(path: Path, name: str) -> dict[str, object]:
    with h5py.File(path, "r") as file:
        return json.loads(bytes(file[name].attrs[RECORD_ATTR]).decode())  # type: ignore[no-any-return]


def _schema(filename: str) -> dict[str, object]:
    return json.loads((SCHEMAS / filename).read_text())  # type: ignore[no-any-return]


def test_stored_records_are_valid_against_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    compound = np.zeros(3, dtype=[("t", ">f8"), ("xyz", "<i2", (3,)), ("tag", "S4")])
    with shmstore.open(path, "w") as store:
        store.write("a/b", np.arange(12.0).reshape(4, 3))
        store.write("c", compound, compression="gzip")
        store.append("d", np.arange(8, dtype=">i4").reshape(4, 2))
    for name in ("a/b", "c", "d"):
        jsonschema.validate(_stored_record(path, name), _schema("record.schema.json"))
    with h5py.File(path, "r") as file:
        store_record = json.loads(bytes(file.attrs[STORE_ATTR]).decode())
    jsonschema.validate(store_record, _schema("store.schema.json"))


def test_a_built_manifest_is_valid_against_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("a/b", np.arange(12.0).reshape(4, 3))
        store.append("d", np.arange(8, dtype=">i4").reshape(4, 2))
        document = json.loads(store.manifest.model_dump_json())
    jsonschema.validate(document, _schema("manifest.schema.json"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", -1),
        ("format", "other"),
        ("format_version", 3),
        ("generation", "XYZ"),
        ("shape", {}),
    ],
    ids=["negative-version", "foreign-format", "newer-format", "generation-not-hex", "shape"],
)
def test_the_schema_rejects_a_damaged_record(tmp_path: Path, field: str, value: object) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", np.arange(4))
    document = {**_stored_record(path, "x"), field: value}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, _schema("record.schema.json"))


def test_a_block_header_is_valid_against_the_segment_schema(tmp_path: Path) -> None:
    import shutil
    import uuid

    from shmstore._segment import _PREFIX, MAGIC

    path = tmp_path / "s.h5"
    compound = np.zeros(4, dtype=[("t", ">f8"), ("tag", "S3")])
    with shmstore.open(path, "w") as store:
        store.write("c", compound)
    cache = shmstore.Cache(directory=Path("/dev/shm") / f"shmstore-test-{uuid.uuid4().hex[:12]}")
    try:
        with shmstore.open(path, cache=cache) as store, store.view("c", mode="shared"):
            (segment,) = cache.directory.glob("*.seg")
        raw = segment.read_bytes()
        assert raw.startswith(MAGIC)
        _, length = _PREFIX.unpack_from(raw)
        header = json.loads(raw[_PREFIX.size : _PREFIX.size + length])
        schema = json.loads((SCHEMAS / "segment.schema.json").read_text())
        jsonschema.validate(header, schema)
        # A block holds bytes of the dataset (it may cut rows): what they are
        # a copy of says which bytes, of which generation.
        assert header["dtype"] == "|u1"
        assert header["source"]["block"] == [0, compound.nbytes]
        assert header["source"]["generation"]
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)
