"""What the documentation's pages show: example files, their printed output, code blocks.

Shared by the tests of ``tests/docs``.  An example is a script in
``docs/examples/`` that a page shows whole; beside it, ``NAME.out`` holds what
it prints, which the page shows too.  In ``NAME.out``, ``...`` inside a line
stands for any text (a time, a path) and a line that is only ``...`` for any
number of lines, as in doctest's ELLIPSIS.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES_DIR = DOCS / "examples"
PAGES = sorted(p for p in DOCS.glob("**/*.md") if "_build" not in p.parts)
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))

_FENCE = re.compile(r"^(`{3,})\{?(\w[\w-]*)\}?[ \t]*(.*)$")
_NOT_RUN = re.compile(r"^%\s*not run:\s*(\S.*)$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a page: its language, options, body and where it starts."""

    page: Path
    line: int
    language: str
    argument: str
    body: str
    not_run_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"


def code_blocks(page: Path) -> list[CodeBlock]:
    """The fenced blocks of *page* (MyST markdown), directives included.

    A block right after a comment line ``% not run: REASON`` carries that reason.
    """
    blocks = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        fence, language, argument = match.groups()
        start = index
        body = []
        index += 1
        while index < len(lines) and lines[index].rstrip() != fence:
            body.append(lines[index])
            index += 1
        previous = lines[start - 1] if start else ""
        reason = _NOT_RUN.match(previous)
        blocks.append(
            CodeBlock(
                page,
                start + 1,
                language,
                argument.strip(),
                "\n".join(body) + "\n",
                reason.group(1) if reason else None,
            )
        )
        index += 1
    return blocks


def included_examples(page: Path) -> list[tuple[Path, list[str]]]:
    """Each ``docs/examples`` file *page* includes, with the options of its directive."""
    found = []
    for block in code_blocks(page):
        if block.language != "literalinclude":
            continue
        target = (page.parent / block.argument).resolve()
        if target.parent == EXAMPLES_DIR:
            options = [line for line in block.body.splitlines() if line.startswith(":")]
            found.append((target, options))
    return found


def output_pattern(expected: str) -> re.Pattern[str]:
    """A regular expression for printed text that *expected* (with ``...``) describes."""
    parts = []
    for line in expected.rstrip("\n").splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            pieces = [re.escape(piece) for piece in line.rstrip().split("...")]
            parts.append("[^\n]*".join(pieces) + r"[ \t]*\n")
    return re.compile("".join(parts))


def matches(expected: str, printed: str) -> bool:
    """Whether *printed* is what *expected* describes (trailing spaces ignored)."""
    text = "".join(line.rstrip() + "\n" for line in printed.splitlines())
    return output_pattern(expected).fullmatch(text) is not None


def load_script(name: str, path: Path) -> ModuleType:
    """The script at *path* (not a package module) imported as module *name*.

    It is registered in ``sys.modules`` under *name*, as dataclasses defined
    in it look their module up there.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
