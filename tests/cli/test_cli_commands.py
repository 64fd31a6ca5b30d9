"""More of the ``shmstore`` command line, driven in subprocesses: edge cases and failure paths.

``test_cli.py`` holds every command's happy path; this file what a job
script runs into: negative rows, foreign files, damaged chunks, a full
cache, stale slices a process still maps, and interruptions of the demo.
"""

from __future__ import annotations

import gc
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
from tests.cli.cli_helpers import SCRIPT, one_line_error, run, run_json, usage_error


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.h5"
    with shmstore.open(path, "w") as store:
        store.write("activations", np.arange(3000, dtype=np.float32).reshape(1000, 3))
        store.write("lookup", np.arange(50, dtype="<i8"), compression="gzip")
    return path


# -- preload ----------------------------------------------------------------------------


def test_preload_takes_a_negative_start_without_an_equals_sign(
    store_file: Path, cache_dir: Path
) -> None:
    report = run_json(
        "preload", str(store_file), "activations", "--rows", "-100:", cache_dir=cache_dir
    )
    assert report["rows"] == [900, 1000]
    assert report["nbytes"] == 100 * 3 * 4
    (entry,) = shmstore.Cache(cache_dir).entries()  # the block holding them: all 1000 rows
    assert (entry.key, entry.rows, entry.nbytes) == (report["keys"][0], (0, 1000), 1000 * 3 * 4)


def test_preload_of_a_slice_another_process_loaded_says_it_was_there(
    store_file: Path, cache_dir: Path
) -> None:
    cache = shmstore.Cache(cache_dir)
    with (
        shmstore.open(store_file, cache=cache) as store,
        store.view("activations", rows=(0, 500), mode="shared"),
    ):
        pass
    done = run("preload", str(store_file), "activations", "--rows", "0:500", cache_dir=cache_dir)
    assert done.returncode == 0
    assert "already" in done.stdout
    assert "(1 block)" in done.stdout


def test_preload_reports_an_exact_load_against_the_segment_header(
    store_file: Path, cache_dir: Path
) -> None:
    report = run_json("preload", str(store_file), "activations", cache_dir=cache_dir)
    (key,) = report["keys"]
    header = shmstore.Cache(cache_dir).header(key)
    assert report["loaded"] is True
    assert header.creator_pid != os.getpid()  # the subprocess loaded it
    assert (header.source.dataset, header.source.start, header.source.stop) == (
        "activations",
        0,
        1000,
    )


def test_preload_with_a_cache_too_small_is_one_line_and_exit_1(
    store_file: Path, cache_dir: Path
) -> None:
    message = one_line_error(
        run(
            "preload",
            str(store_file),
            "activations",
            cache_dir=cache_dir,
            env={"SHMSTORE_BUDGET": "4K"},
        )
    )
    assert "budget" in message or "room" in message


def test_preload_of_an_unknown_dataset_names_the_ones_there(
    store_file: Path, cache_dir: Path
) -> None:
    message = one_line_error(run("preload", str(store_file), "nope", cache_dir=cache_dir))
    assert "'nope'" in message
    assert "'activations'" in message


def test_preload_of_a_scalar_dataset_is_one_line_and_exit_1(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "scalar.h5"
    with h5py.File(path, "w") as f:
        f["s"] = 3.0
    assert "scalar" in one_line_error(run("preload", str(path), "s", cache_dir=cache_dir))


# -- info and validate on files of other tools ------------------------------------------


def test_info_lists_datasets_shmstore_does_not_serve_apart(tmp_path: Path) -> None:
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 2))
        f["text"] = ["variable", "length"]
    report = run_json("info", str(path))
    with shmstore.open(path) as store:
        expected = store.info("x").model_dump(mode="json")
    assert [{k: v for k, v in d.items() if k != "nbytes"} for d in report["datasets"]] == [expected]
    assert [u["name"] for u in report["unsupported"]] == ["text"]
    assert "variable-length" in report["unsupported"][0]["reason"]
    assert "not served: text" in run("info", str(path)).stdout


