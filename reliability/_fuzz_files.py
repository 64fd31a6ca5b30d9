"""Fuzzed files: damaged copies of a valid store, opened and read every way shmstore reads.

A base store holds one dataset of each kind shmstore serves (contiguous, in a
group, big-endian, compound, chunked, gzip+shuffle, zstd when hdf5plugin is
there, appendable in a raw file).  Each case copies it, damages the copy one
way (truncation, byte flips in the superblock, an object header, the manifest
text, the data, anywhere; or a manifest rewritten with wrong types, missing or
extra fields, absurd numbers, a future format), then opens it and reads every
dataset through ``read``, ``memmap``, ``view(mode="shared")`` and a
``Handle``.  The rule checked:

* a call either succeeds with the right values, or raises a ``ShmStoreError``
  subclass with a message;
* "right" allows differences only in the rows whose stored bytes were flipped
  (HDF5 keeps no checksum of contiguous data, so a flipped data byte is read
  back as stored: those rows may differ, every other row must not);
* never another exception type, a hang (timeout) or a crash (the case runs in
  a child process).
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from _common import FAILED, OK, REFUSED, WRONG, Row, Settings, run_into_rows

SECTION = "Fuzzed files"
STORE = "store.h5"
SUPERBLOCK = 96  # HDF5 superblock version 0 with 8-byte addresses, root entry included

KINDS: dict[str, str] = {
    "truncate": "HDF5 file truncated at a random offset",
    "truncate_raw": "raw file of an appendable dataset truncated at a random offset",
    "superblock": "1-4 random bytes flipped in the superblock",
    "object_header": "1-4 random bytes flipped in a dataset's or group's object header",
    "manifest_bytes": "1-4 random bytes flipped in a metadata record (one copy or both)",
    "manifest_fields": "a metadata record rewritten: wrong types, missing/extra fields, "
    "absurd numbers, a future format version",
    "data": "1-4 random bytes flipped in a dataset's stored data (file or raw file)",
    "anywhere": "1-8 random bytes flipped anywhere in the HDF5 file",
}


def expected_arrays(with_zstd: bool) -> dict[str, np.ndarray[Any, Any]]:
    """The base store's datasets: every value a function of its position."""
    rows = np.arange(300)[:, None]
    comp = np.zeros(50, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S3")])
    comp["a"] = np.arange(50)
    comp["b"] = np.arange(50) / 3
    comp["c"] = [str(i).encode() for i in range(50)]
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "contig": (rows * 100 + np.arange(8)).astype("<f8"),
        "grp/ints": (np.arange(257)[:, None] * 7 + np.arange(5)).astype("<i4"),
        "be": (np.arange(60)[:, None] * 4 + np.arange(4)).astype(">u2"),
        "comp": comp,
        "chunk": (np.arange(200)[:, None] * 10 + np.arange(10)).astype("<i2"),
        "gz": (np.arange(200)[:, None] + np.arange(10) / 10).astype("<f4"),
        "app": (np.arange(200)[:, None] * 3 + np.arange(3)).astype("<i8"),
    }
    if with_zstd:
        arrays["zs"] = (np.arange(160)[:, None] * 16 + np.arange(16)).astype("<u4")
    return arrays


def _write_options(name: str) -> dict[str, Any]:
    if name == "chunk":
        return {"chunks": (16, 10)}
    if name == "gz":
        return {"chunks": (16, 10), "compression": {"compression": "gzip", "shuffle": True}}
    if name == "zs":
        import hdf5plugin

        return {"chunks": (20, 16), "compression": dict(hdf5plugin.Zstd(), shuffle=True)}
    if name == "app":
        return {"appendable": True}
    return {}


