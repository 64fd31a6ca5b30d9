"""Removing files on request: ``evict``, ``gc``, and retiring blocks no view asks for again.

Never what is in use (``docs/design.md``, "Blocks and identity"): every
removal takes the file's exclusive ``flock`` without waiting
(:func:`remove_unused`), and a mapping holds a shared one.  ``evict`` and
``gc`` say what they did with each file and why, as :class:`CacheAction`
records; they log the same, for a log reader, but nothing depends on the
wording of the log.  Retired blocks (``<key>.stale``) are described in
``docs/design.md``, "Old blocks".
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from ._budget import budget_lock
from ._cache_directory import CacheDirectory, Kind, Listed, Removal, kind_of, remove_unused
from ._cache_types import CacheAction, Outcome
from ._segment import open_segment, read_block_header, read_header, try_lock_exclusive
from .errors import SegmentError

__all__ = ["drop_blocks", "evict", "gc", "remove_retired"]

_log = logging.getLogger("shmstore")

_OLD_BLOCK_IN_USE = (
    "in use: a block of an old generation of its dataset, which a process maps; "
    "removed when the last process unmaps it"
)
_CHANGED_IN_USE = "in use: its file changed, but a process maps it; gc removes it once unmapped"


def _record(path: str, outcome: Outcome, reason: str) -> CacheAction:
    name = path.rsplit(os.sep, 1)[-1]
    kind, key = kind_of(name)
    return CacheAction(name=name, key=key, kind=kind.label, outcome=outcome, reason=reason)


# -- evict ----------------------------------------------------------------------------


def evict(directory: CacheDirectory, keys: Sequence[str] | None) -> list[CacheAction]:
    """Remove the segments and retired blocks of the checked *keys* (``None``: all) no process maps.

    :returns: a record for each file: ``<key>.seg`` of each key, and its
        ``<key>.stale`` if there is one (with ``None``, each file there is).
    """
    if keys is None:
        targets = [f.path for f in directory.files(Kind.SEGMENT, Kind.STALE)]
    else:
        targets = []
        for key in keys:
            targets.append(directory.segment_path(key))
            if os.path.lexists(directory.stale_path(key)):
                targets.append(directory.stale_path(key))
    actions = []
    for path in targets:
        outcome, why = remove_unused(path)
        key = kind_of(path.rsplit(os.sep, 1)[-1])[1]
        if outcome is Removal.REMOVED:
            _log.info("evicted segment %s", key)
            actions.append(_record(path, "removed", "no process maps it"))
        elif outcome is Removal.IN_USE:
            _log.info("kept segment %s: a process maps it", key)
            actions.append(_record(path, "kept", "in use: a process maps it"))
        elif outcome is Removal.REFUSED:
            _log.warning("left %s alone: %s", path, why)
            actions.append(_record(path, "left alone", why))
        elif outcome is Removal.ABSENT:
            actions.append(_record(path, "gone", "not cached (nothing to do)"))
        else:
            reason = "gone already: another process evicted it meanwhile"
            actions.append(_record(path, "gone", reason))
    return actions


# -- gc -------------------------------------------------------------------------------


class _Judgement(NamedTuple):
    """What gc makes of a file before trying to remove it."""

    garbage: bool  # remove it, unless a process holds it
    reason: str  # why it is garbage; else why it is kept or left alone
    outcome: Outcome = "kept"  # when not garbage
    in_use: str = ""  # when garbage: why it is kept if a process holds it


def gc(directory: CacheDirectory, *, dry_run: bool) -> list[CacheAction]:
    """Remove what no process needs (see :meth:`Cache.gc`); a record for each file looked at.

    Under the budget lock, so a temporary file found unlocked is a dead
    loader's: a live loader takes its file's lock before it lets go of the
    budget lock.  Lock files come last, so that the lock of a segment
    removed now goes too.
    """
    with budget_lock(directory):
        listed = sorted(directory.files(), key=lambda f: f.kind is Kind.LOCK)
        return [_collect(directory, f, dry_run) for f in listed]


def _collect(directory: CacheDirectory, f: Listed, dry_run: bool) -> CacheAction:
    """Remove *f* if it is garbage and no process holds it (not in a dry run); what was done."""
    judged = _judge(directory, f)
    if not judged.garbage:
        if judged.outcome == "kept":
            _log.debug("gc kept %s: %s", f.name, judged.reason)
        return _record(f.path, judged.outcome, judged.reason)
    if stat.S_ISLNK(f.st.st_mode):
        # A link in our own directory: removing it never touches its target.
        outcome, why = Removal.REMOVED, ""
        if not dry_run:
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                outcome = Removal.GONE
            except OSError as err:
                outcome, why = Removal.REFUSED, f"cannot remove it ({err.strerror})"
    else:
        outcome, why = remove_unused(f.path, dry_run=dry_run)
    if outcome is Removal.REMOVED:
        done: Outcome = "would remove" if dry_run else "removed"
        _log.info("gc %s %s: %s", done, f.name, judged.reason)
        return _record(f.path, done, judged.reason)
    if outcome is Removal.IN_USE:
        _log.info("gc kept %s (%s): a process holds it", f.name, judged.reason)
        return _record(
            f.path, "kept", judged.in_use or f"in use ({judged.reason}): a process holds it"
        )
    if outcome is Removal.REFUSED:
        reason = f"{judged.reason}, but {why}"
        _log.warning("gc left %s alone: %s", f.path, reason)
        return _record(f.path, "left alone", reason)
    return _record(f.path, "gone", "removed meanwhile by another process")


def _judge(directory: CacheDirectory, f: Listed) -> _Judgement:
    """Whether *f* is garbage, and why (logging a warning for a file gc leaves alone)."""
    if f.kind is Kind.OTHER:
        reason = "not a file shmstore makes; remove it by hand if unneeded"
        _log.warning("gc left %s alone: %s", f.path, reason)
        return _Judgement(False, reason, "left alone")
    if stat.S_ISLNK(f.st.st_mode):
        return _Judgement(True, "a symbolic link where a cache file belongs")
    if f.kind is Kind.BUDGET_LOCK:
        return _Judgement(False, "the lock loads hold while they make room")
    if not stat.S_ISREG(f.st.st_mode) or f.st.st_uid != os.geteuid():
        owner = f"uid {f.st.st_uid}'s" if f.st.st_uid != os.geteuid() else "not a regular file"
        reason = f"{owner}, not this user's cache file"
        _log.warning("gc left %s alone: %s", f.path, reason)
        return _Judgement(False, reason, "left alone")
    if f.kind is Kind.TEMPORARY:
        # Removed only if unlocked: its loader is gone.
        return _Judgement(True, "left by a loader that died", in_use="in use: a load fills it")
    if f.kind is Kind.STALE:
        # Removed only if unmapped.
        old = "a block of an old generation or an old tail"
        return _Judgement(True, old, in_use=_OLD_BLOCK_IN_USE)
    if f.kind is Kind.LOCK:
        if os.path.lexists(directory.segment_path(f.key)):
            return _Judgement(False, "the load lock of a cached segment")
        # Removed only if no load holds it.
        return _Judgement(True, "a lock file without its segment", in_use="in use: a load holds it")
    return _judge_segment(f)


def _judge_segment(f: Listed) -> _Judgement:
    """Whether the segment *f* is garbage: unsafe, damaged, stale, or a named array unmapped."""
    try:
        fd, st = open_segment(f.path)
    except FileNotFoundError:
        return _Judgement(False, "removed meanwhile by another process", "gone")
    except SegmentError as err:
        return _Judgement(True, f"unsafe: {err}")
    try:
        try:
            header = read_header(fd, st, f.path, f.key)
        except SegmentError as err:
            return _Judgement(True, f"damaged: {err}")
        if header.named:
            return _Judgement(
                True,
                f"a named array no process maps ({header.source.dataset!r})",
                in_use="in use: a process maps this named array",
            )
        # A block stays valid while its files are the same files, no shorter
        # (appends grow them); a change of its dataset retires it when next
        # described ("Old blocks").
        block = header.source.block is not None
        if block and not Path(header.source.path).exists():
            return _Judgement(True, f"stale: {header.source.path} is gone", in_use=_CHANGED_IN_USE)
        for identity in header.source.identity:
            try:
                if not (identity.may_still_hold() if block else identity.is_current()):
                    changed = f"stale: {identity.path} changed or is gone"
                    return _Judgement(True, changed, in_use=_CHANGED_IN_USE)
            except OSError as err:
                reason = f"cannot check its source {identity.path} ({err})"
                _log.info("gc kept %s: %s", f.name, reason)
                return _Judgement(False, reason)
        if not try_lock_exclusive(fd):  # released when fd is closed
            return _Judgement(False, "in use: a process maps it")
        return _Judgement(
            False, "current: the rows it holds are unchanged (evict it to free the space)"
        )
    finally:
        os.close(fd)


# -- retired blocks -------------------------------------------------------------------


def drop_blocks(
    directory: CacheDirectory, prefix: str, stale: Callable[[str | None, tuple[int, int]], bool]
) -> list[str]:
    """Retire the blocks whose key starts with *prefix* and that are *stale*; see
    :meth:`Cache.drop_blocks`.

    :returns: the keys retired.
    """
    removed = []
    for f in directory.files(Kind.SEGMENT, Kind.STALE):
        if not f.key.startswith(prefix):
            continue
        if f.kind is Kind.STALE:  # retired before: gone once no process maps it
            remove_unused(f.path)
            continue
        try:
            fd, st = open_segment(f.path)
        except (FileNotFoundError, SegmentError):
            continue
        try:
            header = read_block_header(fd, st, f.path, f.key)
        except SegmentError:
            continue
        finally:
            os.close(fd)
        if header.named or header.block is None or not stale(header.generation, header.block):
            continue
        retired = directory.stale_path(f.key)
        try:
            os.rename(f.path, retired)  # a mapping keeps its pages; no view finds it now
        except OSError:
            continue
        outcome, _ = remove_unused(retired)
        _log.info(
            "%s stale block %s (bytes %d:%d of generation %s)",
            "removed" if outcome is Removal.REMOVED else "retired (in use)",
            f.key,
            *header.block,
            header.generation,
        )
        removed.append(f.key)
    return removed


def remove_retired(directory: CacheDirectory, keys: Iterable[str]) -> None:
    """Remove the retired blocks among *keys* no process maps (:meth:`Cache.remove_retired`)."""
    for key in keys:
        path = directory.stale_path(key)
        if os.path.lexists(path):
            remove_unused(path)