def test_validate_does_not_count_an_unsupported_dataset_as_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 2))
        f["text"] = ["variable", "length"]
    done = run("validate", str(path))
    assert done.returncode == 0, done.stdout
    assert "not served" in done.stdout


def test_validate_of_a_missing_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    assert "no store at" in one_line_error(run("validate", str(tmp_path / "absent.h5")))


def _damage_a_middle_chunk(path: Path, name: str) -> None:
    with h5py.File(path, "r") as f:
        dsid = f[name].id
        middle = dsid.get_chunk_info(dsid.get_num_chunks() // 2)
    with open(path, "r+b") as raw:
        raw.seek(middle.byte_offset)
        raw.write(b"\xff" * middle.size)


def test_validate_full_finds_a_damaged_chunk_the_quick_check_misses(tmp_path: Path) -> None:
    path = tmp_path / "chunks.h5"
    with shmstore.open(path, "w") as store:
        store.write("z", np.arange(100_000, dtype="<f8"), chunks=(1000,), compression="gzip")
    _damage_a_middle_chunk(path, "z")
    assert run("validate", str(path)).returncode == 0  # first and last rows read fine
    done = run("validate", str(path), "--full", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["valid"] is False
    assert any(p.startswith("z: ") for p in report["problems"])


# -- put --------------------------------------------------------------------------------


def test_put_with_a_gzip_level_stores_it_as_the_api_reports(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(4000, dtype="<f4").reshape(1000, 4))
    report = run_json(
        "put", str(tmp_path / "s.h5"), "a", str(tmp_path / "a.npy"), "--compression", "gzip:7"
    )
    with shmstore.open(tmp_path / "s.h5") as store:
        info = store.info("a")
    assert {k: v for k, v in report["dataset"].items() if k != "nbytes"} == info.model_dump(
        mode="json"
    )
    assert (info.compression, info.compression_opts) == ("gzip", 7)


def test_put_with_explicit_chunks_and_appendable_keeps_both(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((100, 4)))
    report = run_json(
        "put", str(tmp_path / "s.h5"), "a", str(tmp_path / "a.npy"), "--chunks", "10,4",
        "--appendable",
    )  # fmt: skip
    assert report["dataset"]["chunks"] == [10, 4]
    assert report["dataset"]["appendable"] is True


@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("--chunks", "abc", "not a shape"),
        ("--chunks", "0,4", "at least 1"),
        ("--compression", "gzip:12", "0 to 9"),
        ("--compression", "snappy", "unknown filter"),
        ("--shape", "3,-4", "negative"),
    ],
)
def test_put_with_a_malformed_option_is_a_usage_error(
    tmp_path: Path, option: str, value: str, complaint: str
) -> None:
    np.save(tmp_path / "a.npy", np.ones((10, 4)))
    done = run("put", str(tmp_path / "s.h5"), "a", str(tmp_path / "a.npy"), option, value)
    assert complaint in usage_error(done)


def test_put_of_an_existing_name_says_which_flag_replaces_it(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(3))
    args = ("put", str(tmp_path / "s.h5"), "a", str(tmp_path / "a.npy"))
    assert run(*args).returncode == 0
    assert "--overwrite" in one_line_error(run(*args))


def test_put_of_a_raw_file_of_the_wrong_size_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(bytes(48))
    done = run(
        "put", str(tmp_path / "s.h5"), "r", str(tmp_path / "r.bin"), "--dtype", "f4", "--shape",
        "5,3",
    )  # fmt: skip
    assert "48 bytes" in one_line_error(done)


def test_put_of_a_missing_source_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = run("put", str(tmp_path / "s.h5"), "a", str(tmp_path / "absent.npy"))
    assert "no file at" in one_line_error(done)


# -- gc, evict, ls ----------------------------------------------------------------------


