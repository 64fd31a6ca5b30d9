"""Fail when a page of the built site links to a file or an anchor that does not exist.

Run after the HTML build (the docs tox env does)::

    python docs/check_links.py docs/_build/html

Every ``*.html`` under the directory is read (the source-code pages of
``_modules/`` too; not ``_static/`` and ``_sources/``, which hold copies and
assets, not pages).  Each internal ``href`` (of any element) and ``src`` of an
``img`` or ``script`` must name a file that exists and, when it has a
``#fragment``, a page with an element of that ``id`` (or an ``<a name=...>``).
Links with a scheme (``https:``, ``mailto:``, ``data:``...) or to another host
(``//host/...``) are not checked.  Exits 1 listing each broken link as
``page: href (why)``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Directories of copies and assets: their files are link targets, not pages to read.
SKIPPED = ("_static", "_sources")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class _Page(HTMLParser):
    """The anchors a page defines and the internal links it makes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value for name, value in attrs if value is not None}
        if "id" in values:
            self.anchors.add(values["id"])
        if tag == "a" and "name" in values:
            self.anchors.add(values["name"])
        if "href" in values:
            self.links.append(values["href"])
        if tag in ("img", "script") and "src" in values:
            self.links.append(values["src"])

    handle_startendtag = handle_starttag


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser


def is_external(link: str) -> bool:
    """True for a link with a scheme (``https:``, ``mailto:``, ``data:``...) or a host."""
    return bool(_SCHEME.match(link)) or link.startswith("//")


def pages(root: Path) -> list[Path]:
    """The HTML pages under *root* to check, sorted."""
    return sorted(
        page
        for page in root.rglob("*.html")
        if not any(part in SKIPPED for part in page.relative_to(root).parts[:-1])
    )


def broken_links(root: Path) -> tuple[list[str], int, int]:
    """Each broken internal link as ``page: href (why)``, links checked, pages read."""
    root = root.resolve()
    parsed: dict[Path, _Page] = {}

    def parse(page: Path) -> _Page:
        if page not in parsed:
            parsed[page] = _parse(page)
        return parsed[page]

    broken = []
    checked = 0
    read = pages(root)
    for page in read:
        for link in parse(page).links:
            if is_external(link):
                continue
            checked += 1
            why = _why_broken(root, page, link, lambda target: parse(target).anchors)
            if why is not None:
                broken.append(f"{page.relative_to(root).as_posix()}: {link} ({why})")
    return broken, checked, len(read)


def _why_broken(
    root: Path, page: Path, link: str, anchors: Callable[[Path], set[str]]
) -> str | None:
    """Why *link* of *page* leads nowhere, or None when it leads somewhere."""
    parts = urlsplit(link)
    path = unquote(parts.path)
    if not path:
        target = page
    elif path.startswith("/"):
        target = root / path.lstrip("/")
    else:
        target = page.parent / path
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return "no such file"
    fragment = unquote(parts.fragment)
    if not fragment or target.suffix != ".html":
        return None
    target = target.resolve()
    if fragment not in anchors(target):
        return f"no id {fragment!r} in {target.relative_to(root).as_posix()}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[1]).is_dir():
        print(f"usage: {argv[0]} HTML_DIR", file=sys.stderr)
        return 2
    root = Path(argv[1]).resolve()
    broken, checked, read = broken_links(root)
    if broken:
        print(f"broken internal links ({len(broken)}):", file=sys.stderr)
        for line in broken:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"all {checked} internal links of {read} pages resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
