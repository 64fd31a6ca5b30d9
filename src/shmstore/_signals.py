"""``Uninterruptible``: defer SIGINT and SIGTERM over a short critical section."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["Uninterruptible"]

_DEFERRED = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _State:
    """The process's deferral: how deep the blocks nest, what arrived, what to restore."""

    depth = 0
    received: list[int] = []  # noqa: RUF012 - one per process, like the handlers it stands for
    previous: dict[int, _Handler] = {}  # noqa: RUF012


def _record(signum: int, frame: FrameType | None) -> None:
    del frame
    if signum not in _State.received:
        _State.received.append(signum)


class Uninterruptible:
    """Defer SIGINT and SIGTERM inside the ``with`` block; re-deliver them on exit.

    A signal arriving inside the block is recorded and, when the outermost
    block exits, raised again through the handlers that were installed
    before it, once per signal number, in the order received.  So Ctrl-C
    (``KeyboardInterrupt``) or a scheduler's SIGTERM still stops the process,
    just not in the middle of the block: shmstore uses it around publishing
    a segment.  Blocks nest, also with the same instance.

    Outside the main thread this does nothing and the block can be
    interrupted as usual: Python runs signal handlers, and lets them be
    changed, in the main thread only.  A signal whose handler was installed
    by C code rather than Python cannot be restored afterwards, so it is not
    deferred either.
    """

    def __init__(self) -> None:
        self._entered: list[bool] = []

    def __enter__(self) -> Uninterruptible:
        active = threading.current_thread() is threading.main_thread()
        self._entered.append(active)
        if active:
            if _State.depth == 0:
                _State.received = []
                _State.previous = {}
                for sig in _DEFERRED:
                    handler = signal.getsignal(sig)
                    if handler is not None:
                        _State.previous[sig] = handler
                        signal.signal(sig, _record)
            _State.depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._entered.pop():
            return
        _State.depth -= 1
        if _State.depth > 0:
            return
        # Handlers first, then the list: a signal arriving in between is then
        # run by its own handler (Python looks the handler up when it runs it).
        for sig, handler in _State.previous.items():
            signal.signal(sig, handler)
        received, _State.received = _State.received, []
        first: BaseException | None = None
        for sig in received:
            try:
                signal.raise_signal(sig)
            except BaseException as err:  # KeyboardInterrupt: deliver the rest, then raise it
                first = first or err
        if first is not None:
            raise first