def test_gc_retires_an_old_generation_a_process_maps_and_removes_it_once_unmapped(
    store_file: Path, cache_dir: Path
) -> None:
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(store_file, cache=cache) as store:
        with store.view("activations", mode="shared") as arr:
            held = arr  # still mapped after the block: the block is in use
        (key,) = store.handle("activations").keys
    with shmstore.open(store_file, "a") as store:
        store.write("activations", np.zeros((10, 3), dtype=np.float32), overwrite=True)
    report = run_json("gc", cache_dir=cache_dir)
    assert report["removed"] == [f"{key}.lock"]  # the block's load lock: it loads no more
    assert report["kept_in_use"] == [key]
    assert "old generation" in report["kept"][key]
    assert (cache_dir / f"{key}.stale").exists()
    assert float(held[1, 0]) == 3.0  # untouched
    del held, arr
    gc.collect()  # the last mapping goes: the retired block is garbage now
    assert run_json("gc", cache_dir=cache_dir)["removed"] == [f"{key}.stale"]
    assert cache.entries() == []


def test_gc_keeps_a_block_whose_file_grew_by_an_append_to_another_dataset(
    store_file: Path, cache_dir: Path
) -> None:
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(store_file, cache=cache) as store:
        handle = store.handle("activations")
        handle.pin()
        (key,) = handle.keys
    with shmstore.open(store_file, "a") as store:
        store.append("log", np.ones((5, 2)))  # the HDF5 file grows and changes its mtime
    report = run_json("gc", cache_dir=cache_dir)
    assert key not in report["removed"]
    assert report["kept"][key] == "in use: a process maps it"  # not "its file changed"
    handle.unpin()
    report = run_json("gc", cache_dir=cache_dir)
    assert report["kept"][key].startswith("current")  # its dataset is unchanged
    assert [e.key for e in cache.entries()] == [key]


