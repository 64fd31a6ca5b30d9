"""Fail when a public name of shmstore is missing from the built API reference.

Run after the HTML build (the docs tox env does)::

    python docs/check_reference.py docs/_build/html/objects.inv

Every name of ``shmstore.__all__``, of ``shmstore.shared_numpy_store.__all__``
and, when the module can be imported, of ``shmstore.dask.__all__`` must be
an object of the ``py`` domain in the inventory.  Exits 1 listing the
missing names.
"""

from __future__ import annotations

import importlib
import sys
import zlib
from pathlib import Path

MODULES = ("shmstore", "shmstore.shared_numpy_store", "shmstore.dask")


def documented_names(inventory: Path) -> set[str]:
    """The names of the ``py`` domain in a version-2 Sphinx ``objects.inv``.

    :raises ValueError: the file is not a version-2 inventory.
    """
    data = inventory.read_bytes()
    lines = data.split(b"\n", 4)
    if len(lines) < 5 or lines[0].rstrip() != b"# Sphinx inventory version 2":
        raise ValueError(f"{inventory} is not a Sphinx inventory of version 2")
    names = set()
    for line in zlib.decompress(lines[4]).decode().splitlines():
        name, _, rest = line.partition(" ")
        if rest.startswith("py:"):
            names.add(name)
    return names


def public_names() -> list[str]:
    """The qualified public names of :data:`MODULES` (a module not installed is skipped)."""
    names = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if module_name == "shmstore":
                raise
            continue
        names.append(module_name)
        names += [f"{module_name}.{name}" for name in module.__all__]
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OBJECTS_INV", file=sys.stderr)
        return 2
    documented = documented_names(Path(argv[1]))
    wanted = public_names()
    missing = [name for name in wanted if name not in documented]
    if missing:
        print(f"missing from the API reference ({len(missing)}):", file=sys.stderr)
        for name in missing:
            print(f"  {name}", file=sys.stderr)
        return 1
    print(f"the API reference lists all {len(wanted)} public names")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
