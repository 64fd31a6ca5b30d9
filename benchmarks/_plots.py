"""The performance page's four figures, drawn with matplotlib from the curves of one run.

Each figure draws the :class:`_common.Curves` of one or two items; a figure
whose items did not run (``--only``, or a failure) is left out.  matplotlib
(the ``bench`` extra) is imported only when a figure is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import Curves, Results

DOCS = Path(__file__).resolve().parents[1] / "docs" / "_static" / "benchmarks"
"""Where ``run.py --write-results`` puts the figures the performance page shows."""


@dataclass(frozen=True)
class Figure:
    items: tuple[str, ...]
    title: str
    log_x: bool = False
    log_y: bool = False
    x_base: int = 10


FIGURES: dict[str, Figure] = {
    "attach.png": Figure(
        ("1",), "Attaching to a cached slice: time against slice size", True, True
    ),
    "memory.png": Figure(("4",), "Node memory for N workers using one slice"),
    "threads.png": Figure(("2", "3"), "Cold load against threads", True, x_base=2),
    "metadata.png": Figure(
        ("7",), "Cost of one-dataset operations against the number of datasets", True
    ),
}
FILES = tuple(FIGURES)

_BASELINES = ("h5py", "SharedArray")  # drawn dashed; shmstore's own curves solid


def _group(label: str) -> str:
    """Curves of one group share a colour: "gzip+shuffle, shmstore" and "gzip+shuffle, h5py"."""
    return label.split(", ", maxsplit=1)[0]


def _plain(value: float, _: object) -> str:
    return f"{value:g}"


def _draw(plt: Any, ticker: Any, figure: Figure, parts: list[Curves], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    colours: dict[str, Any] = {}
    palette = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3)

    def colour(label: str) -> Any:
        return colours.setdefault(_group(label), next(palette))

    for curves in parts:
        for label, ys in curves.curves.items():
            dashed = label.startswith(_BASELINES)
            ax.plot(
                curves.x,
                ys,
                "--" if dashed else "-",
                marker="s" if dashed else "o",
                color=colour(label),
                label=label,
            )
        for label, y in curves.references.items():
            ax.axhline(y, linestyle=":", linewidth=2, color=colour(label), label=label, zorder=1)
        for label, x in curves.marks.items():
            ax.axvline(x, linestyle="-.", linewidth=1, color="grey", label=f"{label} ({x:g})")
    first = parts[0]
    ax.set_title(figure.title)
    ax.set_xlabel(first.x_label)
    ax.set_ylabel(first.y_label)
    if figure.log_x:
        ax.set_xscale("log", base=figure.x_base)
    if figure.log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
    else:
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.05)
    ticks = first.x_ticks or {x: f"{x:g}" for x in first.x}
    ax.set_xticks(list(ticks), list(ticks.values()))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.grid(True, which="major", alpha=0.3)
    # Below the axes: inside, it would cover a curve in one figure or another.
    fig.legend(loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    # No "Software" entry: a rerun with the same figures writes the same bytes.
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def draw(results: Results, directory: Path) -> list[Path]:
    """Write each figure whose items ran into *directory*; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in FIGURES.items():
        parts = [results.series[item] for item in figure.items if item in results.series]
        if not parts:
            continue
        path = directory / name
        _draw(plt, ticker, figure, parts, path)
        written.append(path)
    return written
