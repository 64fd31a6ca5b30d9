"""The ``with`` block of a view: holds the array for the block, drops it on exit.

A class rather than ``contextlib.contextmanager``: entering and leaving a
generator-based context costs as much as the rest of a repeated view of
cached rows.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

import numpy as np

__all__ = ["Within"]


class Within(AbstractContextManager["np.ndarray[Any, Any]"]):
    """``with Within(array) as a:`` gives *array*, and forgets it after the block.

    The mapping under the array goes when nothing else refers to it; an
    array kept past the block keeps its pages.
    """

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray[Any, Any]) -> None:
        self._array: np.ndarray[Any, Any] | None = array

    def __enter__(self) -> np.ndarray[Any, Any]:
        array = self._array
        if array is None:
            raise RuntimeError("a view's with-block can be entered once: ask for a new view")
        return array

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._array = None
