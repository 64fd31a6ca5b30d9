"""Fuzzed segments: damaged or planted files in the cache directory.

Each case makes a fresh cache directory on ``/dev/shm``, loads one real
segment into it, then damages it one way (random byte flips in its header,
truncation, a size that disagrees with the header, another owner or mode,
a symbolic link or a FIFO or a directory in its place, a planted ``.tmp``
file, a lock file that is a link, a directory that is a link or open to
others) or asks for names that try to leave the directory.  Then every
call that reads the cache is made: ``find``, ``attach``, ``header``,
``get`` (by source and with ``key=``), ``entries``, ``gc`` and ``get``
again.  The rule checked for each call:

* refused with a ``ShmStoreError`` subclass with a message, or the damage
  ignored (the segment treated as absent and loaded again, correctly);
* never mapped: no call returns data that are not the true data, or an
  array backed by the planted file (checked in ``/proc/self/maps``);
* never another exception type, a hang (timeout) or a crash (the case
  runs in a child process);
* nothing is left behind: a file outside the directory a link pointed to
  is unchanged, and after ``gc`` no unlocked ``.tmp`` file remains.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import random
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    FAILED,
    LEAK,
    OK,
    REFUSED,
    WRONG,
    Case,
    Row,
    Settings,
    cases_by_kind,
    run_into_rows,
)

SECTION = "Fuzzed segments"
SHM = Path("/dev/shm")
ROWS, WIDTH = 64, 32
F8 = np.dtype("<f8")
SHAPE = (ROWS, WIDTH)
NOBODY = 65534
IS_ROOT = os.geteuid() == 0

# kind -> (what the Row says, cases in quick mode, cases in full mode)
KINDS: dict[str, tuple[str, int, int]] = {
    "flip_header": ("1-4 random bytes flipped in the prefix and JSON header", 60, 400),
    "flip_page": (
        "1-8 random bytes flipped anywhere before the data (header and padding)",
        30,
        150,
    ),
    "truncate": ("segment truncated at a random offset", 30, 150),
    "size": ("file grown or shrunk so its size disagrees with the header", 12, 60),
    "mode": ("segment chmod 0644/0666/0640/0604/0660/0606", 6, 24),
    "owner": ("segment chown to another uid (root only)", 3, 12),
    "dir_mode": ("cache directory chmod 0755/0777/0750/0707, then a new Cache", 4, 16),
    "dir_owner": ("cache directory chown to another uid, then a new Cache (root only)", 2, 8),
    "link_copy": ("segment name a symbolic link to a planted valid segment outside", 4, 16),
    "link_passwd": ("segment name a symbolic link to /etc/passwd", 2, 8),
    "hardlink_foreign": ("segment name a hard link to a file of another uid (root only)", 2, 8),
    "dir_link": ("cache directory replaced by a link to a directory with a planted segment", 4, 16),
    "dir_link_new": ("Cache made on a directory path that is a symbolic link", 2, 8),
    "lock_link": (
        "<key>.lock or budget.lock a symbolic link (to a missing file, to a file)",
        6,
        24,
    ),
    "lock_odd": ("<key>.lock a directory or a FIFO", 4, 16),
    "escape_key": ("keys with '/', '..', absolute paths, NUL, very long, non-strings", 12, 48),
    "tmp": ("planted .tmp files: garbage, link, FIFO, directory, another uid's", 10, 40),
    "seg_odd": ("<key>.seg a FIFO, an empty or non-empty directory, a socket", 6, 24),
    "renamed": ("a valid segment of another key under this key's name", 3, 12),
}


def expected(version: int = 0) -> np.ndarray[Any, Any]:
    """The true rows: distinct values, so any wrong byte shows."""
    return np.arange(ROWS * WIDTH, dtype=F8).reshape(SHAPE) + version * 1e6


def _fill(version: int) -> Callable[[np.ndarray[Any, Any]], None]:
    def fill(out: np.ndarray[Any, Any]) -> None:
        out[...] = expected(version)

    return fill


def _mapped_files() -> set[tuple[int, int]]:
    """(major:minor as text hashed away, inode) is not enough: return (dev, ino) of mapped files."""
    found: set[tuple[int, int]] = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[4] != "0":
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                found.add((os.makedev(major, minor), int(parts[4])))
    return found


def _digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as err:
        return f"unreadable: {err.strerror}"


class Probe:
    """Every call on one cache, each classified; the worst outcome wins."""

    def __init__(self, case: Case, planted: list[str]) -> None:
        self.case = case
        self.planted: set[tuple[int, int]] = set()
        for path in planted:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self.planted.add((st.st_dev, st.st_ino))
        self.outcomes: list[tuple[str, str]] = []

    def note(self, outcome: str, detail: str) -> None:
        self.outcomes.append((outcome, f"{self.case!r}: {detail}"))

    def check_array(self, op: str, array: object, version: int = 0) -> None:
        if not isinstance(array, np.ndarray):
            self.note(WRONG, f"{op} returned {type(array).__name__}")
            return
        mapped = _mapped_files() & self.planted
        if mapped:
            self.note(WRONG, f"{op} mapped the planted file (dev, inode) {sorted(mapped)}")
        elif array.dtype != F8 or array.shape != SHAPE:
            self.note(WRONG, f"{op} returned {array.dtype} {array.shape}, not {F8} {SHAPE}")
        elif not np.array_equal(array, expected(version)):
            self.note(WRONG, f"{op} returned data that are not the true data")
        elif array.flags.writeable:
            self.note(WRONG, f"{op} returned a writeable array")
        else:
            self.note(OK, op)

    def call(self, op: str, fn: Callable[[], object], check: Callable[[object], None]) -> None:
        from shmstore import ShmStoreError

        try:
            result = fn()
        except ShmStoreError as err:
            if str(err).strip():
                self.note(REFUSED, f"{op}: {type(err).__name__}")
            else:
                self.note(FAILED, f"{op}: {type(err).__name__} without a message")
            return
        except Exception as err:
            self.note(FAILED, f"{op}: {type(err).__name__}: {err}")
            return
        try:
            check(result)
        finally:
            del result
            gc.collect()

    def worst(self) -> tuple[str, str]:
        for bad in (WRONG, FAILED, LEAK):
            for outcome, detail in self.outcomes:
                if outcome == bad:
                    return outcome, detail
        refused = [d for o, d in self.outcomes if o == REFUSED]
        if refused:
            return REFUSED, refused[0]
        return OK, f"{self.case!r}: {len(self.outcomes)} calls"


def _probe_all(probe: Probe, cache: Any, source: Any, key: str) -> None:
    """Every call that reads the cache, then gc, then a load again."""
    from shmstore._cache import SegmentHeader

    def array_or_none(op: str) -> Callable[[object], None]:
        def check(result: object) -> None:
            if result is None:
                probe.note(OK, f"{op}: absent")
            else:
                probe.check_array(op, result)

        return check

    def check_header(result: object) -> None:
        ok = (
            isinstance(result, SegmentHeader)
            and result.key == key
            and result.dtype == F8
            and tuple(result.shape) == SHAPE
            and result.source == source
        )
        probe.note(OK if ok else WRONG, f"header: {result!r}"[:300])

    def check_entries(result: object) -> None:
        assert isinstance(result, list)
        for entry in result:
            if entry.key == key and (
                entry.dataset != source.dataset or entry.nbytes != F8.itemsize * ROWS * WIDTH
            ):
                probe.note(WRONG, f"entries lists {entry!r}")
                return
        probe.note(OK, "entries")

    probe.call("find", lambda: cache.find(key), array_or_none("find"))
    probe.call("attach", lambda: cache.attach(key), array_or_none("attach"))
    probe.call("header", lambda: cache.header(key), check_header)
    probe.call("entries", cache.entries, check_entries)
    probe.call(
        "get(key=)",
        lambda: cache.get(source, F8, SHAPE, _fill(0), key=key),
        array_or_none("get(key=)"),
    )
    probe.call("get", lambda: cache.get(source, F8, SHAPE, _fill(0)), array_or_none("get"))
    probe.call("gc", cache.gc, lambda r: probe.note(OK, "gc"))
    probe.call(
        "get after gc",
        lambda: cache.get(source, F8, SHAPE, _fill(0)),
        array_or_none("get after gc"),
    )


def _flip(path: str, rng: random.Random, lo: int, hi: int, count: int) -> list[int]:
    positions = sorted(rng.randrange(lo, hi) for _ in range(count))
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        for at in positions:
            old = os.pread(fd, 1, at)[0]
            new = old ^ rng.choice([1 << rng.randrange(8), rng.randrange(1, 256)])
            os.pwrite(fd, bytes([new]), at)
    finally:
        os.close(fd)
    return positions


def _leftover_tmps(directory: Path) -> list[str]:
    """Regular ``.tmp`` files of this user nobody holds a lock on (a live loader would)."""
    import fcntl

    left = []
    for entry in os.scandir(directory):
        if not entry.name.endswith(".tmp"):
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            continue
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            left.append(entry.name)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
    return left


def check_case(case: Case) -> tuple[str, str]:
    """Run one case in this (child) process; ``(outcome, detail)``."""
    from shmstore._cache import Cache
    from shmstore._segment import FileIdentity, SegmentSource

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)  # refusals are logged
    rng = random.Random(case.seed)
    work = Path(case.workdir) / f"seg-{case.kind}-{case.seed}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    directory = SHM / f"shmstore-relseg-{uuid.uuid4().hex[:12]}"
    other = SHM / f"shmstore-relseg-{uuid.uuid4().hex[:12]}"
    origin = work / "origin.bin"
    origin.write_bytes(b"the file the cached rows are a copy of")
    try:
        source = SegmentSource(
            path=str(origin),
            identity=(FileIdentity.of(origin),),
            dataset="data",
            version=0,
            start=0,
            stop=ROWS,
        )
        cache = Cache(directory=directory, budget="64M")
        key = cache.key(source)
        seg = str(directory / f"{key}.seg")
        array = cache.get(source, F8, SHAPE, _fill(0))
        del array
        gc.collect()
        return _damage_and_probe(case, rng, cache, source, key, seg, work, other)
    finally:
        for path in (directory, other):
            if path.is_symlink():
                path.unlink()
            if path.exists():
                os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _plant_copy(cache: Any, source: Any, key: str, where: Path) -> str:
    """A valid segment of *key* holding other data (version 1's rows), at *where*; its path."""
    from shmstore._cache import Cache

    where.mkdir(mode=0o700, exist_ok=True)
    helper = Cache(directory=where / "helper", budget="64M")
    array = helper.get(source, F8, SHAPE, _fill(1), key=key)
    del array
    gc.collect()
    planted = str(where / "planted.seg")
    shutil.copyfile(helper.directory / f"{key}.seg", planted)
    os.chmod(planted, 0o600)
    shutil.rmtree(helper.directory)
    return planted


def _damage_and_probe(  # noqa: PLR0915, PLR0917 (one branch per kind)
    case: Case,
    rng: random.Random,
    cache: Any,
    source: Any,
    key: str,
    seg: str,
    work: Path,
    other: Path,
) -> tuple[str, str]:
    from shmstore._cache import Cache
    from shmstore._segment import encode_header, open_segment, read_header

    directory = cache.directory
    fd, st = open_segment(seg)
    header = read_header(fd, st, seg, key)
    os.close(fd)
    header_end = len(encode_header(header))  # prefix, checksum and the JSON as written
    planted: list[str] = []
    outside: dict[str, str] = {}  # files a link points to: digest before
    kind = case.kind
    what = ""
    if kind == "flip_header":
        what = f"flipped at {_flip(seg, rng, 0, header_end, rng.randint(1, 4))}"
    elif kind == "flip_page":
        what = f"flipped at {_flip(seg, rng, 0, header.data_offset, rng.randint(1, 8))}"
    elif kind == "truncate":
        size = rng.randrange(0, header.file_size)
        os.truncate(seg, size)
        what = f"truncated to {size}"
    elif kind == "size":
        delta = rng.choice([1, 7, 4096, 3 * 4096, rng.randrange(1, 1 << 16)])
        size = header.file_size + (delta if rng.random() < 0.5 else -min(delta, header.nbytes))
        os.truncate(seg, size)
        what = f"size {size}, header says {header.file_size}"
    elif kind == "mode":
        mode = rng.choice([0o644, 0o666, 0o640, 0o604, 0o660, 0o606])
        os.chmod(seg, mode)
        what = f"mode {mode:o}"
    elif kind == "owner":
        if not IS_ROOT:
            return OK, f"{case!r}: skipped, not root"
        os.chown(seg, NOBODY, NOBODY)
        planted.append(seg)
        what = f"owner {NOBODY}"
    elif kind == "dir_mode":
        mode = rng.choice([0o755, 0o777, 0o750, 0o707])
        os.chmod(directory, mode)
        cache = Cache(directory=directory, budget="64M")
        now = stat.S_IMODE(os.lstat(directory).st_mode)
        if now != 0o700:
            return WRONG, f"{case!r}: directory mode {mode:o} left {now:o} by a new Cache"
        what = f"directory mode {mode:o}"
    elif kind == "dir_owner":
        if not IS_ROOT:
            return OK, f"{case!r}: skipped, not root"
        os.chown(directory, NOBODY, NOBODY)
        try:
            Cache(directory=directory, budget="64M")
        except Exception as err:
            from shmstore import SegmentError

            if isinstance(err, SegmentError) and str(err):
                return REFUSED, f"{case!r}: {type(err).__name__}"
            return FAILED, f"{case!r}: {type(err).__name__}: {err}"
        return WRONG, f"{case!r}: a directory of uid {NOBODY} was accepted"
    elif kind == "link_copy":
        target = _plant_copy(cache, source, key, work / "planted")
        os.unlink(seg)
        Path(seg).symlink_to(target)
        planted.append(target)
        outside[target] = _digest(target)
        what = "link to a planted copy"
    elif kind == "link_passwd":
        os.unlink(seg)
        Path(seg).symlink_to("/etc/passwd")
        planted.append("/etc/passwd")
        outside["/etc/passwd"] = _digest("/etc/passwd")
        what = "link to /etc/passwd"
    elif kind == "hardlink_foreign":
        if not IS_ROOT:
            return OK, f"{case!r}: skipped, not root"
        target = _plant_copy(cache, source, key, other)
        os.chown(target, NOBODY, NOBODY)
        os.unlink(seg)
        os.link(target, seg)
        planted.append(target)
        what = "hard link to a file of another uid"
    elif kind == "dir_link":
        target = _plant_copy(cache, source, key, other)
        os.rename(target, other / f"{key}.seg")
        planted.append(str(other / f"{key}.seg"))
        shutil.rmtree(directory)
        Path(directory).symlink_to(other)
        what = "directory replaced by a link"
    elif kind == "dir_link_new":
        other.mkdir(mode=0o700)
        link = Path(str(directory) + "-link")
        Path(link).symlink_to(other)
        try:
            Cache(directory=link, budget="64M")
        except Exception as err:
            from shmstore import SegmentError

            if isinstance(err, SegmentError) and str(err):
                return REFUSED, f"{case!r}: {type(err).__name__}"
            return FAILED, f"{case!r}: {type(err).__name__}: {err}"
        finally:
            link.unlink()
        return WRONG, f"{case!r}: a Cache was made on a symbolic link"
    elif kind == "lock_link":
        name = rng.choice([f"{key}.lock", "budget.lock"])
        target = str(work / rng.choice(["missing-target", "existing-target"]))
        if target.endswith("existing-target"):
            Path(target).write_bytes(b"not yours")
            outside[target] = _digest(target)
        else:
            outside[target] = "absent"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
        Path(directory / name).symlink_to(target)
        os.unlink(seg)  # so the load, and its locks, happen
        what = f"{name} a link to {target}"
    elif kind == "lock_odd":
        lock = directory / f"{key}.lock"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        if rng.random() < 0.5:
            Path(lock).mkdir(mode=0o700)
            what = "lock a directory"
        else:
            os.mkfifo(lock, 0o600)
            what = "lock a FIFO"
        os.unlink(seg)
    elif kind == "escape_key":
        return _escape_keys(case, rng, cache, source, work)
    elif kind == "tmp":
        what = _plant_tmp(rng, directory, key, work, outside)
    elif kind == "seg_odd":
        os.unlink(seg)
        choice = rng.choice(["fifo", "empty dir", "dir", "socket"])
        if choice == "fifo":
            os.mkfifo(seg, 0o600)
        elif choice == "socket":
            import socket

            sock = socket.socket(socket.AF_UNIX)
            sock.bind(seg)
            sock.close()
        else:
            Path(seg).mkdir(mode=0o700)
            if choice == "dir":
                (Path(seg) / "inside").write_bytes(b"x")
        what = f"seg a {choice}"
    elif kind == "renamed":
        other_source = source.model_copy(update={"version": 7})
        array = cache.get(other_source, F8, SHAPE, _fill(1))
        del array
        gc.collect()
        os.replace(directory / f"{cache.key(other_source)}.seg", seg)
        what = "another key's segment renamed"
    else:
        raise ValueError(kind)
    probe = Probe(case, planted)
    probe.note(OK, what)
    _probe_all(probe, cache, source, key)
    for target, before in outside.items():
        after = _digest(target) if os.path.lexists(target) else "absent"
        if after != before:
            probe.note(WRONG, f"{target} was changed through a link ({what})")
    if directory.is_dir() and not directory.is_symlink():
        left = _leftover_tmps(directory)
        if left:
            probe.note(LEAK, f"unlocked .tmp files left after gc: {left} ({what})")
    outcome, detail = probe.worst()
    return outcome, f"{detail} [{what}]"


def _escape_keys(
    case: Case, rng: random.Random, cache: Any, source: Any, work: Path
) -> tuple[str, str]:
    """Names that try to leave the directory, given to every call taking a key."""
    victim = work / "victim"
    victim.write_bytes(b"must survive")
    rel = os.path.relpath(victim, cache.directory)
    keys: list[object] = [
        "../" + "0" * 29,
        rel,
        rel.removesuffix(".seg"),
        str(victim),
        "/etc/passwd",
        "a/b",
        "0" * 31 + "/",
        "0" * 16 + "\x00" + "0" * 15,
        "0" * 32 + "\x00",
        "0" * 4096,
        "0" * 33,
        "0" * 31,
        "A" * 32,
        "",
        ".",
        "..",
        "0" * 32 + "/../" + "0" * 32,
        None,
        12,
        b"0" * 32,
        "\uff10" * 32,  # fullwidth digits: \d would take them
        "0" * 31 + "\n",
    ]
    rng.shuffle(keys)
    probe = Probe(case, [str(victim)])
    for key in keys:
        for op, fn in (
            ("attach", lambda k=key: cache.attach(k)),
            ("find", lambda k=key: cache.find(k)),
            ("header", lambda k=key: cache.header(k)),
            ("unlink", lambda k=key: cache.unlink(k)),
            ("evict", lambda k=key: cache.evict([k])),
            ("get(key=)", lambda k=key: cache.get(source, F8, SHAPE, _fill(0), key=k)),
        ):
            if op == "get(key=)" and key is None:
                continue  # None is the default: the key of the source
            probe.call(
                f"{op}({key!r:.40})",
                fn,
                lambda r, o=op, k=key: probe.note(WRONG, f"{o}({k!r:.40}) accepted: {r!r:.80}"),
            )
    if not victim.exists() or victim.read_bytes() != b"must survive":
        probe.note(WRONG, "a file outside the directory was removed or changed")
    if any(p.name.endswith(".tmp") for p in cache.directory.iterdir()):
        probe.note(LEAK, ".tmp left")
    return probe.worst()


def _plant_tmp(
    rng: random.Random, directory: Path, key: str, work: Path, outside: dict[str, str]
) -> str:
    name = directory / f"{key}.{rng.randrange(1, 1 << 22)}.{rng.randrange(1 << 32):08x}.tmp"
    choice = rng.choice(["garbage", "link", "fifo", "dir", "foreign", "header"])
    if choice == "garbage":
        name.write_bytes(os.urandom(rng.randrange(0, 20000)))
        os.chmod(name, 0o600)
    elif choice == "header":
        shutil.copyfile(directory / f"{key}.seg", name)
        os.chmod(name, 0o600)
    elif choice == "link":
        target = work / "tmp-target"
        target.write_bytes(b"keep me")
        outside[str(target)] = _digest(str(target))
        Path(name).symlink_to(target)
    elif choice == "fifo":
        os.mkfifo(name, 0o600)
    elif choice == "dir":
        Path(name).mkdir(mode=0o700)
    elif not IS_ROOT:
        name.write_bytes(b"x")
    else:
        name.write_bytes(b"someone else's")
        os.chown(name, NOBODY, NOBODY)
    if rng.random() < 0.5:
        os.unlink(directory / f"{key}.seg")  # so a load runs (and removes leftovers)
        choice += ", segment absent"
    return f"planted tmp: {choice}"


def run(settings: Settings) -> list[Row]:
    """Every kind of damage, a number of seeds each; one Row per kind."""
    work = Path(settings.workdir) / "fuzz-segments"
    work.mkdir(parents=True, exist_ok=True)
    cases, rows = cases_by_kind(
        SECTION, KINDS, settings, lambda kind, seed: Case(kind, seed, str(work))
    )
    try:
        run_into_rows(check_case, cases, rows, workers=settings.workers, timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows.values():
        if not IS_ROOT and row.what.endswith("(root only)"):
            row.note = "skipped: not root"
    return list(rows.values())
