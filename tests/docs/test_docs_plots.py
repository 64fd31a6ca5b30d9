"""The performance page shows each figure the benchmark draws, and the drawing code works."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.docs._pages import load_script

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
PAGE = ROOT / "docs" / "guide" / "performance.md"
PNG = b"\x89PNG\r\n\x1a\n"


def _benchmark_modules() -> tuple[ModuleType, ModuleType]:
    """benchmarks/_common.py and _plots.py, under names of their own.

    reliability/ has a ``_common`` too, which its tests import by that name:
    the benchmark's is ``_common`` only while ``_plots`` is imported.
    """
    common = load_script("benchmarks_common", BENCHMARKS / "_common.py")
    saved = sys.modules.get("_common")
    sys.modules["_common"] = common
    try:
        plots = load_script("benchmarks_plots", BENCHMARKS / "_plots.py")
    finally:
        if saved is None:
            del sys.modules["_common"]
        else:
            sys.modules["_common"] = saved
    return common, plots


COMMON, PLOTS = _benchmark_modules()


def _size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels, from the IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@pytest.mark.parametrize("name", PLOTS.FILES)
def test_each_figure_is_committed_and_on_the_performance_page(name: str) -> None:
    image = ROOT / "docs" / "_static" / "benchmarks" / name
    assert image.is_file()
    data = image.read_bytes()
    assert data.startswith(PNG)
    assert len(data) < 200_000  # a figure, not a photograph
    assert f"../_static/benchmarks/{name}" in PAGE.read_text()


def _synthetic() -> object:
    """Results with the curves of a full run, as the items record them."""
    curves, results = COMMON.Curves, COMMON.Results()
    sizes = {"1 MiB": (1, 1), "100 MiB": (100, 2), "1 GiB": (1024, 16), "4 GiB": (4096, 64)}
    results.series["1"] = curves(
        "slice size", "time of one attach (µs)", [float(m) for m, _ in sizes.values()]
    )
    results.series["1"].curves = {
        "first handle.view in a fresh process": [61, 105, 385, 1036],
        "handle.view": [20, 49, 206, 774],
        "handle.view while the process maps the rows": [3.1, 4.2, 3.1, 3.1],
        "SharedArray.attach": [7, 10, 10, 14],
    }
    results.series["1"].x_ticks = {float(m): f"{k}\n{b} blocks" for k, (m, b) in sizes.items()}
    threads = [1.0, 2.0, 4.0, 8.0]
    results.series["2"] = curves(
        "threads",
        "GB/s",
        threads,
        {"contiguous, shmstore": [1.9, 2.4, 2.3, 2.2]},
        {"contiguous, SharedArray.create + h5py read_direct": 1.4},
    )
    results.series["3"] = curves(
        "threads",
        "GB/s",
        threads,
        {"gzip+shuffle, shmstore": [0.34, 0.62, 0.6, 0.6]},
        {"gzip+shuffle, h5py read_direct": 0.25},
        marks={"cores of the machine": 2.0},
    )
    results.series["4"] = curves(
        "workers",
        "node memory (GiB)",
        [1.0, 2.0, 4.0, 8.0],
        {"shmstore": [1.0, 1.0, 1.0, 1.0], "h5py": [1.0, 2.0, 4.0, 8.0]},
        {"the slice": 1.0},
    )
    results.series["7"] = curves(
        "datasets",
        "ms",
        [10.0, 100.0, 1000.0, 10000.0],
        {"open and close": [1.5, 1.5, 1.5, 1.52], "h5py: open, read, close": [0.6] * 4},
    )
    return results


def test_the_plots_are_drawn_from_a_run(tmp_path: Path) -> None:
    written = PLOTS.draw(_synthetic(), tmp_path)
    assert sorted(p.name for p in written) == sorted(PLOTS.FILES)
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG)
        width, height = _size(data)
        assert 700 <= width <= 900
        assert 450 <= height <= 600


def test_a_figure_whose_items_did_not_run_is_left_out(tmp_path: Path) -> None:
    results = _synthetic()
    del results.series["4"]  # type: ignore[attr-defined]
    written = PLOTS.draw(results, tmp_path)
    assert "memory.png" not in {p.name for p in written}
    assert len(written) == len(PLOTS.FILES) - 1
