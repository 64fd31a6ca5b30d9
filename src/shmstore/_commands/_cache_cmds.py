"""Commands on this node's cache: ``ls``, ``gc``, ``evict``."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from .._cache import Cache, CacheEntry
from ._format import emit_json, human_bytes, table

__all__ = ["evict", "gc", "ls"]


def _cache(args: argparse.Namespace) -> Cache:
    return Cache(directory=args.cache_dir)


def _entry(entry: CacheEntry, now: float) -> dict[str, Any]:
    document = entry.model_dump(mode="json")
    document["age_seconds"] = max(0.0, now - entry.created)
    return document


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def ls(args: argparse.Namespace) -> int:
    """List the node's cached slices, with totals against the budget and the free space."""
    cache = _cache(args)
    entries = cache.entries()
    now = time.time()
    used = sum(e.nbytes for e in entries)
    free = shutil.disk_usage(cache.directory).free
    if args.json:
        emit_json(
            {
                "directory": str(cache.directory),
                "budget": cache.budget,
                "used": used,
                "free": free,
                "in_use": sum(e.in_use for e in entries),
                "entries": [_entry(e, now) for e in entries],
            }
        )
        return 0
    print(
        f"{cache.directory}: {len(entries)} slices, {human_bytes(used)} of a budget of "
        f"{human_bytes(cache.budget)}; {human_bytes(free)} free on its file system"
    )
    if entries:
        rows = [
            (
                e.key,
                Path(e.path).name,
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


def gc(args: argparse.Namespace) -> int:
    """Remove what no process needs: files of dead loaders, stale or damaged slices."""
    cache = _cache(args)
    removed = cache.gc(dry_run=args.dry_run)
    kept = [e for e in cache.entries() if e.in_use]
    if args.json:
        emit_json(
            {
                "directory": str(cache.directory),
                "dry_run": args.dry_run,
                "removed": removed,
                "kept_in_use": [e.key for e in kept],
            }
        )
        return 0
    verb = "would remove" if args.dry_run else "removed"
    if removed:
        print(f"{verb} {len(removed)} file(s) from {cache.directory}:")
        for name in removed:
            print(f"  {name}")
    else:
        print(f"nothing to collect in {cache.directory}")
    if kept:
        print(f"kept {len(kept)} slice(s) that a process maps (never removed while mapped)")
    return 0


def evict(args: argparse.Namespace) -> int:
    """Remove the slices KEY... (or all with --all) that no process maps."""
    if bool(args.keys) == args.all:
        raise SystemExit(_usage_error("give the keys to evict, or --all (not both)"))
    cache = _cache(args)
    before = {e.key: e for e in cache.entries()}
    asked = list(before) if args.all else list(dict.fromkeys(args.keys))
    removed = cache.evict(asked) if asked else []
    kept = {}
    for key in asked:
        if key in removed:
            continue
        entry = before.get(key)
        kept[key] = "in use: a process maps it" if entry and entry.in_use else "not cached"
        if entry is not None and not entry.in_use:
            kept[key] = "mapped by a process since it was listed"
    if args.json:
        emit_json({"directory": str(cache.directory), "evicted": removed, "kept": kept})
        return 0
    if not asked:
        print(f"nothing to evict: {cache.directory} holds no slices")
        return 0
    for key in removed:
        print(f"evicted {key}")
    for key, why in kept.items():
        print(f"kept {key}: {why}")
    return 0


def _usage_error(message: str) -> int:
    import sys

    print(f"shmstore evict: error: {message}", file=sys.stderr)
    return 2
