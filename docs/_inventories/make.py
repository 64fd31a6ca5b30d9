"""Write the small intersphinx inventories the docs build reads offline.

The docs link to Python, numpy, h5py and pydantic.  Sphinx's intersphinx
normally downloads each project's ``objects.inv``; CI has no network, so
``docs/conf.py`` reads the files this script writes beside it instead.  Each
holds only the entries of :data:`WANTED`, so they stay a few KB, while every
link still points at the public documentation (the URIs are relative to the
base URL of ``intersphinx_mapping`` in ``docs/conf.py``).

Regenerate them (after adding a name the docs reference to ``WANTED``)::

    python3 docs/_inventories/make.py                       # from the defaults below
    python3 docs/_inventories/make.py --numpy numpy.inv     # a full inventory you downloaded

The full inventories are read from a file or URL per project.  Defaults: the
Debian packages ``python3.11-doc`` and ``python-h5py-doc`` (``apt-get
install`` them, or ``apt-get download`` and ``dpkg-deb -x``).  Debian ships
no numpy, pydantic, dask or distributed inventory; without ``--numpy`` and
so on, their entries come from :data:`FALLBACK`, written from the layout of
their public documentation.  A name of ``WANTED`` found nowhere is an error.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.request
import zlib
from pathlib import Path

HERE = Path(__file__).parent

# project -> (name of the file, default source of the full inventory)
PROJECTS = {
    "python": ("python.inv", "/usr/share/doc/python3.11/html/objects.inv"),
    "h5py": ("h5py.inv", "/usr/share/doc/python-h5py-doc/html/objects.inv"),
    "numpy": ("numpy.inv", None),
    "pydantic": ("pydantic.inv", None),
    "dask": ("dask.inv", None),
    "distributed": ("distributed.inv", None),
}

# The entries the docs need, as "domain:role name".  Add one when a build
# says "reference target not found" for a name of these projects.
WANTED = {
    "python": [
        "py:class int",
        "py:class float",
        "py:class str",
        "py:class bytes",
        "py:class bool",
        "py:class tuple",
        "py:class list",
        "py:class dict",
        "py:class object",
        "py:class slice",
        "py:class memoryview",
        "py:data None",
        "py:exception Exception",
        "py:exception OSError",
        "py:exception ValueError",
        "py:exception KeyError",
        "py:exception IndexError",
        "py:exception TypeError",
        "py:exception FileNotFoundError",
        "py:exception FileExistsError",
        "py:exception PermissionError",
        "py:exception TimeoutError",
        "py:exception KeyboardInterrupt",
        "py:class pathlib.Path",
        "py:class os.PathLike",
        "py:class collections.abc.Iterator",
        "py:class contextlib.AbstractContextManager",
        "py:class collections.abc.Iterable",
        "py:class collections.abc.Mapping",
        "py:class collections.abc.Callable",
        "py:class collections.abc.Sequence",
        "py:data typing.Any",
        "py:data typing.Literal",
        "py:class typing.SupportsIndex",
        "py:class multiprocessing.pool.Pool",
        "py:function multiprocessing.get_context",
        "py:function os.posix_fallocate",
        "py:function fcntl.flock",
        "py:class mmap.mmap",
        "py:module multiprocessing",
        "py:module pickle",
        "py:module signal",
        "py:data signal.SIGINT",
        "py:data signal.SIGTERM",
        "std:label pickle-picklable",
    ],
    "h5py": [
        "py:class h5py.File",
        "py:class h5py.Dataset",
        "py:class h5py.Group",
        "py:method h5py.Dataset.read_direct",
        "py:method h5py.Dataset.resize",
        "py:attribute h5py.Dataset.chunks",
        "py:attribute h5py.Dataset.external",
        "std:label dataset_chunks",
        "std:label dataset_compression",
        "std:label dataset_resize",
    ],
    "numpy": [
        "py:class numpy.ndarray",
        "py:class numpy.dtype",
        "py:class numpy.memmap",
        "py:data numpy.typing.ArrayLike",
        "py:data numpy.typing.DTypeLike",
        "py:attribute numpy.ndarray.flags",
        "py:function numpy.load",
        "py:function numpy.save",
        "py:function numpy.testing.assert_array_equal",
    ],
    "pydantic": [
        "py:class pydantic.BaseModel",
        "py:class pydantic.main.BaseModel",
    ],
    "dask": [
        "py:class dask.array.Array",
        "py:function dask.array.from_array",
    ],
    "distributed": [
        "py:class distributed.diagnostics.plugin.WorkerPlugin",
        "py:class distributed.Client",
        "py:class distributed.worker.Worker",
    ],
}

# Entries of projects with no inventory at hand: "domain:role name" -> URI
# relative to the project's base URL in docs/conf.py.
FALLBACK = {
    "numpy": {
        "py:class numpy.ndarray": "reference/generated/numpy.ndarray.html#numpy.ndarray",
        "py:class numpy.dtype": "reference/generated/numpy.dtype.html#numpy.dtype",
        "py:class numpy.memmap": "reference/generated/numpy.memmap.html#numpy.memmap",
        "py:data numpy.typing.ArrayLike": "reference/typing.html#numpy.typing.ArrayLike",
        "py:data numpy.typing.DTypeLike": "reference/typing.html#numpy.typing.DTypeLike",
        "py:attribute numpy.ndarray.flags": (
            "reference/generated/numpy.ndarray.flags.html#numpy.ndarray.flags"
        ),
        "py:function numpy.load": "reference/generated/numpy.load.html#numpy.load",
        "py:function numpy.save": "reference/generated/numpy.save.html#numpy.save",
        "py:function numpy.testing.assert_array_equal": (
            "reference/generated/numpy.testing.assert_array_equal.html"
            "#numpy.testing.assert_array_equal"
        ),
    },
    # pydantic's site is built with MkDocs; these are its API pages.
    "pydantic": {
        "py:class pydantic.BaseModel": "api/base_model/#pydantic.BaseModel",
        "py:class pydantic.main.BaseModel": "api/base_model/#pydantic.BaseModel",
    },
    "dask": {
        "py:class dask.array.Array": "generated/dask.array.Array.html#dask.array.Array",
        "py:function dask.array.from_array": (
            "generated/dask.array.from_array.html#dask.array.from_array"
        ),
    },
    "distributed": {
        "py:class distributed.diagnostics.plugin.WorkerPlugin": (
            "plugins.html#distributed.diagnostics.plugin.WorkerPlugin"
        ),
        "py:class distributed.Client": "api.html#distributed.Client",
        "py:class distributed.worker.Worker": "worker.html#distributed.worker.Worker",
    },
}

_LINE = re.compile(r"(?x)(.+?)\s+(\S+)\s+(-?\d+)\s+?(\S*)\s+(.*)")
_HEADER = "# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"


def read_inventory(source: str) -> tuple[str, dict[str, tuple[str, str, str]]]:
    """Entries of a version-2 ``objects.inv``: "domain:role name" -> (priority, uri, dispname).

    :param source: a path or an ``https://`` URL.
    :returns: the project's version and the entries, URIs with ``$`` expanded.
    :raises ValueError: the file is not a version-2 inventory.
    """
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=30) as response:
            data = response.read()
    else:
        data = Path(source).read_bytes()
    lines = data.split(b"\n", 4)
    if len(lines) < 5 or lines[0].rstrip() != b"# Sphinx inventory version 2":
        raise ValueError(f"{source} is not a Sphinx inventory of version 2")
    version = lines[2].decode().removeprefix("# Version:").strip()
    entries = {}
    for line in zlib.decompress(lines[4]).decode().splitlines():
        match = _LINE.match(line.rstrip())
        if match is None:
            continue
        name, kind, priority, uri, dispname = match.groups()
        if uri.endswith("$"):
            uri = uri[:-1] + name
        entries[f"{kind} {name}"] = (priority, uri, dispname)
    return version, entries


def write_inventory(path: Path, project: str, version: str, entries: dict[str, str]) -> None:
    """Write *entries* ("domain:role name" -> URI) as a version-2 ``objects.inv``."""
    body = "".join(
        f"{wanted.split(' ', 1)[1]} {wanted.split(' ', 1)[0]} 1 {uri} -\n"
        for wanted, uri in sorted(entries.items())
    )
    header = _HEADER.format(project=project, version=version)
    header += "# The remainder of this file is compressed using zlib.\n"
    path.write_bytes(header.encode() + zlib.compress(body.encode(), 9))


def small_inventory(project: str, source: str | None) -> tuple[str, dict[str, str]]:
    """The version and the wanted entries of *project*, from *source* or the fallback.

    :raises SystemExit: a wanted name is in neither.
    """
    if source is None:
        version, found = "fallback", {k: ("1", uri, "-") for k, uri in FALLBACK[project].items()}
    else:
        version, found = read_inventory(source)
    missing = [wanted for wanted in WANTED[project] if wanted not in found]
    if missing:
        raise SystemExit(f"{project}: not in {source or 'FALLBACK'}: {', '.join(missing)}")
    return version, {wanted: found[wanted][1] for wanted in WANTED[project]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    for project, (_, default) in PROJECTS.items():
        parser.add_argument(
            f"--{project}",
            default=default,
            metavar="PATH_OR_URL",
            help=f"full objects.inv of {project} (default: {default or 'the FALLBACK table'})",
        )
    args = parser.parse_args(argv)
    for project, (filename, _) in PROJECTS.items():
        version, entries = small_inventory(project, getattr(args, project))
        write_inventory(HERE / filename, project, version, entries)
        print(f"{filename}: {len(entries)} entries (version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
