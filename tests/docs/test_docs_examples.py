"""Every example the documentation shows runs as shown and prints what the page says.

An example is a script a user could paste: ``docs/examples/NAME.py``, shown
whole on a page, with what it prints in ``NAME.out`` beside it (shown on the
page too).  Each runs here in a fresh interpreter, in an empty working
directory and with its own cache directory, and its output must match
``NAME.out``.  Python blocks written on a page run too, each alone as a
script; a block that cannot run here (it needs a SLURM cluster) says why on
the line before it (``% not run: ...``) and must still compile.  An example
that imports a package this environment lacks (``distributed`` without the
``dask`` extra) is skipped, naming the package.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs._pages import (
    EXAMPLES,
    PAGES,
    CodeBlock,
    code_blocks,
    included_examples,
    matches,
)

WITH_WORKERS = {"dask_from_store", "dask_handles", "dask_preload", "sharing_workers"}
"""Examples that start a Dask cluster or worker processes: marked slow, as what they
show is also tested quickly in tests/dask/ and tests/sharing/."""

PYTHON_BLOCKS = [
    block for page in PAGES for block in code_blocks(page) if block.language == "python"
]
PARTIAL_OPTIONS = (":start-at:", ":start-after:", ":end-at:", ":end-before:", ":lines:")


@pytest.fixture
def cache_directory(tmp_path: Path) -> Iterator[Path]:
    """A new cache directory on /dev/shm (tmpfs, as on a node), else under tmp_path."""
    if Path("/dev/shm").is_dir():
        directory = Path(tempfile.mkdtemp(prefix="shmstore-docs-", dir="/dev/shm"))
    else:
        directory = tmp_path / "cache"
        directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _missing_imports(source: str) -> list[str]:
    """Top-level packages *source* imports that cannot be found here."""
    packages = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return sorted(name for name in packages if importlib.util.find_spec(name) is None)


def _run(script: Path, workdir: Path, cache_directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env={**os.environ, "SHMSTORE_DIR": str(cache_directory)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_guide_has_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(
            path, id=path.stem, marks=[pytest.mark.slow] if path.stem in WITH_WORKERS else []
        )
        for path in EXAMPLES
    ],
)
def test_example_prints_what_its_page_shows(
    example: Path, tmp_path: Path, cache_directory: Path
) -> None:
    missing = _missing_imports(example.read_text())
    if missing:
        pytest.skip(f"{example.name} needs {', '.join(missing)}, not installed here")
    result = _run(example, tmp_path, cache_directory)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = example.with_suffix(".out").read_text()
    diff = "\n".join(
        difflib.unified_diff(
            expected.splitlines(), result.stdout.splitlines(), "expected", "printed", lineterm=""
        )
    )
    assert matches(expected, result.stdout), f"{example.name} printed otherwise:\n{diff}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_has_what_it_prints_beside_it(example: Path) -> None:
    assert example.with_suffix(".out").is_file(), f"{example.stem}.out is missing"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_is_shown_whole_with_what_it_prints(example: Path) -> None:
    shown = {path: options for page in PAGES for path, options in included_examples(page)}
    assert example in shown, f"no page shows {example.name}"
    partial = [o for o in shown[example] if o.startswith(PARTIAL_OPTIONS)]
    assert not partial, f"{example.name} is shown in part ({partial}): show it whole"
    assert example.with_suffix(".out") in shown, f"no page shows {example.stem}.out"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_hold_no_test_scaffolding(example: Path) -> None:
    tree = ast.parse(example.read_text())
    scaffolding = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            scaffolding.append(f"assert on line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr in {"testing", "argv"}:
            scaffolding.append(f".{node.attr} on line {node.lineno}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if "tempfile" in modules or "pytest" in modules:
                scaffolding.append(f"import of {modules} on line {node.lineno}")
    assert not scaffolding, f"{example.name}: {scaffolding}"


@pytest.mark.parametrize(
    "block", [b for b in PYTHON_BLOCKS if b.not_run_reason is None], ids=lambda b: b.id
)
def test_python_block_on_a_page_runs_as_shown(
    block: CodeBlock, tmp_path: Path, cache_directory: Path
) -> None:
    missing = _missing_imports(block.body)
    if missing:
        pytest.skip(f"{block.id} needs {', '.join(missing)}, not installed here")
    script = tmp_path / "block.py"
    script.write_text(block.body)
    result = _run(script, tmp_path, cache_directory)
    assert result.returncode == 0, f"{block.id}:\n{block.body}\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "block", [b for b in PYTHON_BLOCKS if b.not_run_reason is not None], ids=lambda b: b.id
)
def test_a_python_block_not_run_compiles(block: CodeBlock) -> None:
    compile(block.body, block.id, "exec")


def test_a_dotted_part_of_a_line_matches_any_text() -> None:
    assert matches("loaded in ... s\n", "loaded in 0.25 s\n")


def test_a_line_of_dots_matches_any_number_of_lines() -> None:
    assert matches("first\n...\nlast\n", "first\na\nb\nlast\n")
    assert matches("first\n...\nlast\n", "first\nlast\n")


def test_a_changed_or_missing_line_does_not_match() -> None:
    assert not matches("sum: 10\n", "sum: 11\n")
    assert not matches("a\nb\n", "a\n")
    assert not matches("a\n", "a\nb\n")
