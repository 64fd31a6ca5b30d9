"""Named arrays in the node cache (``Cache.create``): made once, writable if made so, never
evicted to make room, removed by ``unlink``, or by ``evict``/``gc`` once unmapped.

Real segments on /dev/shm, real processes (spawn) for sharing, and a tmpfs
of its own for the full file system.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from shmstore import Cache, CacheFullError, ReadOnlyError, SegmentExistsError
from shmstore._segment import SegmentSource
from tests._cache_children import evicted_keys, make_source, removed_names

SPAWN = multiprocessing.get_context("spawn")
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"
MIB = 1 << 20


def _named(name: str, rows: int) -> SegmentSource:
    return SegmentSource(path="<memory>", identity=(), dataset=name, version=0, start=0, stop=rows)


def _write_through(directory: str, key: str, value: float) -> None:
    """A spawned child: attach *key* writable and fill it with *value*."""
    Cache(directory=directory).attach(key, writable=True)[:] = value


def test_a_named_array_is_zeros_unless_filled(cache: Cache) -> None:
    zeros = cache.create(KEY, _named("z", 8), np.dtype("<f4"), (8, 3))
    assert zeros.flags.writeable
    assert not zeros.any()
    filled = cache.create(OTHER_KEY, _named("f", 2), np.dtype("<i2"), (2,), lambda out: out.fill(5))
    assert filled.tolist() == [5, 5]


def test_a_write_in_one_process_is_seen_by_another(cache: Cache) -> None:
    mine = cache.create(KEY, _named("out", 4), np.dtype("<f8"), (4, 4))
    process = SPAWN.Process(target=_write_through, args=(str(cache.directory), KEY, 2.5))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert (mine == 2.5).all()  # the same pages, no copy


def _private_shm(tmp_path: Path) -> Path:
    # On /dev/shm (a test may fill it), named per process: runs side by side never share it.
    return Path("/dev/shm") / f"shmstore-named-{os.getpid()}-{tmp_path.name}"


def test_a_named_array_is_never_evicted_to_make_room(tmp_path: Path) -> None:
    cache = Cache(directory=_private_shm(tmp_path), budget=3 * MIB)
    try:
        cache.create(KEY, _named("kept", 2), np.dtype("<f8"), (2 * MIB // 16, 1))
        gc.collect()  # nothing maps it any more
        origin = tmp_path / "origin.bin"
        origin.write_bytes(b"x")
        with pytest.raises(CacheFullError, match="named arrays \\(never evicted to make room\\)"):
            cache.get(make_source(origin), np.dtype("<f8"), (2 * MIB // 8, 1), lambda out: None)
        assert cache.attach(KEY).nbytes == MIB  # still there, whole
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)


def test_cached_copies_are_evicted_to_make_room_and_named_arrays_are_kept(
    tmp_path: Path,
) -> None:
    cache = Cache(directory=_private_shm(tmp_path), budget=3 * MIB)
    origin = tmp_path / "origin.bin"
    origin.write_bytes(b"x")
    try:
        cache.create(KEY, _named("kept", 1), np.dtype("<f8"), (MIB // 8, 1))
        first = make_source(origin, start=0, stop=MIB // 8)
        second = make_source(origin, start=1, stop=1 + MIB // 8)
        cache.get(first, np.dtype("<f8"), (MIB // 8, 1), lambda out: None)
        gc.collect()
        cache.get(second, np.dtype("<f8"), (MIB // 8, 1), lambda out: None)
        cache.get(
            make_source(origin, start=2, stop=2 + MIB // 8),
            np.dtype("<f8"),
            (MIB // 8, 1),
            lambda out: None,
        )
        assert cache.lookup(first) is None  # the least recently used copy went
        assert cache.find(KEY) is not None
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)


def test_no_room_for_a_named_array_is_a_cache_full_error_leaving_nothing(cache: Cache) -> None:
    with pytest.raises(CacheFullError, match="more than its whole budget"):
        cache.create(KEY, _named("huge", 1), np.dtype("<f8"), (128 * MIB // 8,))
    assert list(cache.directory.glob("*.seg")) == list(cache.directory.glob("*.tmp")) == []


def test_making_a_key_that_exists_is_refused_and_changes_nothing(cache: Cache) -> None:
    first = cache.create(KEY, _named("once", 3), np.dtype("<i4"), (3,), lambda out: out.fill(1))
    with pytest.raises(SegmentExistsError, match=r"holds segment .* already") as raised:
        cache.create(KEY, _named("twice", 5), np.dtype("<f8"), (5,))
    assert isinstance(raised.value, FileExistsError)
    assert first.tolist() == [1, 1, 1]
    assert cache.attach(KEY).tolist() == [1, 1, 1]


def test_a_cached_copy_cannot_be_attached_writable(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    cache.get(source, np.dtype("<f8"), (4,), lambda out: out.fill(1.0))
    with pytest.raises(ReadOnlyError, match=r"cached copy .* only ever mapped read-only"):
        cache.attach(cache.key(source), writable=True)


def test_a_named_array_made_read_only_cannot_be_attached_writable(cache: Cache) -> None:
    made = cache.create(KEY, _named("ro", 2), np.dtype("<f8"), (2,), writable=False)
    assert not made.flags.writeable
    with pytest.raises(ReadOnlyError, match="made read-only"):
        cache.attach(KEY, writable=True)


def test_a_writable_named_array_attached_read_only_is_read_only(cache: Cache) -> None:
    cache.create(KEY, _named("rw", 2), np.dtype("<f8"), (2,))
    view = cache.attach(KEY)
    assert not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1.0


def test_evict_and_gc_remove_a_named_array_only_once_no_process_maps_it(cache: Cache) -> None:
    held = cache.create(KEY, _named("a", 2), np.dtype("<f8"), (2,))
    cache.create(OTHER_KEY, _named("b", 2), np.dtype("<f8"), (2,))
    gc.collect()
    # the named array b: nothing maps it, its processes are gone
    removed = removed_names(cache.gc())
    assert [name for name in removed if name.endswith(".seg")] == [f"{OTHER_KEY}.seg"]
    assert evicted_keys(cache.evict([KEY])) == []  # mapped here
    del held
    gc.collect()
    assert evicted_keys(cache.evict([KEY])) == [KEY]


def test_entries_say_which_segments_are_named_and_writable(cache: Cache, origin: Path) -> None:
    kept = [
        cache.create(KEY, _named("w", 1), np.dtype("<f8"), (1,)),
        cache.create(OTHER_KEY, _named("r", 1), np.dtype("<f8"), (1,), writable=False),
        cache.get(make_source(origin), np.dtype("<f8"), (1,), lambda out: None),
    ]
    found = {(e.dataset, e.named, e.writable) for e in cache.entries()}
    assert found == {
        ("w", True, True),
        ("r", True, False),
        (make_source(origin).dataset, False, False),
    }
    del kept


def _header(path: Path) -> dict[str, Any]:
    from shmstore._segment import _PREFIX

    raw = path.read_bytes()
    _, length = _PREFIX.unpack_from(raw)
    return json.loads(raw[_PREFIX.size : _PREFIX.size + length])  # type: ignore[no-any-return]


def test_a_named_header_is_valid_and_a_copys_header_is_as_before(
    cache: Cache, origin: Path
) -> None:
    cache.create(KEY, _named("w", 1), np.dtype("<f8"), (1,))
    source = make_source(origin)
    cache.get(source, np.dtype("<f8"), (1,), lambda out: None)
    schema = json.loads((SCHEMAS / "segment.schema.json").read_text())
    named = _header(cache.directory / f"{KEY}.seg")
    copy = _header(cache.directory / f"{cache.key(source)}.seg")
    for header in (named, copy):
        jsonschema.validate(header, schema)
    assert (named["named"], named["writable"]) == (True, True)
    assert "named" not in copy  # older readers on the node still read copies
    assert "writable" not in copy


def test_a_named_array_on_a_full_tmpfs_is_a_cache_full_error_never_a_sigbus(
    small_tmpfs: Path,
) -> None:
    code = (
        "import numpy as np, shmstore, sys\n"
        "from shmstore._segment import SegmentSource\n"
        "c = shmstore.Cache(directory=sys.argv[1], budget='1G')\n"
        "s = SegmentSource(path='<memory>', identity=(), dataset='big', version=0, start=0,"
        " stop=1)\n"
        "c.create('0123456789abcdef0123456789abcdef', s, np.dtype('<f8'), (2 << 20,))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(small_tmpfs / "cache")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1, f"exit {done.returncode} (SIGBUS is -7): {done.stderr}"
    assert "CacheFullError" in done.stderr
    assert "are free" in done.stderr
    left = {p.suffix for p in (small_tmpfs / "cache").iterdir()}
    assert left <= {".lock"}  # no segment, no temporary file
