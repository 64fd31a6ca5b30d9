"""The data base's plug-in protocol for the seed API: :func:`check`, :func:`dump`, :class:`Loader`.

``dump`` writes ``Loader.json`` (never a pickle); the data base's ``load``
calls ``Loader(**description).get(savedir)``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._seed_common import LOADER_FILE
from ._seed_store import SharedNumpyStore, refuse_hiding, write_blocks
from ._store import open_store
from .errors import (
    ArgumentError,
    ManifestError,
    StoreNotFoundError,
)


class LoaderDescription(BaseModel):
    """``Loader.json``: what :func:`dump` writes so that the data base can load the store.

    ``Loader`` names the module whose :class:`Loader` reads the directory,
    as the data base's other dumpers write it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    loader: Literal["shmstore.shared_numpy_store"] = Field(alias="Loader")
    format: Literal["shmstore-loader"] = "shmstore-loader"
    format_version: Literal[1] = 1
    store: Literal["shared_numpy_store.h5"] = "shared_numpy_store.h5"


def check(obj: object) -> bool:
    """True if :func:`dump` can save *obj*: ``None`` or a :class:`SharedNumpyStore`.

    :param obj: any object.
    """
    return obj is None or isinstance(obj, SharedNumpyStore)


def dump(obj: SharedNumpyStore | None, savedir: str | os.PathLike[str]) -> None:
    """Make *savedir* a shared numpy store the data base can load (``Loader.get``).

    Writes ``Loader.json`` there (replacing it whole).

    :param obj: ``None`` (an empty store, or the arrays already in
        *savedir*), or a :class:`SharedNumpyStore`, whose arrays are copied
        into *savedir* when it lives elsewhere (pending rows flushed first).
    :param savedir: the directory to make the store in (created if absent).
    :raises ArgumentError: *obj* is anything else.
    :raises OriginalNotImportedError: *savedir* holds a file of the original
        module for an array of *obj* that its store lacks (the copy would hide
        it): run ``SharedNumpyStore(savedir).import_original()`` first.
    :raises ArgumentError: *savedir* is a file.
    """
    if not check(obj):
        raise ArgumentError(
            f"dump saves None or a SharedNumpyStore, got {type(obj).__name__}: save arrays "
            "with SharedNumpyStore(savedir).save(arr, name)"
        )
    target = SharedNumpyStore(savedir)
    if isinstance(obj, SharedNumpyStore):
        for name in [*obj.names(), *obj.pending_names()]:
            refuse_hiding(target, name)
        obj.flush()
        if obj.path.exists() and not (target.path.exists() and obj.path.samefile(target.path)):
            _copy_arrays(obj.path, target.path)
    description = (
        LoaderDescription(Loader="shmstore.shared_numpy_store").model_dump_json(
            by_alias=True, indent=2
        )
        + "\n"
    )
    directory = target.path.parent
    temporary = directory / f".{LOADER_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    temporary.write_text(description)
    os.replace(temporary, directory / LOADER_FILE)  # readers see the old file or the new one


def _copy_arrays(source: Path, target: Path) -> None:
    """Copy every array of the store *source* into *target*, replacing arrays of the same names."""
    with open_store(source, "r") as src, open_store(target, "a") as dst:
        for name in src.names():
            info = src.info(name)
            if not info.shape:
                continue
            write_blocks(
                dst,
                name,
                lambda start, stop, name=name: src.read(name, (start, stop)),  # type: ignore[misc]
                info.rows,
                info.row_nbytes,
            )


def _read_description(savedir: str | os.PathLike[str]) -> LoaderDescription:
    """The validated ``Loader.json`` of *savedir*.

    :raises StoreNotFoundError: (a ``FileNotFoundError``) there is none.
    :raises ManifestError: (a ``ValueError``) it is not valid JSON, or not a
        description of a shared numpy store.
    """
    where = Path(os.fspath(savedir)) / LOADER_FILE
    try:
        text = where.read_text()
    except FileNotFoundError as err:
        hint = (
            " It holds a Loader.pickle of the original shared_numpy_store, which shmstore "
            "never loads (unpickling runs code)."
            if (where.parent / "Loader.pickle").exists()
            else ""
        )
        raise StoreNotFoundError(
            f"no {LOADER_FILE} in {where.parent}.{hint} Write one with "
            f"shmstore.shared_numpy_store.dump(None, {str(where.parent)!r})"
        ) from err
    try:
        return LoaderDescription.model_validate_json(text)
    except ValidationError as err:
        raise ManifestError(
            f"{where} is not a description of a shared numpy store ({err.error_count()} "
            f"problems; first: {err.errors()[0]['msg']} at "
            f"{'.'.join(map(str, err.errors()[0]['loc'])) or 'the top'}): write it again with "
            f"shmstore.shared_numpy_store.dump(None, {str(where.parent)!r})"
        ) from err


class Loader:
    """The data base's loader of a directory :func:`dump` made.

    The data base loads a dumped object by reading ``Loader.json``, taking
    out its ``"Loader"`` key, importing that module and calling
    ``Loader(**rest).get(savedir)``, with ``meta=`` added when an
    ``object_meta.json`` lies beside it.  This class takes exactly that:
    the other keys :func:`dump` writes (``format``, ``format_version``,
    ``store``; each may be omitted, ``Loader()`` works) and ``meta``.

    :param meta: the object's metadata the data base read from
        ``object_meta.json``; kept as :attr:`meta`, not used.
    :param description: the other keys of ``Loader.json``: ``format``,
        ``format_version`` and ``store``, with the values :func:`dump` writes.
    :raises ManifestError: (a ``ValueError``) a key :func:`dump` does not
        write, or a value it does not write (another format or version).
    """

    def __init__(self, meta: object = None, **description: object) -> None:
        self.meta = meta
        """What the data base passed as ``meta`` (``None`` when it passed nothing)."""
        try:
            LoaderDescription.model_validate(
                {"Loader": "shmstore.shared_numpy_store", **description}
            )
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'the top'}: {e['msg']}" for e in err.errors()
            )
            raise ManifestError(
                f"Loader() takes the keys dump() writes into {LOADER_FILE} (format, "
                f"format_version, store) and meta; got {sorted(description)} ({problems}): "
                "write the description again with "
                "shmstore.shared_numpy_store.dump(None, savedir)"
            ) from err

    def __repr__(self) -> str:
        return "Loader()" if self.meta is None else f"Loader(meta={self.meta!r})"

    def get(self, savedir: str | os.PathLike[str]) -> SharedNumpyStore:
        """The :class:`SharedNumpyStore` of *savedir*, after checking its ``Loader.json``.

        :param savedir: the directory :func:`dump` made.
        :raises StoreNotFoundError: no ``Loader.json`` in *savedir*.
        :raises ManifestError: an invalid one.
        """
        _read_description(savedir)
        return SharedNumpyStore(savedir)
