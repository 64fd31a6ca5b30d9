"""The guarantees page of the guide names tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guide" / "guarantees.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_every_test_the_guarantees_page_names_exists() -> None:
    references = REFERENCE.findall(PAGE.read_text())
    assert len(references) >= 9
    missing = [
        f"{file}::{name}"
        for file, name in references
        if not (ROOT / file).is_file() or name not in _test_functions(ROOT / file)
    ]
    assert missing == []


def test_the_guarantees_page_proves_each_of_the_ten_invariants() -> None:
    headings = re.findall(r"^## (\d+)\. ", PAGE.read_text(), flags=re.MULTILINE)
    assert headings == [str(n) for n in range(1, 11)]
