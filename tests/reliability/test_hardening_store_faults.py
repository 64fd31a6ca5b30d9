"""Store-side faults: writers killed at random moments, read-only files, files changed under it.

The cases themselves live in ``reliability/_store_faults.py`` (the reliability
run uses them at a larger scale); these tests run a fixed-seed sample of
them, with real subprocesses and real ``kill -9``, plus one regression test
per bug they found.
"""

from __future__ import annotations

import concurrent.futures  # noqa: F401  (imported before a child drops to user nobody)
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmstore
from shmstore import InvalidStoreError, ReadOnlyError, StoreNotFoundError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "reliability"))

import _store_faults as faults
from _common import OK

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, setuid)")


@pytest.fixture
def cache_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="shmstore-test-faults-", dir="/dev/shm")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(directory + "-nobody", ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="shmstore-test-faults-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _as_nobody(fn: Callable[[], Any]) -> Any:
    """Run *fn* in a forked child as user nobody; its result, or the exception it raised."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result: Any = fn()
            except Exception as err:
                result = err
            with os.fdopen(writer, "wb") as out:
                pickle.dump(result, out)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    assert data, "the child running as nobody died"
    return pickle.loads(data)


# -- kill -9 at random moments ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "delay", "stores"),
    [("mixed", 0.4, 5), ("chunked-unlimited", 0.15, 3)],
    ids=["write-overwrite-delete-append", "chunked-appends"],
)
def test_kill_9_of_a_writer_at_random_moments_keeps_every_acknowledged_change_whole(
    tmp_path: Path, cache_dir: str, kind: str, delay: float, stores: int
) -> None:
    for seed in range(stores):  # 2 kills each, the store checked after each
        case = faults.KillCase(kind, 100 + seed, str(tmp_path / f"s{seed}"), cache_dir, 2, delay)
        outcome, detail = faults._kill_case(case)
        assert outcome == OK, detail
        assert detail.startswith("lost_rows=0 "), detail


STRACE = shutil.which("strace")
_CHUNKED_APPENDER = """
import sys, numpy as np, shmstore
with shmstore.open(sys.argv[1], "a") as store:
    n = store.info("a").rows
    for _ in range(6):
        store.append("a", np.repeat(np.arange(n, n + 50)[:, None], 3, axis=1))
        n += 50
        print(n, flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not (
        STRACE and subprocess.run([STRACE, "-o", os.devnull, "true"], check=False).returncode == 0
    ),
    reason="needs a working strace (ptrace) to kill at an exact write",
)
def test_kill_9_inside_a_chunked_append_leaves_a_readable_store_with_the_acknowledged_rows(
    tmp_path: Path,
) -> None:
    """Regression: a chunked append grew the chunk index unjournaled; a kill at one of
    these writes left "addr overflow" (unopenable), a damaged chunk index or lost rows."""
    assert STRACE is not None
    path = tmp_path / "chunked.h5"
    first = np.repeat(np.arange(2000)[:, None], 3, axis=1)
    for nth in (16, 17, 18, 38, 39, 40):  # where it failed (writes include stdout's)
        with shmstore.open(path, "w") as store:
            store.write("a", first, chunks=(4, 3), appendable=True)
        proc = subprocess.run(
            [
                *(STRACE, "-o", os.devnull, "-e", "trace=pwrite64,write"),
                *("-e", f"inject=pwrite64,write:signal=SIGKILL:when={nth}"),
                *(sys.executable, "-c", _CHUNKED_APPENDER, str(path)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode != 0, f"strace did not kill the writer at write {nth}"
        acknowledged = max([2000, *(int(n) for n in proc.stdout.split())])
        with shmstore.open(path, "r") as store:
            rows = store.read("a")
        assert len(rows) >= acknowledged, f"kill at write {nth}: lost rows"
        np.testing.assert_array_equal(rows[:, 0], np.arange(len(rows)))


# -- read-only files -------------------------------------------------------------------------------


@root_only
@pytest.mark.parametrize(
    "how", ["ro-mount", "ro-mount-no-lock", "chmod-nobody", "chmod-dir-nobody"]
)
def test_read_only_store_serves_reads_and_refuses_every_change_with_a_shmstore_error(
    open_dir: Path, cache_dir: str, how: str
) -> None:
    outcome, detail = faults._read_only_case(
        faults.ReadOnlyCase(how, str(open_dir / "c"), cache_dir)
    )
    assert outcome == OK, detail


@root_only
def test_journal_of_a_dead_writer_on_a_read_only_mount_gives_invalid_store_error(
    open_dir: Path, cache_dir: str
) -> None:
    mnt = open_dir / "mnt"
    with faults._tmpfs(mnt):
        path = mnt / "store.h5"
        faults.make_sample(path, cache_dir)
        faults._leave_journal(path)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(InvalidStoreError, match="cannot be rolled back here"):
            shmstore.open(path, "r", cache=shmstore.Cache(cache_dir))


def _nobody_store(open_dir: Path, cache_dir: str) -> Path:
    """A sample store in a directory nobody may write to, files owned by root."""
    work = open_dir / "w"
    work.mkdir()
    path = work / "store.h5"
    faults.make_sample(path, cache_dir)
    (work / "store.h5.lock").chmod(0o666)
    work.chmod(0o777)
    return path


@root_only
def test_mode_w_refused_on_a_read_only_hdf5_file_keeps_its_raw_files(
    open_dir: Path, cache_dir: str
) -> None:
    path = _nobody_store(open_dir, cache_dir)
    path.chmod(0o444)
    raw = path.with_name("store.h5.raw")
    for p in [raw, *raw.iterdir()]:
        os.chown(p, NOBODY, NOBODY)  # nobody could remove the raw file

    def truncate() -> Any:
        return shmstore.open(path, "w", cache=shmstore.Cache(cache_dir + "-nobody"))

    assert isinstance(_as_nobody(truncate), ReadOnlyError)
    with shmstore.open(path, "r", cache=shmstore.Cache(cache_dir)) as store:
        faults.check_reads(store)


@root_only
def test_append_to_a_raw_file_this_user_cannot_write_raises_read_only_error(
    open_dir: Path, cache_dir: str
) -> None:
    path = _nobody_store(open_dir, cache_dir)
    os.chown(path, NOBODY, NOBODY)  # the HDF5 file is writable, its raw file is not
    raw = path.with_name("store.h5.raw")
    for p in raw.iterdir():
        p.chmod(0o444)
    raw.chmod(0o555)

    def append() -> Any:
        with shmstore.open(path, "a", cache=shmstore.Cache(cache_dir + "-nobody")) as store:
            return store.append("e", faults.rows_of(3, 40, 41))

    def appendable_write() -> Any:
        with shmstore.open(path, "a", cache=shmstore.Cache(cache_dir + "-nobody")) as store:
            return store.write("n", faults.rows_of(9, 0, 3), appendable=True)

    for change in (append, appendable_write):
        err = _as_nobody(change)
        assert isinstance(err, ReadOnlyError), repr(err)
        assert "raw file" in str(err)
    with shmstore.open(path, "r", cache=shmstore.Cache(cache_dir)) as store:
        faults.check_reads(store)
        assert store.names() == ["c", "e", "x"]


# -- the file changed under the cache --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ("delete", "x"),
        ("replace", "x"),
        ("rewrite", "c"),
        ("truncate", "x"),
        ("replace", "e"),
        ("delete-raw", "e"),
        ("truncate-raw", "e"),
    ],
)
def test_file_changed_while_cached_and_held_never_serves_the_stale_slice(
    tmp_path: Path, cache_dir: str, change: str, name: str
) -> None:
    case = faults.ChangedCase(change, name, True, str(tmp_path / "c"), cache_dir)
    outcome, detail = faults._changed_case(case)
    assert outcome == OK, detail


def test_missing_raw_file_gives_invalid_store_error_for_views_and_handles(
    tmp_path: Path, cache_dir: str
) -> None:
    path = tmp_path / "store.h5"
    faults.make_sample(path, cache_dir)
    for raw in path.with_name("store.h5.raw").iterdir():
        raw.unlink()
    with shmstore.open(path, "r", cache=shmstore.Cache(cache_dir)) as store:
        with pytest.raises(InvalidStoreError, match="is missing"):
            store.handle("e")
        with (
            pytest.raises(InvalidStoreError, match="is missing"),
            store.view("e", mode="shared"),
        ):
            pass


def test_store_open_across_a_rename_over_its_file_never_reads_the_new_files_bytes(
    tmp_path: Path, cache_dir: str
) -> None:
    path = tmp_path / "store.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", np.zeros((50, 3)))
    (tmp_path / "new").mkdir()
    with shmstore.open(tmp_path / "new" / "store.h5", "w") as store:
        store.write("pad", np.full((100, 3), 7.0))  # moves "x" to another offset
        store.write("x", np.ones((50, 3)))
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(path, "r", cache=cache) as old:
        os.replace(tmp_path / "new" / "store.h5", path)
        with pytest.raises(InvalidStoreError, match="replaced"), old.view("x", mode="shared"):
            pass
        with pytest.raises(InvalidStoreError, match="replaced"):
            old.memmap("x")
        np.testing.assert_array_equal(old.read("x"), np.zeros((50, 3)))  # its own open file
    with shmstore.open(path, "r", cache=cache) as new, new.view("x", mode="shared") as arr:
        np.testing.assert_array_equal(arr, np.ones((50, 3)))


def test_store_open_across_the_removal_of_its_file_raises_store_not_found(
    tmp_path: Path, cache_dir: str
) -> None:
    path = tmp_path / "store.h5"
    faults.make_sample(path, cache_dir)
    with shmstore.open(path, "r", cache=shmstore.Cache(cache_dir)) as store:
        path.unlink()
        with pytest.raises(StoreNotFoundError, match="removed"), store.view("x", mode="shared"):
            pass
