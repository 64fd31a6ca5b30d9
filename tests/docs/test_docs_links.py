"""docs/check_links.py, run by the docs tox env after the build, catches a broken internal link."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.docs._pages import DOCS, load_script

SCRIPT = DOCS / "check_links.py"


@pytest.fixture(scope="module")
def check_links() -> ModuleType:
    return load_script("check_links", SCRIPT)


def _site(root: Path, pages: dict[str, str]) -> Path:
    """A built site: each page's body in a minimal HTML document."""
    for name, body in pages.items():
        page = root / name
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"<!doctype html><html><body>{body}</body></html>\n")
    return root


def _run(check_links: ModuleType, root: Path) -> int:
    result: int = check_links.main(["check_links.py", str(root)])
    return result


def test_a_site_whose_links_all_resolve_passes(
    check_links: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="api/ref.html#shmstore.open">open</a><a href="#top">top</a>'
            '<span id="top"></span><img src="_static/logo.png">',
            "api/ref.html": '<dt id="shmstore.open"></dt><a href="../index.html">home</a>',
            "_modules/shmstore/_store.html": (
                '<a href="../../api/ref.html#shmstore.open">[docs]</a>'
            ),
        },
    )
    (site / "_static").mkdir()
    (site / "_static" / "logo.png").write_bytes(b"")
    assert _run(check_links, site) == 0
    assert "5 internal links of 3 pages" in capsys.readouterr().out


def test_a_link_to_a_missing_page_fails_naming_page_and_link(
    check_links: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path, {"index.html": '<a href="api/gone.html">gone</a>'})
    assert _run(check_links, site) == 1
    assert "index.html: api/gone.html (no such file)" in capsys.readouterr().err


def test_a_link_to_a_missing_anchor_fails_naming_it(
    check_links: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(
        tmp_path,
        {
            "_modules/shmstore/_signals.html": (
                '<a href="../../api/ref.html#shmstore.shared_numpy_store.Uninterruptible">'
                "[docs]</a>"
            ),
            "api/ref.html": '<dt id="shmstore.Uninterruptible"></dt>',
        },
    )
    assert _run(check_links, site) == 1
    err = capsys.readouterr().err
    assert "_modules/shmstore/_signals.html: ../../api/ref.html#shmstore.shared_numpy" in err
    assert "no id 'shmstore.shared_numpy_store.Uninterruptible' in api/ref.html" in err


def test_external_links_are_not_checked(check_links: ModuleType, tmp_path: Path) -> None:
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="https://numpy.org/doc/stable/x.html#gone">numpy</a>'
            '<a href="http://example.invalid/">x</a><a href="mailto:someone@example.invalid">m</a>'
            '<img src="data:image/png;base64,AAAA"><a href="//cdn.example.invalid/a.js">cdn</a>'
        },
    )
    assert _run(check_links, site) == 0


@pytest.mark.parametrize(
    "target",
    ['<span id="here"></span>', '<section id="here"></section>', '<a name="here"></a>'],
    ids=["span-id", "section-id", "a-name"],
)
def test_an_anchor_may_be_an_id_on_any_element_or_an_a_name(
    check_links: ModuleType, tmp_path: Path, target: str
) -> None:
    site = _site(tmp_path, {"index.html": '<a href="other.html#here">x</a>', "other.html": target})
    assert _run(check_links, site) == 0


def test_pages_of_static_and_sources_are_not_read(check_links: ModuleType, tmp_path: Path) -> None:
    site = _site(
        tmp_path,
        {
            "index.html": "",
            "_static/page.html": '<a href="gone.html">x</a>',
            "_sources/index.html": '<a href="gone.html">x</a>',
        },
    )
    assert _run(check_links, site) == 0
