"""Generate (or check) the JSON Schemas in ``schemas/`` from the pydantic models.

Run ``python -m shmstore._schemas`` from the repository root to regenerate
them, and ``python -m shmstore._schemas --check`` to fail when they drifted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel

from ._segment import SegmentHeader
from .manifest import DatasetRecord, Manifest, StoreRecord
from .shared_numpy_store import LoaderDescription

__all__ = ["MODELS", "generator", "main", "render"]

MODELS: dict[str, type[BaseModel]] = {
    "loader.schema.json": LoaderDescription,
    "manifest.schema.json": Manifest,
    "record.schema.json": DatasetRecord,
    "segment.schema.json": SegmentHeader,
    "store.schema.json": StoreRecord,
}
"""Each schema file and the model it is generated from."""


def generator() -> str:
    """What renders the schemas; their exact text differs between pydantic releases."""
    major, minor = pydantic.VERSION.split(".")[:2]
    return f"generated from the shmstore models by pydantic {major}.{minor}"


def render(model: type[BaseModel]) -> str:
    """The JSON Schema of *model* as stable, readable text (sorted keys, newline at end)."""
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": generator(),
        **model.model_json_schema(mode="validation"),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schemas into ``--out`` (default ``schemas``), or compare with ``--check``."""
    parser = argparse.ArgumentParser(prog="python -m shmstore._schemas", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("schemas"))
    parser.add_argument("--check", action="store_true", help="fail if a schema file differs")
    args = parser.parse_args(argv)
    stale = []
    for filename, model in MODELS.items():
        path = args.out / filename
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(
            f"schemas out of date: {', '.join(stale)}; run python -m shmstore._schemas",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
