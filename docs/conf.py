"""Sphinx configuration of shmstore's documentation site.

Build it with ``python3 -m tox -e docs`` (warnings are errors, every
cross-reference must resolve).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.ext.viewcode import viewcode_anchor

import shmstore

DOCS = Path(__file__).parent

project = "shmstore"
author = "shmstore developers"
copyright = "shmstore developers"
release = version = shmstore.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "examples", "README.md"]

# The Dask page of the reference appears once ``shmstore.dask`` exists.
if importlib.util.find_spec("shmstore.dask") is None:
    exclude_patterns.append("api/dask.rst")

html_theme = "furo"
html_title = f"shmstore {release}"

# The copy button copies commands and code, not the prompts before them: shell
# ``$ ``, Python ``>>> `` and its continuation ``... `` (with prompts, only the
# prompted lines: not the output shown after them).
copybutton_prompt_text = r"\$ |>>> |\.\.\. "
copybutton_prompt_is_regexp = True

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# Signatures show the aliases by name, linked to their entry, not spelled out.
autodoc_type_aliases = {
    "RowsLike": "~shmstore.RowsLike",
    "Mode": "~shmstore.Mode",
    "ViewMode": "~shmstore.ViewMode",
    "ArrayLike": "~numpy.typing.ArrayLike",
    "DTypeLike": "~numpy.typing.DTypeLike",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": True}

nitpicky = True

# Intersphinx reads small inventories committed in docs/_inventories (made by
# docs/_inventories/make.py), so the build needs no network; links still point
# at the public documentation.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(DOCS / "_inventories" / "python.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(DOCS / "_inventories" / "numpy.inv")),
    "h5py": ("https://docs.h5py.org/en/stable/", str(DOCS / "_inventories" / "h5py.inv")),
}
for _project, _url in {
    "pydantic": "https://docs.pydantic.dev/latest/",
    "dask": "https://docs.dask.org/en/stable/",
    "distributed": "https://distributed.dask.org/en/stable/",
}.items():
    intersphinx_mapping[_project] = (_url, str(DOCS / "_inventories" / f"{_project}.inv"))

# The private base of ArrayInfo and DatasetRecord holds their common fields,
# which each model's page lists; "Bases:" names it all the same.
nitpick_ignore: list[tuple[str, str]] = [("py:class", "shmstore.manifest._Stored")]

# Type hints and docstrings name things as the source does: ``np.ndarray``,
# ``da.Array``, ``Store.read`` inside ``shmstore.dask``, or a class by its
# private home (``shmstore._store.Store``).  Point them at the documented names.
_PREFIXES = {"np.": "numpy.", "da.": "dask.array."}
# Names as imported, where autodoc shows a hint as written (a name it could not
# evaluate: imported for type checking only).
_IMPORTED = {
    "ArrayLike": "numpy.typing.ArrayLike",
    "DTypeLike": "numpy.typing.DTypeLike",
    "SupportsIndex": "typing.SupportsIndex",
    "Iterable": "collections.abc.Iterable",
    "Mapping": "collections.abc.Mapping",
    "Sequence": "collections.abc.Sequence",
    "Worker": "distributed.worker.Worker",
}


def _public_name(target):
    """The documented name *target* stands for, or None."""
    if target == "AbstractContextManager":  # what a view returns, named as imported
        return "contextlib.AbstractContextManager"
    if target in _IMPORTED:
        return _IMPORTED[target]
    for prefix, public in _PREFIXES.items():
        if target.startswith(prefix):
            return public + target[len(prefix) :]
    parts = target.split(".")
    if parts[0] == "shmstore" and len(parts) > 2 and parts[1].startswith("_"):
        parts = ["shmstore", *parts[2:]]  # shmstore._store.Store -> shmstore.Store
    elif parts[0] in shmstore.__all__:
        parts = ["shmstore", *parts]  # Store.read -> shmstore.Store.read
    else:
        return None
    if parts[1] not in shmstore.__all__:
        return None
    return ".".join(parts)


def _resolve_public(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = _public_name(node.get("reftarget", "")) or node.get("reftarget", "")
    if target.startswith("numpy.typing."):
        node["reftype"] = "obj"  # numpy documents its aliases as data, not classes
    node["reftarget"] = target
    if target.startswith("shmstore."):
        py = env.domains["py"]
        return py.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
        )
    return None  # an external name: intersphinx, which runs next, resolves it


# How the types of parameters and returns read: ``np.ndarray[Any, Any]`` (any
# shape, any dtype: what mypy wants written) reads as ``numpy.ndarray``, a
# view's ``AbstractContextManager[...]`` as ``contextlib.AbstractContextManager
# [numpy.ndarray]``, ``da.Array`` as ``dask.array.Array``.
_TYPE_TEXT = [
    (
        re.compile(
            r"(?:~?numpy|\bnp)\.(ndarray|dtype)\[(?:~?typing\.)?Any(?:, (?:~?typing\.)?Any)?\]"
        ),
        r"numpy.\1",
    ),
    (re.compile(r"(?:~?numpy|\bnp)\.(ndarray|dtype)\b"), r"numpy.\1"),
    (
        re.compile(r"(?:~?contextlib\.|\b)AbstractContextManager\b"),
        "contextlib.AbstractContextManager",
    ),
    (re.compile(r"\bda\.Array\b"), "dask.array.Array"),
    # An alias of autodoc_type_aliases in a union (``DTypeLike | None``) comes
    # out as the repr of Sphinx's stand-in for it.
    (re.compile(r"TypeAliasForwardRef\('([^']*)'\)"), r"\1"),
]


def _readable_types(app, domain, objtype, contentnode):
    """Rewrite the type fields autodoc made from the hints (after it, before they are linked)."""
    if domain != "py":
        return
    for field in contentnode.findall(nodes.field):
        name = field[0].astext()
        if not (name == "rtype" or name.startswith("type ")):
            continue
        for paragraph in field[1].findall(nodes.paragraph):
            if len(paragraph) != 1 or not isinstance(paragraph[0], nodes.Text):
                continue
            text = str(paragraph[0])
            for pattern, replacement in _TYPE_TEXT:
                text = pattern.sub(replacement, text)
            paragraph[0] = nodes.Text(text)


def _readable_signature_types(app, doctree):
    """In signatures (a property's type), ``numpy.dtype[Any]`` reads as ``numpy.dtype``."""
    for signode in doctree.findall(addnodes.desc_signature):
        for ref in list(signode.findall(addnodes.pending_xref)):
            target = ref.get("reftarget")
            if target not in ("numpy.ndarray", "numpy.dtype"):
                continue
            siblings = ref.parent.children
            start = siblings.index(ref) + 1
            text = ""
            for end in range(start, len(siblings)):
                text += siblings[end].astext()
                if text in ("[Any]", "[Any, Any]"):
                    del siblings[start : end + 1]
                    break
                if not "[Any, Any]".startswith(text):
                    break
            for old in list(ref.findall(nodes.Text)):
                old.parent.replace(old, nodes.Text(target))


def _viewcode_back_anchor(app, doctree):
    """Give each documented object the anchor its "[docs]" link points at.

    viewcode links a source page back to ``<module>.<name>``, with one module
    name per source file: the one under which an object of that file was
    documented first.  This site documents objects of one file under two
    names (``shmstore.ArrayInfo`` and ``shmstore.manifest.DatasetRecord``, both
    of ``shmstore/manifest.py``; ``shmstore.Uninterruptible`` also as
    ``shmstore.shared_numpy_store.Uninterruptible``), so without a second
    anchor some of those links would point at none.
    """
    modules = getattr(app.env, "_viewcode_modules", {})
    for signode in doctree.findall(addnodes.desc_signature):
        for anchor in signode.findall(viewcode_anchor):
            source = anchor["reftarget"].removeprefix("_modules/").replace("/", ".")
            entry = modules.get(source)
            if not entry:  # no source found for the module (False), or none looked at
                continue
            back = f"{entry[3]}.{anchor['refid']}"
            if back not in signode["ids"]:
                signode["ids"].append(back)


def setup(app):
    app.connect("missing-reference", _resolve_public, priority=100)
    # After autodoc's type fields (priority 500), before the fields are linked.
    app.connect("object-description-transform", _readable_types, priority=600)
    app.connect("doctree-read", _readable_signature_types)
    # After viewcode's own doctree-read (priority 500), which adds the anchors.
    app.connect("doctree-read", _viewcode_back_anchor, priority=600)
