"""h5py's errors as shmstore's: the one place they are translated.

h5py reports a file, object or attribute HDF5 cannot read or write with
builtin exceptions: ``OSError`` (a damaged or truncated file, an I/O
failure), ``KeyError`` (an object header HDF5 refuses: a bad datatype or
dataspace), ``RuntimeError`` (HDF5's internal checks) and ``ValueError``
(arguments it cannot apply to what it found).  A caller of shmstore should
see what that means for the store instead: an :class:`InvalidStoreError`
naming the file, a :class:`ManifestError` naming the record, and so on,
with h5py's own words after a colon.

Errors shmstore raised itself (every :class:`ShmStoreError`, though some are
``OSError``, ``KeyError`` or ``ValueError`` too) pass :func:`translated`
unchanged: they already say what went wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InvalidStoreError, LockTimeoutError, ReadOnlyError, ShmStoreError

__all__ = ["H5PY_ERRORS", "ignored", "open_error", "translated"]

H5PY_ERRORS: tuple[type[Exception], ...] = (OSError, RuntimeError, ValueError, KeyError)
"""What h5py raises for a file, object or attribute HDF5 cannot read or write."""


@contextlib.contextmanager
def translated(
    error: Callable[[str], ShmStoreError],
    what: str,
    *,
    why: Callable[[Exception], str] = str,
    advice: str = "",
    errors: tuple[type[Exception], ...] = H5PY_ERRORS,
) -> Iterator[None]:
    """Run h5py calls; an error of *errors* they raise becomes *error*.

    The message is ``"<what>: <why(err)>"``, then ``"; <advice>"`` when
    given; the h5py error is its ``__cause__``.  A :class:`ShmStoreError`
    raised inside passes unchanged.

    :param why: what to say of the h5py error (its text by default).
    :param errors: the exceptions to translate (h5py's, :data:`H5PY_ERRORS`,
        by default).
    """
    try:
        yield
    except ShmStoreError:
        raise
    except errors as err:
        message = f"{what}: {why(err)}" + (f"; {advice}" if advice else "")
        raise error(message) from err


def ignored(*, also: tuple[type[Exception], ...] = ()) -> contextlib.suppress:
    """Suppress h5py's errors (and *also*), shmstore's own included: for what may fail.

    For a look whose failure has a fallback (no descriptor to compare, a
    record that cannot be read is reported elsewhere).
    """
    return contextlib.suppress(*H5PY_ERRORS, *also)


def open_error(err: OSError, path: Path, mode: str) -> ShmStoreError:
    """What an h5py open of *path* in store mode *mode* that failed with *err* means.

    :returns: :class:`ReadOnlyError` when this user may not write the file,
        or this process holds it open read-only elsewhere;
        :class:`LockTimeoutError` when another process holds it open
        through HDF5; otherwise :class:`InvalidStoreError` (it cannot be
        opened as HDF5).
    """
    if isinstance(err, PermissionError):
        return ReadOnlyError(
            f"cannot open {path} in mode {mode!r}: {err.strerror or err}; "
            "open it with mode 'r' to read it"
        )
    text = str(err)
    if "already open for read-only" in text:
        return ReadOnlyError(
            f"this process holds {path} open read-only elsewhere (an h5py.File(..., 'r') or a "
            "store opened with mode 'r'), and HDF5 cannot open one file for writing and for "
            "reading at once: close that first, or open the store with mode 'r'"
        )
    if "unable to lock file" in text:
        return LockTimeoutError(
            f"another process holds {path} open through HDF5 (h5py or another tool) and HDF5's "
            "file lock keeps this open out: close it there first, or set "
            "HDF5_USE_FILE_LOCKING=FALSE in both programs (shmstore's own lock still "
            "serialises shmstore's writers)"
        )
    return InvalidStoreError(f"{path} cannot be opened as HDF5 (truncated or damaged?): {err}")
