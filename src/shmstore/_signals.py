"""``Uninterruptible``: defer SIGINT and SIGTERM over a short critical section."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["Uninterruptible"]

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


class Uninterruptible:
    """Defer SIGINT and SIGTERM inside the ``with`` block; re-deliver them on exit.

    A signal that arrives inside the block is recorded, and raised again
    (once per signal number, in the order received) when the outermost block
    exits, through the handlers that were installed before the block: a
    Ctrl-C still interrupts, just not in the middle of the block.  Blocks
    nest.

    Python runs signal handlers in the main thread only, so outside the main
    thread this does nothing: there the block can be interrupted as usual.
    """

    _depth = 0
    _received: list[int] = []  # noqa: RUF012 - process-wide on purpose, like signal handlers
    _previous: dict[int, Any] = {}  # noqa: RUF012

    def __init__(self) -> None:
        self._active = False

    @classmethod
    def _record(cls, signum: int, frame: FrameType | None) -> None:
        del frame
        if signum not in cls._received:
            cls._received.append(signum)

    def __enter__(self) -> Uninterruptible:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._active = True
        cls = type(self)
        if cls._depth == 0:
            cls._received = []
            cls._previous = {sig: signal.signal(sig, cls._record) for sig in _DEFERRED}
        cls._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._active:
            return
        self._active = False
        cls = type(self)
        cls._depth -= 1
        if cls._depth > 0:
            return
        for sig, handler in cls._previous.items():
            signal.signal(sig, handler)
        received, cls._received = cls._received, []
        for sig in received:
            signal.raise_signal(sig)
