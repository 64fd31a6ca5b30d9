"""A block's load lock: claim it without waiting, or wait for its holder without polling.

Cooperative fill (``docs/design.md``, "Blocks and identity"): processes that
need the same missing blocks try each block's lock file (``<key>.lock``)
without waiting and load the blocks whose lock they got; for the blocks
another process holds, they then wait in a blocking ``flock``, which the
kernel wakes the moment the holder releases it or dies.  So N processes
asking at once load each block once, side by side, and none sleeps in a
polling loop.

The lock is a ``flock`` on the lock file, as ``filelock.FileLock`` takes it
(:meth:`Cache.create` uses that one on the same files): the two exclude
each other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from types import TracebackType

from ._segment import open_in_directory
from .errors import LockTimeoutError, SegmentError

__all__ = ["Claim"]

_POLL_SECONDS = 0.005  # only when a wait has a timeout: a blocking flock cannot time out
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK


class Claim:
    """The exclusive load lock of one block, held until :meth:`release` (or ``with`` exit).

    Make one with :meth:`take` (no waiting) or :meth:`wait`.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @staticmethod
    def _open(path: str) -> int:
        """Open (creating it 0600) the lock file *path*, refusing a link or a foreign file.

        :raises SegmentError: a symbolic link, not a regular file, another
            user's, or it cannot be created.
        """
        try:
            fd = open_in_directory(path, _FLAGS)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise SegmentError(
                    f"refusing lock file {path}: it is a symbolic link; Cache.gc() removes it"
                ) from err
            raise SegmentError(
                f"cannot lock {path} ({err.strerror or err}): the cache directory must be "
                "writable by this user"
            ) from err
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise SegmentError(
                f"refusing lock file {path}: it is not a regular file of this user; remove it"
            )
        return fd

    @classmethod
    def take(cls, path: str) -> Claim | None:
        """The lock of *path* if no other process holds it, else ``None``; never waits."""
        fd = cls._open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    @classmethod
    def wait(cls, path: str, timeout: float | None, what: str) -> Claim:
        """The lock of *path*, once its holder lets go (or dies).

        :param timeout: seconds; ``None`` waits as long as it takes, in the
            kernel (a blocking ``flock``).
        :raises LockTimeoutError: still held after *timeout* seconds.
        """
        fd = cls._open(path)
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return cls(fd)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return cls(fd)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"waited {timeout} s for another process loading {what} (it holds "
                            f"{path}); it is still loading, or hangs"
                        ) from None
                    time.sleep(_POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise

    def release(self) -> None:
        """Let the lock go (closing the descriptor releases the ``flock``)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
