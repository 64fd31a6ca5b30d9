"""The ``shmstore`` console script, driven in subprocesses as a job script would.

Exit codes: 0 success (also when the goal already held), 1 failure with one
line on stderr, 2 wrong usage.  ``--json`` output must match the Python API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import shmstore
from tests.cli.cli_helpers import SCRIPT, one_line_error, run, run_json


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.h5"
    with shmstore.open(path, "w") as store:
        store.write("activations", np.arange(600, dtype=np.float32).reshape(200, 3))
        store.write("lookup", np.arange(50, dtype="<i8"), compression="gzip")
        store.append("run/spikes", np.ones((7, 2)))
    return path


# -- info, validate ------------------------------------------------------------------


def test_the_console_script_is_installed_and_so_is_python_m() -> None:
    assert SCRIPT.is_file()
    assert run("--version").stdout.startswith("shmstore ")
    assert run("--version", module=True).stdout.startswith("shmstore ")


def test_info_json_matches_the_api(store_file: Path) -> None:
    document = run_json("info", str(store_file))
    with shmstore.open(store_file) as store:
        expected = [store.info(n).model_dump(mode="json") for n in store.names()]
    assert [{k: v for k, v in d.items() if k != "nbytes"} for d in document["datasets"]] == expected
    assert document["manifest"] == {"inferred": False}
    assert document["format_version"] == 2
    assert document["datasets"][0]["nbytes"] == 200 * 3 * 4


def test_info_shows_a_table_of_the_datasets(store_file: Path) -> None:
    out = run("info", str(store_file)).stdout
    assert "metadata format 2 (a record per dataset)" in out
    for figure in ("activations", "200x3", "<f4", "chunked", "gzip", "run/spikes", "appendable"):
        assert figure in out


def test_info_of_a_file_written_by_other_tools_says_the_manifest_is_inferred(
    tmp_path: Path,
) -> None:
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 2))
    assert run_json("info", str(path))["manifest"]["inferred"] is True
    assert "inferred" in run("info", str(path)).stdout


def test_info_of_a_missing_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    assert "no store at" in one_line_error(run("info", str(tmp_path / "absent.h5")))


def test_info_of_a_corrupt_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not an HDF5 file" in one_line_error(run("info", str(path)))


def test_validate_passes_a_good_store(store_file: Path) -> None:
    done = run("validate", str(store_file))
    assert done.returncode == 0
    assert "OK" in done.stdout
    assert run_json("validate", str(store_file)) == {
        "path": str(store_file),
        "valid": True,
        "problems": [],
        "datasets": 3,
        "inferred": False,
        "unverified": [],
    }


def test_validate_reports_a_damaged_record_copy_and_exits_1(store_file: Path) -> None:
    with h5py.File(store_file, "r+") as f:
        f["lookup"].attrs["shmstore_record_backup"] = np.bytes_(b'{"format": "x", "x": 1}')
    done = run("validate", str(store_file), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["valid"]
    assert any("'lookup'" in p and "shmstore_record_backup" in p for p in report["problems"])


def test_validate_reports_a_damaged_record_as_a_refused_dataset(store_file: Path) -> None:
    with h5py.File(store_file, "r+") as f:
        for attr in ("shmstore_record", "shmstore_record_backup"):
            f["lookup"].attrs[attr] = np.bytes_(b"{torn")
    report = json.loads(run("validate", str(store_file), "--json").stdout)
    assert not report["valid"]
    assert any(p.startswith("lookup: ") and "not valid JSON" in p for p in report["problems"])
    info = run_json("info", str(store_file))
    assert [d["name"] for d in info["datasets"]] == ["activations", "run/spikes"]
    assert [r["name"] for r in info["refused"]] == ["lookup"]


def test_info_of_many_datasets_shows_the_first_and_says_how_many_more(tmp_path: Path) -> None:
    path = tmp_path / "many.h5"
    with shmstore.open(path, "w") as store:
        for i in range(120):
            store.write(f"d{i:03d}", np.arange(3))
    out = run("info", str(path)).stdout
    assert "d049" in out
    assert "d050" not in out
    assert "... and 70 more datasets" in out
    assert "d119" in run("info", str(path), "--all").stdout
    assert len(run_json("info", str(path))["datasets"]) == 120


def test_validate_reports_a_truncated_raw_file_and_exits_1(store_file: Path) -> None:
    with shmstore.open(store_file) as store:
        raw = store.source_files("run/spikes")[1]
    os.truncate(raw, 8)
    done = run("validate", str(store_file))
    assert done.returncode == 1
    assert "run/spikes" in done.stdout


def test_validate_of_a_corrupt_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    done = run("validate", str(path))
    assert done.returncode == 1
    assert "problem" in done.stdout


# -- put ----------------------------------------------------------------------------


def test_put_imports_a_npy_file(tmp_path: Path) -> None:
    values = np.arange(40, dtype=">f8").reshape(10, 4)
    np.save(tmp_path / "a.npy", values)
    document = run_json("put", str(tmp_path / "s.h5"), "a", str(tmp_path / "a.npy"))
    assert document["dataset"]["shape"] == [10, 4]
    with shmstore.open(tmp_path / "s.h5") as store:
        np.testing.assert_array_equal(store.read("a"), values)
        assert store.info("a").dtype == np.dtype(">f8")


def test_put_imports_a_raw_file_with_dtype_and_shape_appendable_and_compressed(
    tmp_path: Path,
) -> None:
    values = np.arange(48, dtype="<i4")
    values.tofile(tmp_path / "r.bin")
    target = str(tmp_path / "s.h5")
    raw = str(tmp_path / "r.bin")
    assert (
        run(
            "put", target, "r", raw, "--dtype", "int32", "--shape", "12,4", "--appendable"
        ).returncode
        == 0
    )
    assert (
        run(
            "put", target, "z", raw, "--dtype", "<i4", "--shape", "12,4", "--compression", "gzip"
        ).returncode
        == 0
    )
    with shmstore.open(target, "a") as store:
        store.append("r", np.zeros((1, 4), dtype="<i4"))
        assert store.info("r").shape == (13, 4)
        assert store.info("z").compression == "gzip"
        np.testing.assert_array_equal(store.read("z"), values.reshape(12, 4))


def test_put_of_a_raw_file_without_shape_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(bytes(16))
    message = one_line_error(run("put", str(tmp_path / "s.h5"), "r", str(tmp_path / "r.bin")))
    assert "pass both" in message


def test_put_of_an_existing_name_needs_overwrite(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(3))
    args = ("put", str(tmp_path / "s.h5"), "a", str(tmp_path / "a.npy"))
    assert run(*args).returncode == 0
    assert "overwrite" in one_line_error(run(*args))
    assert run(*args, "--overwrite").returncode == 0


def test_put_with_a_malformed_shape_is_a_usage_error(tmp_path: Path) -> None:
    done = run("put", str(tmp_path / "s.h5"), "a", "x.bin", "--shape", "ten")
    assert done.returncode == 2
    assert "not a shape" in done.stderr


# -- preload, ls, gc, evict ------------------------------------------------------------


def test_preload_loads_once_then_finds_the_slice_there(store_file: Path, cache_dir: Path) -> None:
    first = run_json(
        "preload", str(store_file), "activations", "--rows", "10:-10", cache_dir=cache_dir
    )
    again = run_json(
        "preload", str(store_file), "activations", "--rows", "10:-10", cache_dir=cache_dir
    )
    assert first["loaded"] is True
    assert again["loaded"] is False
    assert first["rows"] == [10, 190]
    assert first["nbytes"] == 180 * 3 * 4
    (entry,) = shmstore.Cache(cache_dir).entries()  # a small dataset: one block
    assert [entry.key] == first["keys"] == again["keys"]
    assert (
        "already"
        in run(
            "preload", str(store_file), "activations", "--rows", "10:-10", cache_dir=cache_dir
        ).stdout
    )


def test_preload_with_rows_outside_the_dataset_is_one_line_and_exit_1(
    store_file: Path, cache_dir: Path
) -> None:
    message = one_line_error(
        run("preload", str(store_file), "activations", "--rows", "5:999", cache_dir=cache_dir)
    )
    assert "outside dataset 'activations'" in message


def test_preload_with_malformed_rows_is_one_line_and_exit_1(
    store_file: Path, cache_dir: Path
) -> None:
    assert "START:STOP" in one_line_error(
        run("preload", str(store_file), "activations", "--rows", "5", cache_dir=cache_dir)
    )


def test_ls_json_matches_the_cache_entries(store_file: Path, cache_dir: Path) -> None:
    run_json("preload", str(store_file), "activations", cache_dir=cache_dir)
    run_json("preload", str(store_file), "lookup", "--rows", ":10", cache_dir=cache_dir)
    listed = run_json("ls", cache_dir=cache_dir)
    cache = shmstore.Cache(cache_dir)
    expected = [e.model_dump(mode="json") for e in cache.entries()]
    assert [
        {k: v for k, v in e.items() if k != "age_seconds"} for e in listed["entries"]
    ] == expected
    assert listed["used"] == sum(e["nbytes"] for e in expected)
    assert listed["budget"] == cache.budget
    assert [(d["dataset"], d["blocks"]) for d in listed["datasets"]] == [
        (e["dataset"], 1) for e in expected
    ]
    out = run("ls", cache_dir=cache_dir).stdout
    assert "2 segments" in out
    assert "activations" in out
    assert "lookup" in out


def test_gc_dry_run_names_a_dead_loaders_file_and_gc_removes_it(cache_dir: Path) -> None:
    shmstore.Cache(cache_dir)  # creates the directory, private
    leftover = cache_dir / f"{'a' * 32}.12345.deadbeef.tmp"
    leftover.write_bytes(bytes(100))
    leftover.chmod(0o600)
    assert run_json("gc", "--dry-run", cache_dir=cache_dir)["removed"] == [leftover.name]
    assert leftover.exists()
    assert run_json("gc", cache_dir=cache_dir)["removed"] == [leftover.name]
    assert not leftover.exists()
    assert "nothing to collect" in run("gc", cache_dir=cache_dir).stdout


def test_evict_all_with_nothing_cached_succeeds_and_says_so(cache_dir: Path) -> None:
    done = run("evict", "--all", cache_dir=cache_dir)
    assert done.returncode == 0
    assert "nothing to evict" in done.stdout


def test_evict_keeps_a_slice_a_process_maps_and_says_why(store_file: Path, cache_dir: Path) -> None:
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(store_file, cache=cache) as store, store.view("activations", mode="shared"):
        (key,) = store.handle("activations").keys
        kept = run_json("evict", key, cache_dir=cache_dir)
        assert kept["evicted"] == []
        assert "in use" in kept["kept"][key]
    assert run_json("evict", "--all", cache_dir=cache_dir)["evicted"] == [key]
    assert cache.entries() == []


def test_evict_without_keys_or_all_is_a_usage_error(cache_dir: Path) -> None:
    assert run("evict", cache_dir=cache_dir).returncode == 2


def test_evict_of_a_malformed_key_is_one_line_and_exit_1(cache_dir: Path) -> None:
    assert "not a cache key" in one_line_error(run("evict", "../etc", cache_dir=cache_dir))


# -- usage, debug ---------------------------------------------------------------------


def test_an_unknown_command_is_a_usage_error() -> None:
    done = run("frobnicate")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = run("--debug", "info", str(tmp_path / "absent.h5"))
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("shmstore: error: ")


# -- demo -----------------------------------------------------------------------------


def test_demo_measures_less_node_memory_with_one_shared_copy() -> None:
    report = run_json("demo", "--workers", "2", "--size", "16M")
    size = report["slice_bytes"]
    assert size == 16 << 20
    assert report["h5py"]["node_bytes"] > 1.8 * size  # two private copies, measured
    assert size <= report["shmstore"]["shared_bytes"] < 1.1 * size
    assert report["shmstore"]["node_bytes"] < 1.2 * size
    assert report["saved_ratio"] > 1.5


def test_demo_cleans_up_when_terminated() -> None:
    def leftovers(pid: int) -> set[str]:
        # Only this demo's: another test session may run a demo meanwhile.
        return {
            p.name
            for base in (Path("/dev/shm"), Path(os.environ.get("TMPDIR", "/tmp")))
            for pattern in (f"shmstore-demo-{pid}-*", f"shmstore-demo-cache-{pid}-*")
            for p in base.glob(pattern)
        }

    process = subprocess.Popen(
        [str(SCRIPT), "demo", "--size", "1G"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    assert "writing a sample store" in process.stderr.readline()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    assert process.returncode != 0
    assert leftovers(process.pid) == set()


def test_ls_marks_named_arrays_and_gc_removes_one_no_process_maps(cache_dir: Path) -> None:
    from shmstore import shared_numpy_store as sns

    cache = shmstore.Cache(cache_dir)
    held, _ = sns.shared_array_from_numpy(np.zeros(4), "held", cache=cache)
    orphan, array = sns.shared_array_empty((4,), "f8", "orphan", cache=cache)
    orphan.close()
    del array
    out = run("ls", cache_dir=cache_dir).stdout
    assert out.count("named, writable") == 2
    dry = run_json("gc", "--dry-run", cache_dir=cache_dir)
    assert dry["removed"] == [f"{orphan.key}.seg"]
    assert "named array no process maps" in dry["kept"][orphan.key]
    assert f"{orphan.key}.seg" in run_json("gc", cache_dir=cache_dir)["removed"]
    assert [e.key for e in cache.entries()] == [held.key]
