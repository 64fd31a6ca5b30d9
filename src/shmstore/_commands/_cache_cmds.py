"""Commands on this node's cache: ``ls``, ``gc``, ``evict``."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .._cache import Cache, CacheAction, CacheEntry
from .._sharing import retire_dataset
from .._store import open_store
from ..errors import ArrayNotFoundError, ShmStoreError
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


def _origin(path: str, *, named: bool, writable: bool) -> str:
    """The file blocks are a copy of, or what kind of named array a segment is."""
    if named:
        return "named, writable" if writable else "named, read-only"
    return Path(path).name


def _spans(rows: list[tuple[int, int]]) -> str:
    """``0:100, 200:300``: the union of row ranges."""
    merged: list[list[int]] = []
    for start, stop in sorted(rows):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    shown = ", ".join(f"{a}:{b}" for a, b in merged[:3])
    return shown + (f" (+{len(merged) - 3})" if len(merged) > 3 else "")


def _grouped(entries: list[CacheEntry]) -> list[dict[str, Any]]:
    """The blocks of *entries* grouped by file, dataset and generation; other segments alone."""
    groups: dict[tuple[str, ...], list[CacheEntry]] = {}
    for e in entries:
        slot = (
            (e.path, e.dataset, e.generation or "", str(e.stale))
            if e.block is not None
            else (e.key,)
        )
        groups.setdefault(slot, []).append(e)
    return [
        {
            "path": members[0].path,
            "dataset": members[0].dataset,
            "generation": members[0].generation,
            "stale": members[0].stale,
            "named": members[0].named,
            "writable": members[0].writable,
            "rows": _spans([e.rows for e in members]),
            "blocks": len(members) if members[0].block is not None else 0,
            "nbytes": sum(e.nbytes for e in members),
            "in_use": sum(e.in_use for e in members),
            "keys": [e.key for e in members],
            "created": min(e.created for e in members),
        }
        for members in groups.values()
    ]


def ls(args: argparse.Namespace) -> int:
    """List the node's cached blocks by dataset, with totals against the budget and free space."""
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
                "datasets": [
                    {k: v for k, v in g.items() if k != "created"} for g in _grouped(entries)
                ],
            }
        )
        return 0
    share = f" ({used / cache.budget:.0%})" if cache.budget else ""
    print(
        f"{cache.directory}: {count(len(entries), 'segment')} ({in_use} in use), "
        f"{human_bytes(used)} of a budget of {human_bytes(cache.budget)}{share}; "
        f"{human_bytes(free)} free on its file system"
    )
    groups = _grouped(entries)
    if groups:
        rows = [
            (
                _origin(g["path"], named=g["named"], writable=g["writable"]),
                g["dataset"] if len(g["dataset"]) <= 40 else g["dataset"][:37] + "...",
                g["rows"] + (" (old)" if g["stale"] else ""),
                str(g["blocks"]) if g["blocks"] else g["keys"][0],
                human_bytes(g["nbytes"]),
                f"{g['in_use']} of {len(g['keys'])}"
                if g["blocks"]
                else ("yes" if g["in_use"] else "no"),
                _age(now - g["created"]),
            )
            for g in groups
        ]
        print(table(("file", "dataset", "rows cached", "blocks", "size", "in use", "age"), rows))
    return 0


def _retire_old_generations(cache: Cache) -> None:
    """Retire the blocks no view will ask for again: of a dataset changed or deleted since.

    The cache cannot tell them (it knows nothing of HDF5): each store with
    blocks in the cache is opened, and each dataset described as a view
    would describe it, which retires its blocks of older generations and
    old tails (see ``_sharing.py``).  A store another process writes, or
    that cannot be opened, is left for later.
    """
    by_file: dict[str, set[str]] = {}
    for e in cache.entries():
        if e.block is not None and not e.stale and Path(e.path).exists():
            by_file.setdefault(e.path, set()).add(e.dataset)
    for path, names in by_file.items():
        try:
            store = open_store(path, "r", cache=cache, lock_timeout=1.0)
        except (ShmStoreError, OSError) as err:
            logging.getLogger("shmstore").info("gc: left the blocks of %s: %s", path, err)
            continue
        with store:
            for name in names:
                try:
                    store.handle(name)
                except ArrayNotFoundError:
                    retire_dataset(cache, path, name)
                except (ShmStoreError, OSError):
                    continue


def _kept(actions: list[CacheAction], dry_run: bool) -> dict[str, str]:
    """Key -> why, for each segment and retired block the cache still holds after ``gc``.

    In a dry run nothing is removed, so the files it would remove are listed
    too, saying so.
    """
    kept = {}
    for a in actions:
        if a.kind not in ("segment", "stale block"):
            continue
        if a.outcome == "kept":
            kept[a.key] = a.reason
        elif a.outcome == "would remove":
            kept[a.key] = f"{a.reason}: gc removes it"
    return kept


def gc(args: argparse.Namespace) -> int:
    """Remove what no process needs: files of dead loaders, old or damaged blocks."""
    cache = _cache(args)
    if not args.dry_run:
        _retire_old_generations(cache)
    actions = cache.gc(dry_run=args.dry_run)
    removed = [a for a in actions if a.outcome in ("removed", "would remove")]
    kept = _kept(actions, args.dry_run)
    kept_in_use = [e.key for e in cache.entries() if e.in_use]
    notes = [
        f"gc left {cache.directory / a.name} alone: {a.reason}"
        for a in actions
        if a.outcome == "left alone"
    ]
    if args.json:
        emit_json(
            {
                "directory": str(cache.directory),
                "dry_run": args.dry_run,
                "removed": [a.name for a in removed],
                "kept": kept,
                "kept_in_use": kept_in_use,
                "notes": notes,
                "actions": [a.model_dump(mode="json") for a in actions],
            }
        )
        return 0
    verb = "would remove" if args.dry_run else "removed"
    if removed:
        print(f"{verb} {count(len(removed), 'file')} from {cache.directory}:")
        for a in removed:
            print(f"  {a.name}: {a.reason}")
    else:
        print(f"nothing to collect in {cache.directory}")
    for key, why in kept.items():
        print(f"kept {key}: {why}")
    for note in notes:
        print(f"note: {note}")
    return 0


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
    actions = cache.evict(asked) if asked else []
    removed = list(dict.fromkeys(a.key for a in actions if a.outcome == "removed"))
    kept = {}
    for key in asked:
        if key in removed:
            continue
        # Its segment, and its retired block if it has one: say what is there.
        mine = [a for a in actions if a.key == key]
        chosen = next((a for a in mine if a.outcome != "gone"), mine[0])
        left_alone = chosen.outcome == "left alone"
        kept[key] = f"left alone: {chosen.reason}" if left_alone else chosen.reason
    if args.json:
        emit_json(
            {
                "directory": str(cache.directory),
                "evicted": removed,
                "kept": kept,
                "actions": [a.model_dump(mode="json") for a in actions],
            }
        )
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
