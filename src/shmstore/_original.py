"""The files the original ``shared_numpy_store`` left in a directory: their names, read back.

The original kept each array in a raw file of its bytes named
``<name>__<shape>__<dtype>``: the sizes of the shape joined by ``_`` (nothing
for a 0-d array) and ``str(dtype)``, which is ``float64``, ``<U5``,
``datetime64[ns]``, or for a structured dtype the text of its description
(``[('a', '<f8'), ('b', '<i4')]``).  A name never holds ``__`` (the original
refused it) but may end in ``_``, so ``x___10__float64`` is the array
``x_`` of 10 rows.  While saving, the original wrote ``<file>.saving`` and
renamed it.

:func:`scan` says, for every file of the original's form in a directory,
which array it holds and whether it can be imported as it is; the importing
itself is the seed module's (``SharedNumpyStore.import_original``).  Nothing
here changes a file.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._dtype import is_supported, unsupported_reason
from ._names import check_name
from .errors import ArgumentError

__all__ = ["SAVING_SUFFIX", "Original", "originals_named", "parse_dtype_text", "scan"]

SAVING_SUFFIX = ".saving"
# A name is runs of a non-underscore, each after at most one underscore, and
# may end in one: no "__" inside, so the first "__" after it is the separator.
_FORM = re.compile(
    r"(?P<name>(?:_?[^_])+_?)__(?P<shape>[0-9]+(?:_[0-9]+)*)?__(?P<dtype>[^_].*)", re.DOTALL
)


@dataclass(frozen=True)
class Original:
    """One file of the original's form, and whether it can be imported as it is.

    :param path: the file.
    :param name: the array it holds, ``None`` when its name does not say.
    :param shape: the shape its name gives, when it can be read.
    :param dtype: the dtype its name gives, when numpy understands it.
    :param problem: why it cannot be imported as it is; ``None`` when it can.
    :param outcome: what the problem makes of it: ``"skipped"`` (not an
        array the original could serve) or ``"refused"`` (an array that
        cannot be imported until it is fixed).
    """

    path: Path
    name: str | None
    shape: tuple[int, ...] | None = None
    dtype: np.dtype[Any] | None = None
    problem: str | None = None
    outcome: Literal["skipped", "refused"] = "refused"

    @property
    def nbytes(self) -> int:
        """Bytes of the array its name describes (0 when that cannot be read)."""
        if self.shape is None or self.dtype is None:
            return 0
        count = 1
        for n in self.shape:
            count *= n
        return count * self.dtype.itemsize


def parse_dtype_text(text: str) -> np.dtype[Any]:
    """The dtype whose ``str()`` is *text*, as the original wrote it into a file name.

    A structured dtype's text is a Python literal (a list or dict); it is
    read with ``ast.literal_eval``, which runs no code.

    :raises ValueError: numpy does not understand *text* as a dtype.
    """
    try:
        return np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        pass
    if text[:1] in ("[", "{"):
        try:
            spec = ast.literal_eval(text)
            parsed: np.dtype[Any] = np.dtype(spec)
            return parsed
        except (TypeError, ValueError, SyntaxError, MemoryError, RecursionError) as err:
            raise ValueError(f"{text!r} is not a dtype numpy understands ({err})") from err
    raise ValueError(f"{text!r} is not a dtype numpy understands")


def _read(entry: os.DirEntry[str]) -> Original:
    """What the file *entry* (of a name holding ``__``) is."""
    path = Path(entry.path)
    name = entry.name
    if name.endswith(SAVING_SUFFIX):
        match = _FORM.fullmatch(name[: -len(SAVING_SUFFIX)])
        return Original(
            path,
            match["name"] if match else None,
            problem="an unfinished save of the original (it wrote <file>.saving, then renamed "
            "it): its bytes may be incomplete and the original never served them; remove it",
            outcome="skipped",
        )
    match = _FORM.fullmatch(name)
    if match is None:
        return Original(
            path,
            None,
            problem="its name is not <name>__<shape>__<dtype>, the form of the original's files",
            outcome="skipped",
        )
    array = match["name"]
    if not entry.is_file():
        return Original(path, array, problem="not a regular file", outcome="skipped")
    shape = tuple(int(n) for n in match["shape"].split("_")) if match["shape"] else ()
    try:
        dtype = parse_dtype_text(match["dtype"])
    except ValueError as err:
        return Original(path, array, shape, problem=f"the dtype in its name: {err}")
    found = Original(path, array, shape, dtype)
    problem = None
    if not is_supported(dtype):
        problem = unsupported_reason(dtype, "the array its name describes")
    elif not shape:
        problem = (
            "a 0-d array (shape ()): the original saved it but could not load it; shmstore keeps "
            "arrays of rows: read it with np.fromfile(path, dtype) and save it as a 1-d array"
        )
    else:
        try:
            check_name(array)
        except ArgumentError as err:
            problem = f"{err}: rename the file to a name the store takes"
    if problem is None:
        size = entry.stat().st_size
        if size < found.nbytes:
            problem = (
                f"it holds {size} bytes, fewer than the {found.nbytes} its name promises "
                f"({shape} {dtype}): it is damaged; restore it, or rename it to the shape it "
                "holds"
            )
    return found if problem is None else Original(path, array, shape, dtype, problem)


def scan(directory: Path) -> list[Original]:
    """Every file of the original's form in *directory* (a name holding ``__``), by name.

    Two files giving the same array (the original left the old file when
    ``save`` changed an array's shape, and served one of them, which one
    depending on the directory's order) are both refused.
    """
    try:
        with os.scandir(directory) as entries:
            found = [_read(entry) for entry in entries if "__" in entry.name]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort(key=lambda original: original.path.name)
    usable: dict[str, list[Original]] = {}
    for original in found:
        if original.name is not None and original.outcome == "refused":
            usable.setdefault(original.name, []).append(original)
    result = []
    for original in found:
        twins = [o.path.name for o in usable.get(original.name or "", ()) if o is not original]
        if twins and original.outcome == "refused":
            problem = (
                f"{', '.join(twins)} holds {original.name!r} too: the original served one of "
                "them, whichever the directory listed last; remove the stale one"
            )
            result.append(
                Original(original.path, original.name, original.shape, original.dtype, problem)
            )
        else:
            result.append(original)
    return result


def originals_named(directory: Path, name: str) -> list[Path]:
    """The files of the original in *directory* that hold the array *name* (``.saving`` aside).

    One ``scandir`` of the directory, and nothing more for files of other names.
    """
    prefix = f"{name}__"
    try:
        with os.scandir(directory) as entries:
            candidates = [
                Path(e.path)
                for e in entries
                if e.name.startswith(prefix) and not e.name.endswith(SAVING_SUFFIX)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        path
        for path in candidates
        if (match := _FORM.fullmatch(path.name)) is not None and match["name"] == name
    )
