"""docs/check_reference.py, which the docs tox env runs after the build, catches a missing name."""

from __future__ import annotations

import zlib
from pathlib import Path
from types import ModuleType

import pytest

from tests.docs._pages import DOCS, load_script

SCRIPT = DOCS / "check_reference.py"


@pytest.fixture(scope="module")
def check_reference() -> ModuleType:
    return load_script("check_reference", SCRIPT)


def _inventory(path: Path, names: list[str]) -> Path:
    body = "".join(f"{name} py:class 1 api/x.html#$ -\n" for name in names)
    header = (
        "# Sphinx inventory version 2\n# Project: shmstore\n# Version: 0\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.write_bytes(header.encode() + zlib.compress(body.encode()))
    return path


def test_an_inventory_listing_every_public_name_passes(
    check_reference: ModuleType, tmp_path: Path
) -> None:
    inventory = _inventory(tmp_path / "objects.inv", check_reference.public_names())
    assert check_reference.main(["check_reference.py", str(inventory)]) == 0


def test_an_inventory_missing_one_public_name_fails_naming_it(
    check_reference: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [n for n in check_reference.public_names() if n != "shmstore.Handle"]
    inventory = _inventory(tmp_path / "objects.inv", names)
    assert check_reference.main(["check_reference.py", str(inventory)]) == 1
    assert "shmstore.Handle" in capsys.readouterr().err


def test_the_seed_modules_names_are_required(check_reference: ModuleType) -> None:
    names = check_reference.public_names()
    assert "shmstore.shared_numpy_store.SharedNumpyStore" in names
    assert "shmstore.open" in names