def test_gc_removes_a_block_whose_file_was_truncated_while_it_was_held(
    store_file: Path, cache_dir: Path
) -> None:
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(store_file, cache=cache) as store:
        handle = store.handle("activations")
        handle.pin()
        (key,) = handle.keys
    os.truncate(store_file, store_file.stat().st_size // 2)  # another program cut the file
    report = run_json("gc", cache_dir=cache_dir)
    assert report["kept"][key].startswith("in use: its file changed")
    handle.unpin()
    gc.collect()
    report = run_json("gc", cache_dir=cache_dir)
    assert f"{key}.seg" in report["removed"]  # its rows can no longer be what the file holds
    assert cache.entries() == []


def test_evict_of_a_key_not_cached_succeeds_and_says_so(cache_dir: Path) -> None:
    key = "0" * 32
    report = run_json("evict", key, cache_dir=cache_dir)
    assert report["evicted"] == []
    assert "not cached" in report["kept"][key]


def test_evict_with_keys_and_all_is_a_usage_error(cache_dir: Path) -> None:
    assert "not both" in usage_error(run("evict", "--all", "0" * 32, cache_dir=cache_dir))


def test_ls_counts_slices_in_use_and_the_budget_of_the_environment(
    store_file: Path, cache_dir: Path
) -> None:
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(store_file, cache=cache) as store:
        with store.view("activations", rows=(0, 10), mode="shared") as arr:
            listed = run_json("ls", cache_dir=cache_dir, env={"SHMSTORE_BUDGET": "1G"})
            assert float(arr[0, 1]) == 1.0
        with store.view("lookup", mode="shared"):
            pass
    del arr  # the last reference: the mapping goes, the slice is no longer in use
    gc.collect()
    assert listed["in_use"] == 1
    assert listed["budget"] == 1 << 30
    assert [e["in_use"] for e in listed["entries"]] == [True]
    out = run("ls", cache_dir=cache_dir).stdout
    assert "(0 in use)" in out
    assert "activations" in out
    assert "lookup" in out


def test_ls_with_an_unusable_cache_directory_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    done = run("ls", "--cache-dir", str(tmp_path / "file"))
    assert "shmstore: error:" in one_line_error(done)


# -- the program as a whole -------------------------------------------------------------


def test_python_m_shmstore_runs_a_command(store_file: Path) -> None:
    done = run("info", str(store_file), module=True)
    assert done.returncode == 0
    assert "activations" in done.stdout


def test_every_command_documents_its_json_keys_in_help() -> None:
    for command in ("info", "ls", "preload", "gc", "evict", "validate", "put", "demo"):
        done = run(command, "--help")
        assert done.returncode == 0
        assert "--json prints one object" in done.stdout, command


def test_a_missing_command_is_a_usage_error() -> None:
    assert "required" in usage_error(run())


def test_debug_after_the_command_is_a_usage_error(store_file: Path) -> None:
    usage_error(run("info", str(store_file), "--debug"))


# -- demo -------------------------------------------------------------------------------


def test_demo_reports_the_workers_baseline_apart() -> None:
    report = run_json("demo", "--workers", "2", "--size", "8M")
    for scenario in ("shmstore", "h5py"):
        figures = report[scenario]
        assert figures["baseline_bytes"] > 2 * (4 << 20)  # two interpreters with numpy
        assert figures["node_bytes"] == figures["private_bytes"] + figures["shared_bytes"]
    assert report["shmstore"]["node_bytes"] < report["h5py"]["node_bytes"]


def test_demo_with_no_workers_is_a_usage_error() -> None:
    assert "at least 1" in usage_error(run("demo", "--workers", "0"))


def test_demo_stops_cleanly_on_ctrl_c_while_its_workers_run(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [str(SCRIPT), "demo", "--workers", "2", "--size", "64M"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "workers map" in line:
            break
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 30
    while len(children.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the workers exist (and the resource tracker, maybe)
    time.sleep(0.3)  # they start up: importing numpy, unpickling the handle
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, (lines, rest)
    assert "Traceback" not in rest  # the workers do not each print one
    assert rest.strip().splitlines()[-1] == "shmstore: interrupted"
    assert list(tmp_path.iterdir()) == []
    # Only this demo's: another test session may run a demo meanwhile.
    assert list(Path("/dev/shm").glob(f"shmstore-demo-cache-{process.pid}-*")) == []


# -- checksums: info, validate, seal ----------------------------------------------------------


@pytest.fixture
def foreign_file(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.arange(1_000.0)
        f.create_dataset("b", data=np.ones((1_000, 4)), chunks=(100, 4), compression="gzip")
    return path


def test_info_says_which_datasets_load_unverified_and_how_to_seal_them(foreign_file: Path) -> None:
    done = run("info", str(foreign_file))
    assert done.returncode == 0
    assert "unverified" in done.stdout
    assert f"shmstore seal {foreign_file}" in done.stdout
    assert all(d["checksums"] is None for d in run_json("info", str(foreign_file))["datasets"])


def test_seal_records_checksums_and_info_then_names_them(foreign_file: Path) -> None:
    sealed = run_json("seal", str(foreign_file))["sealed"]
    assert {(s["name"], s["per"]) for s in sealed} == {("a", "range"), ("b", "chunk")}
    assert {s["name"]: s["count"] for s in sealed} == {"a": 1, "b": 10}
    done = run("info", str(foreign_file))
    assert "crc32c/range" in done.stdout
    assert "crc32c/chunk" in done.stdout
    assert "unverified" not in done.stdout


def test_seal_of_one_name_leaves_the_others_unverified(foreign_file: Path) -> None:
    run_json("seal", str(foreign_file), "b")
    with shmstore.open(foreign_file) as store:
        assert store.info("b").verified
        assert not store.info("a").verified


def test_validate_full_names_a_flipped_byte_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "flipped.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", np.arange(300_000.0).reshape(-1, 3))
    with h5py.File(path, "r") as f:
        offset = f["x"].id.get_offset() + 1_500_000
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
    assert run("validate", str(path)).returncode == 0  # the first and last rows are intact
    done = run("validate", "--full", str(path), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["valid"] is False
    (problem,) = report["problems"]
    assert problem.startswith("x: rows ")
    assert "do not match the checksum" in problem