@dataclass
class Span:
    """Where some of a dataset's bytes are: ``file`` is "h5" or "raw"."""

    dataset: str
    file: str
    offset: int
    size: int
    first_row: int
    rows: int
    exact: bool  # contiguous: a flipped byte damages only its own row

    def damaged_rows(self, position: int, row_nbytes: int) -> set[int]:
        if not self.offset <= position < self.offset + self.size:
            return set()
        if self.exact:
            return {self.first_row + (position - self.offset) // row_nbytes}
        return set(range(self.first_row, self.first_row + self.rows))


@dataclass
class Layout:
    """The byte map of the base store: where each kind of damage goes."""

    size: int
    raw_name: str
    raw_size: int
    headers: list[tuple[str, int, int]]
    manifests: list[tuple[int, int]]
    spans: list[Span] = field(default_factory=list)
    row_nbytes: dict[str, int] = field(default_factory=dict)


def build_base(directory: Path, with_zstd: bool) -> Layout:
    """Write the base store into *directory* and map where its parts lie."""
    import shmstore
    from shmstore._chunk_index import stored_chunks

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STORE
    arrays = expected_arrays(with_zstd)
    with shmstore.open(path, "w") as store:
        for name, array in arrays.items():
            store.write(name, array, **_write_options(name))
    raw_files = sorted((directory / f"{STORE}.raw").iterdir())
    content = path.read_bytes()
    layout = Layout(
        size=len(content),
        raw_name=raw_files[0].name,
        raw_size=raw_files[0].stat().st_size,
        headers=[],
        manifests=[],
    )
    # The metadata: the store's record and each dataset's record and its backup
    # (JSON, each dataset's padded with spaces to its capacity).
    for opening in (b'{"format":"shmstore-store"', b'{"shape":['):
        start = 0
        while (found := content.find(opening, start)) >= 0:
            end = content.find(b"}", content.find(b'"format_version"', found)) + 1
            layout.manifests.append((found, end - found))
            start = end
    with h5py.File(path, "r") as file:
        for name in ["/", "grp", *arrays]:
            info = h5py.h5o.get_info(file[name].id)
            layout.headers.append((name, info.addr, info.hdr.space.total))
        for name, array in arrays.items():
            dataset = file[name]
            row_nbytes = array.itemsize * int(np.prod(array.shape[1:]))
            layout.row_nbytes[name] = row_nbytes
            if name == "app":
                layout.spans.append(Span(name, "raw", 0, layout.raw_size, 0, len(array), True))
            elif dataset.chunks is None:
                offset = dataset.id.get_offset()
                size = dataset.id.get_storage_size()
                layout.spans.append(Span(name, "h5", offset, size, 0, len(array), True))
            else:
                chunk_rows = dataset.chunks[0]
                for chunk in stored_chunks(dataset.id):
                    layout.spans.append(
                        Span(
                            name,
                            "h5",
                            chunk.byte_offset,
                            chunk.size,
                            chunk.chunk_offset[0],
                            chunk_rows,
                            False,
                        )
                    )
    return layout


@dataclass(frozen=True)
class Case:
    kind: str
    seed: int
    base: str
    workdir: str
    cache_dir: str
    with_zstd: bool

    def __repr__(self) -> str:
        return f"{self.kind}#{self.seed}"


# -- damage --------------------------------------------------------------------


def _flip(path: Path, positions: list[int], rng: random.Random) -> None:
    with open(path, "r+b") as f:
        for position in positions:
            f.seek(position)
            byte = f.read(1)[0]
            f.seek(position)
            f.write(bytes([byte ^ rng.randrange(1, 256)]))


def _positions(rng: random.Random, start: int, size: int, count: int) -> list[int]:
    return [start + rng.randrange(size) for _ in range(count)]


def _mutate_record(entry: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One random change of a dataset record's JSON tree."""
    wrong_values: list[Any] = [
        "x",
        "",
        None,
        True,
        -1,
        0,
        2**63,
        10**30,
        1.5,
        float("inf"),
        [],
        [1, "a"],
        {},
        {"a": 1},
        "<f8",
        "|O",
        "<U4",
        "V0",
        [10**20, 3],
        [-5],
    ]
    how = rng.randrange(12)
    if how == 0:  # a format field of the wrong type
        entry[rng.choice(["format", "format_version", "generation"])] = rng.choice(wrong_values)
    elif how == 1:  # an entry's field of the wrong type or an absurd value
        entry[rng.choice(sorted(entry))] = rng.choice(wrong_values)
    elif how == 2:  # a missing field
        entry.pop(rng.choice(sorted(entry)))
    elif how == 3:  # an extra field
        entry[rng.choice(["extra", "nbytes", "offset"])] = rng.choice(wrong_values)
    elif how == 4:  # a format version from the future, or the past
        entry["format_version"] = rng.choice([1, 3, 99, 2**40])
    elif how == 5:  # absurd shapes
        shape = list(entry["shape"])
        shape[rng.randrange(len(shape))] = rng.choice([0, 1, 2**31, 2**62, 10**40])
        entry["shape"] = shape
    elif how == 6:  # another plausible dtype
        entry["dtype"] = rng.choice(["<f4", ">f8", "<i8", "|u1", "|S8", "<c16", "|b1"])
    elif how == 7:  # another layout
        entry["layout"] = rng.choice(["contiguous", "external", "chunked", "compact", "virtual"])
    elif how == 8:  # chunks that do not fit
        entry["chunks"] = rng.choice([None, [1], [0, 1], [2**40, 1], [3, 3, 3]])
    elif how == 9:  # where the bytes lie, far off
        entry["data_offset"] = rng.choice([None, 0, 1, 2**40, -8])
    elif how == 10:  # versions far off
        entry["version"] = rng.choice([0, 2**62, 7])
    else:  # compression settings that are not the dataset's
        entry["compression"] = rng.choice([None, "gzip", "lzf", "zstd", "nonsense"])
        entry["compression_opts"] = rng.choice([None, 0, 9, 2**40])
    return entry


def _rewrite_manifest(path: Path, rng: random.Random) -> None:
    """Rewrite one dataset's record (one copy or both), or the store's record."""
    from shmstore._metadata import RECORD_ATTR, RECORD_BACKUP_ATTR, STORE_ATTR

    with h5py.File(path, "r+") as file:
        if rng.random() < 0.1:
            obj, targets = file, [STORE_ATTR]
            data = json.loads(bytes(file.attrs[STORE_ATTR]).decode())
            data[rng.choice(sorted(data))] = rng.choice(["shmstore-store", 1, 3, None, "x"])
        else:
            obj = file[rng.choice(sorted(expected_arrays(False)))]
            data = _mutate_record(json.loads(bytes(obj.attrs[RECORD_ATTR]).decode()), rng)
            targets = [RECORD_ATTR] if rng.random() < 0.2 else [RECORD_ATTR, RECORD_BACKUP_ATTR]
        payload = json.dumps(data).encode()
        style = rng.random()
        for attr in targets:
            del obj.attrs[attr]
            if style > 0.9:  # the attribute itself of another type
                obj.attrs[attr] = rng.choice([np.arange(3), payload.decode(), np.float64(1)])
            else:
                obj.attrs[attr] = np.bytes_(payload)


def damage(case: Case, layout: Layout, directory: Path) -> dict[str, set[int]]:
    """Damage the copy in *directory*; return the rows whose stored bytes changed."""
    rng = random.Random(f"{case.kind}-{case.seed}")
    path = directory / STORE
    raw = directory / f"{STORE}.raw" / layout.raw_name
    flipped: list[tuple[str, int]] = []
    count = rng.randint(1, 4)
    if case.kind == "truncate":
        os.truncate(path, rng.randrange(layout.size))
    elif case.kind == "truncate_raw":
        os.truncate(raw, rng.randrange(layout.raw_size))
    elif case.kind == "superblock":
        flipped = [("h5", p) for p in _positions(rng, 0, SUPERBLOCK, count)]
    elif case.kind == "object_header":
        _, address, size = rng.choice(layout.headers)
        flipped = [("h5", p) for p in _positions(rng, address, size, count)]
        # Object headers hold the metadata records: flips there are the records' kind.
        flipped = [
            (f, p) for f, p in flipped if not any(m <= p < m + n for m, n in layout.manifests)
        ] or [("h5", address)]
    elif case.kind == "manifest_bytes":
        chosen = layout.manifests if rng.random() < 0.4 else [rng.choice(layout.manifests)]
        for start, size in chosen:
            flipped += [("h5", p) for p in _positions(rng, start, size, count)]
    elif case.kind == "data":
        span = rng.choice(layout.spans)
        flipped = [(span.file, p) for p in _positions(rng, span.offset, span.size, count)]
    elif case.kind == "anywhere":
        flipped = [("h5", p) for p in _positions(rng, 0, layout.size, rng.randint(1, 8))]
    elif case.kind == "manifest_fields":
        _rewrite_manifest(path, rng)
    else:
        raise ValueError(f"unknown kind {case.kind!r}")
    for file, position in flipped:
        _flip(raw if file == "raw" else path, [position], rng)
    damaged: dict[str, set[int]] = {}
    for file, position in flipped:
        for span in layout.spans:
            if span.file == file:
                rows = span.damaged_rows(position, layout.row_nbytes[span.dataset])
                damaged.setdefault(span.dataset, set()).update(rows)
    return damaged


# -- checking ------------------------------------------------------------------


def _wrong_rows(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> set[int] | None:
    """Rows where *got* differs from *want*; None when the shape or dtype differ."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return None
    a = np.ascontiguousarray(got).view(np.uint8).reshape(len(got), -1)
    b = np.ascontiguousarray(want).view(np.uint8).reshape(len(want), -1)
    return set(np.flatnonzero((a != b).any(axis=1)).tolist())


class _Verdict:
    def __init__(self) -> None:
        self.outcome = OK
        self.detail = ""

    def note(self, outcome: str, detail: str) -> None:
        rank = {OK: 0, REFUSED: 1, WRONG: 2, FAILED: 3}
        if rank[outcome] > rank[self.outcome]:
            self.outcome, self.detail = outcome, detail


def _attempt(verdict: _Verdict, what: str, action: Any, check: Any = None) -> Any:
    from shmstore import ShmStoreError

    try:
        result = action()
    except ShmStoreError as err:
        if not str(err).strip():
            verdict.note(FAILED, f"{what}: {type(err).__name__} without a message")
        else:
            verdict.note(REFUSED, f"{what}: {type(err).__name__}: {err}")
        return None
    except Exception as err:
        verdict.note(FAILED, f"{what}: {type(err).__module__}.{type(err).__name__}: {err}")
        return None
    if check is not None:
        check(result)
    return result


def _compare(
    verdict: _Verdict, what: str, got: Any, want: np.ndarray[Any, Any], allowed: set[int]
) -> None:
    if not isinstance(got, np.ndarray):
        verdict.note(WRONG, f"{what}: returned {type(got).__name__}")
        return
    wrong = _wrong_rows(got, want)
    if wrong is None:
        verdict.note(
            WRONG, f"{what}: shape {got.shape} dtype {got.dtype}, want {want.shape} {want.dtype}"
        )
    elif wrong - allowed:
        verdict.note(WRONG, f"{what}: rows {sorted(wrong - allowed)[:5]} differ, none damaged")


def check_case(case: Case) -> tuple[str, str]:
    """Damage a copy of the base store one way and read it every way (in a child process)."""
    import shmstore
    from shmstore._cache import Cache

    layout = _load_layout(case.base)
    directory = Path(case.workdir) / f"case-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(case.base, directory)
    try:
        damaged = damage(case, layout, directory)
        verdict = _Verdict()
        cache = Cache(directory=case.cache_dir, budget="256M")
        want = expected_arrays(case.with_zstd)
        path = directory / STORE
        store = _attempt(verdict, "open", lambda: shmstore.open(path, "r", cache=cache))
        if store is not None:
            with store:
                for name, array in want.items():
                    _read_every_way(verdict, store, name, array, damaged.get(name, set()))
        gc.collect()
        cache.evict(all=True)
        return verdict.outcome, f"{case!r}: {verdict.detail}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _read_every_way(
    verdict: _Verdict, store: Any, name: str, want: np.ndarray[Any, Any], allowed: set[int]
) -> None:
    rows = len(want)
    start = rows // 3

    def compare(what: str, lo: int = 0, hi: int = rows) -> Any:
        part = {r - lo for r in allowed if lo <= r < hi}
        return lambda got: _compare(verdict, what, got, want[lo:hi], part)

    info = _attempt(verdict, f"info({name!r})", lambda: store.info(name))
    if info is None:
        return
    _attempt(verdict, f"read({name!r})", lambda: store.read(name), compare(f"read({name!r})"))
    _attempt(
        verdict,
        f"read({name!r}, rows)",
        lambda: store.read(name, (start, rows)),
        compare(f"read({name!r}, rows)", start, rows),
    )
    if info.memory_mappable:
        _attempt(
            verdict, f"memmap({name!r})", lambda: store.memmap(name), compare(f"memmap({name!r})")
        )

    def shared(lo: int, hi: int) -> Any:
        with store.view(name, (lo, hi), mode="shared") as view:
            return np.array(view)

    _attempt(verdict, f"view({name!r})", lambda: shared(0, rows), compare(f"view({name!r})"))
    _attempt(
        verdict,
        f"view({name!r}, rows)",
        lambda: shared(start, rows),
        compare(f"view({name!r}, rows)", start, rows),
    )

    def through_handle() -> Any:
        handle = store.handle(name)
        with handle.view("shared") as view:
            return np.array(view)

    _attempt(verdict, f"handle({name!r})", through_handle, compare(f"handle({name!r})"))


_LAYOUTS: dict[str, Layout] = {}


def _load_layout(base: str) -> Layout:
    if base not in _LAYOUTS:
        data = json.loads((Path(base).parent / "layout.json").read_text())
        spans = [Span(**s) for s in data.pop("spans")]
        _LAYOUTS[base] = Layout(**data, spans=spans)
    return _LAYOUTS[base]


def _save_layout(layout: Layout, base: Path) -> None:
    data = dict(layout.__dict__)
    data["spans"] = [s.__dict__ for s in layout.spans]
    (base.parent / "layout.json").write_text(json.dumps(data))


def run(settings: Settings) -> list[Row]:
    """Every kind of damage, ``cases`` times each; one Row per kind."""
    try:
        import hdf5plugin  # noqa: F401

        with_zstd = True
    except ImportError:
        with_zstd = False
    root = Path(settings.workdir) / "fuzz-files"
    base = root / "base"
    layout = build_base(base, with_zstd)
    _save_layout(layout, base)
    per_kind = 30 if settings.quick else 150
    cache_dir = f"/dev/shm/shmstore-fuzz-{uuid.uuid4().hex[:8]}"
    cases = [
        Case(kind, settings.seed * 100_000 + i, str(base), str(root), cache_dir, with_zstd)
        for kind in KINDS
        for i in range(per_kind)
    ]
    rows = {kind: Row(SECTION, text) for kind, text in KINDS.items()}
    try:
        run_into_rows(check_case, cases, rows, workers=settings.workers, timeout=60)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return list(rows.values())
