"""``import shmstore`` is cheap: what only some paths need is imported when first used."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_importing_shmstore_imports_neither_h5py_nor_pydantic_nor_filelock() -> None:
    loaded = _modules_after("import shmstore")
    assert not loaded & {"h5py", "pydantic", "filelock", "tqdm", "numpy"}


def test_errors_are_there_without_the_heavy_modules() -> None:
    loaded = _modules_after(
        "import shmstore\n"
        "assert issubclass(shmstore.ArrayNotFoundError, KeyError)\n"
        "assert shmstore.Uninterruptible"
    )
    assert "h5py" not in loaded


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("open", "h5py"),
        ("Cache", "filelock"),
        ("Manifest", "pydantic"),
        ("shared_numpy_store", "h5py"),
    ],
)
def test_a_public_name_imports_what_it_needs_on_first_use(name: str, module: str) -> None:
    loaded = _modules_after(f"import shmstore\nshmstore.{name}")
    assert module in loaded


def test_from_import_and_dir_see_the_lazy_names() -> None:
    import shmstore
    from shmstore import Store, open  # noqa: F401 - the import is the test

    assert set(shmstore.__all__) <= set(dir(shmstore))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = shmstore.nope  # type: ignore[attr-defined]
