"""Commands on this node's cache: ``ls``, ``gc``, ``evict``."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._cache import Cache, CacheEntry
from ..errors import SegmentError
from ._format import count, emit_json, human_bytes, table

__all__ = ["evict", "gc", "ls"]


def _cache(args: argparse.Namespace) -> Cache:
    return Cache(directory=args.cache_dir)


def _entry(entry: CacheEntry, now: float) -> dict[str, Any]:
    """*entry* as ``Cache.entries`` reports it (``model_dump(mode="json")``), plus its age."""
    document = entry.model_dump(mode="json")
    document["age_seconds"] = max(0.0, now - entry.created)
    return document


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _origin(entry: CacheEntry) -> str:
    """The file a slice is a copy of, or what kind of named array it is."""
    if entry.named:
        return "named, writable" if entry.writable else "named, read-only"
    return Path(entry.path).name


def ls(args: argparse.Namespace) -> int:
    """List the node's cached slices, with totals against the budget and the free space."""
    cache = _cache(args)
    entries = cache.entries()
    now = time.time()
    used = sum(e.nbytes for e in entries)
    in_use = sum(e.in_use for e in entries)
    free = shutil.disk_usage(cache.directory).free
    if args.json:
        emit_json(
            {
                "directory": str(cache.directory),
                "budget": cache.budget,
                "used": used,
                "free": free,
                "in_use": in_use,
                "entries": [_entry(e, now) for e in entries],
            }
        )
        return 0
    share = f" ({used / cache.budget:.0%})" if cache.budget else ""
    print(
        f"{cache.directory}: {count(len(entries), 'slice')} ({in_use} in use), "
        f"{human_bytes(used)} of a budget of {human_bytes(cache.budget)}{share}; "
        f"{human_bytes(free)} free on its file system"
    )
    if entries:
        rows = [
            (
                e.key,
                _origin(e),
                e.dataset if len(e.dataset) <= 40 else e.dataset[:37] + "...",
                f"{e.rows[0]}:{e.rows[1]}",
                human_bytes(e.nbytes),
                "yes" if e.in_use else "no",
                _age(now - e.created),
            )
            for e in entries
        ]
        print(table(("key", "file", "dataset", "rows", "size", "in use", "age"), rows))
    return 0


class _Collect(logging.Handler):
    """Keeps the messages shmstore logs while a cache operation runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collected() -> Iterator[list[str]]:
    """The messages (INFO and up) of the ``shmstore`` logger while the block runs.

    The cache logs why it removed or left each file; ``gc`` reports those.
    """
    logger = logging.getLogger("shmstore")
    handler = _Collect()
    level = logger.level
    quieted: list[tuple[logging.Handler, int]] = []
    if logger.getEffectiveLevel() > logging.INFO:
        # Hear INFO, but let the other handlers (main()'s stderr) show no more than before.
        quieted = [(h, h.level) for h in logger.handlers]
        for h, _ in quieted:
            h.setLevel(max(h.level, logger.getEffectiveLevel()))
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        for h, old in quieted:
            h.setLevel(old)


def _why_kept(cache: Cache, entry: CacheEntry) -> str:
    """Why ``gc`` left the slice *entry*: it is current, or a process maps it."""
    try:
        stale = not all(i.is_current() for i in cache.header(entry.key).source.identity)
    except (OSError, SegmentError):
        stale = False
    if entry.named and not entry.in_use:
        return "a named array no process maps: gc removes it"
    if entry.named:
        return "in use: a process maps this named array"
    if entry.in_use:
        if stale:
            return "in use: its file changed, but a process maps it; gc removes it once unmapped"
        return "in use: a process maps it"
    return "current: its file is unchanged (evict it to free the space)"


def gc(args: argparse.Namespace) -> int:
    """Remove what no process needs: files of dead loaders, stale or damaged slices."""
    cache = _cache(args)
    with _collected() as messages:
        removed = cache.gc(dry_run=args.dry_run)
    entries = cache.entries()
    kept = {e.key: _why_kept(cache, e) for e in entries}
    kept_in_use = [e.key for e in entries if e.in_use]
    notes = [m for m in messages if "left" in m and "alone" in m]
    if args.json:
        emit_json(
            {
                "directory": str(cache.directory),
                "dry_run": args.dry_run,
                "removed": removed,
                "kept": kept,
                "kept_in_use": kept_in_use,
                "notes": notes,
            }
        )
        return 0
    verb = "would remove" if args.dry_run else "removed"
    if removed:
        reasons = _reasons(messages)
        print(f"{verb} {count(len(removed), 'file')} from {cache.directory}:")
        for name in removed:
            print(f"  {name}" + (f": {reasons[name]}" if name in reasons else ""))
    else:
        print(f"nothing to collect in {cache.directory}")
    for key, why in kept.items():
        print(f"kept {key}: {why}")
    for note in notes:
        print(f"note: {note}")
    return 0


def _reasons(messages: list[str]) -> dict[str, str]:
    """File name -> why, from the cache's ``gc removed NAME: WHY`` messages."""
    reasons = {}
    for message in messages:
        for prefix in ("gc removed ", "gc would remove "):
            if message.startswith(prefix):
                name, _, why = message[len(prefix) :].partition(": ")
                reasons[name] = why
    return reasons


def evict(args: argparse.Namespace) -> int:
    """Remove the slices KEY... (or all with --all) that no process maps."""
    if bool(args.keys) == args.all:
        print(
            "shmstore evict: error: give the keys to evict (as `shmstore ls` shows them), "
            "or --all (not both)",
            file=sys.stderr,
        )
        return 2
    cache = _cache(args)
    before = {e.key: e for e in cache.entries()}
    asked = list(before) if args.all else list(dict.fromkeys(args.keys))
    removed = cache.evict(asked) if asked else []
    after = {e.key: e for e in cache.entries()} if len(removed) < len(asked) else {}
    kept = {}
    for key in asked:
        if key in removed:
            continue
        if key not in before:
            kept[key] = "not cached (nothing to do)"
        elif key not in after:
            kept[key] = "gone already: another process evicted it meanwhile"
        elif after[key].in_use:
            kept[key] = "in use: a process maps it"
        else:
            kept[key] = "left alone: not this user's regular file (the warning on stderr says why)"
    if args.json:
        emit_json({"directory": str(cache.directory), "evicted": removed, "kept": kept})
        return 0
    if not asked:
        print(f"nothing to evict: {cache.directory} holds no slices")
        return 0
    for key in removed:
        e = before.get(key)
        what = (
            f": {e.dataset}[{e.rows[0]}:{e.rows[1]}] of {e.path}, {human_bytes(e.nbytes)}"
            if e is not None
            else ""
        )
        print(f"evicted {key}{what}")
    for key, why in kept.items():
        print(f"kept {key}: {why}")
    return 0
