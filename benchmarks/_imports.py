"""Item 6: the time of ``import shmstore`` against ``import h5py``, in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
import time

from _common import Results, Row, Settings, median

_CASES = {
    "python -c pass": "pass",
    "import h5py": "import h5py",
    "import shmstore": "import shmstore",
    "import shmstore; shmstore.open (first use)": "import shmstore; shmstore.open",
}


def imports(s: Settings, results: Results) -> None:
    times: dict[str, list[float]] = {label: [] for label in _CASES}
    for _ in range(s.import_repeat):
        for label, code in _CASES.items():  # interleaved: drift hits every case alike
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times[label].append(time.perf_counter() - start)
    m = {label: median(values) for label, values in times.items()}
    bare = m["python -c pass"]
    for label, seconds in m.items():
        results.note("6", f"| {label} | {seconds * 1000:.0f} | {(seconds - bare) * 1000:.0f} |")
    ratio = m["import shmstore"] / m["import h5py"]
    net = (m["import shmstore"] - bare) / max(m["import h5py"] - bare, 1e-9)
    results.note(
        "6",
        f"\nNet of the bare interpreter: {net:.2f}x. Using `shmstore.open` imports h5py, "
        "pydantic and filelock: the last row.",
    )
    results.add(
        Row(
            "6",
            "import shmstore",
            f"{m['import shmstore'] * 1000:.0f} ms",
            f"{m['import h5py'] * 1000:.0f} ms (import h5py)",
            ratio,
            "≤ 1.3x",
            ratio <= 1.3,
        )
    )


IMPORT_HEADER = "| command | median (ms) | net of `python -c pass` (ms) |\n|---|---|---|"
