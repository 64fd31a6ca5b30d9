"""The guarantees page states ten invariants; the design page names tests of each; they exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUARANTEES = ROOT / "docs" / "guide" / "guarantees.md"
DESIGN = ROOT / "docs" / "design.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
PAGES = sorted((ROOT / "docs").glob("**/*.md"))


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_a_page_names_exists(page: Path) -> None:
    missing = [
        f"{file}::{name}"
        for file, name in REFERENCE.findall(page.read_text())
        if not (ROOT / file).is_file() or name not in _test_functions(ROOT / file)
    ]
    assert missing == []


def test_the_guarantees_page_states_the_ten_invariants() -> None:
    headings = re.findall(r"^## (\d+)\. ", GUARANTEES.read_text(), flags=re.MULTILINE)
    assert headings == [str(n) for n in range(1, 11)]


def test_the_design_page_names_tests_for_each_of_the_ten_invariants() -> None:
    section = DESIGN.read_text().split("\n## Invariants\n", 1)[1]
    parts = re.split(r"^### (\d+)\. .*$", section, flags=re.MULTILINE)
    numbers = parts[1::2]
    assert numbers == [str(n) for n in range(1, 11)]
    for number, body in zip(numbers, parts[2::2], strict=True):
        assert REFERENCE.search(body), f"invariant {number} names no test"
