"""Dataset names: what a name may be, and the root groups shmstore keeps for itself.

A dataset is named by its path inside the file, groups separated by ``/``
(``"grp/sub/ds"``).  Two root groups are shmstore's own and hold no dataset
a user can name: the trash (``.shmstore_tmp``, see ``_trash``) and the
datasets' checksums (``_sums``).
"""

from __future__ import annotations

import re

from ._sums import SUMS_GROUP
from .errors import ArgumentError

__all__ = ["RESERVED", "TMP_GROUP", "check_name", "is_reserved"]

TMP_GROUP = ".shmstore_tmp"
"""The trash: what a change replaced or deleted, until it is freed."""
RESERVED = (TMP_GROUP, SUMS_GROUP)
"""Root groups of shmstore's own: the trash, and the datasets' checksums."""
_NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")


def is_reserved(name: str) -> bool:
    """True for shmstore's own groups (trash, checksums) and what lies in them."""
    return name.split("/", 1)[0] in RESERVED


def check_name(name: object) -> str:
    """The dataset path *name*, checked to stay a plain path inside the file.

    :raises ArgumentError: not a str, empty, absolute, an empty, ``.`` or ``..``
        component, characters other than letters, digits, ``_ . -`` and ``/``,
        or shmstore's own scratch group.
    """
    if not isinstance(name, str):
        raise ArgumentError(f"a dataset name must be a str, got {type(name).__name__} {name!r}")
    problem = None
    if not name:
        problem = "it is empty"
    elif name.startswith("/"):
        problem = "it is absolute; give the path without the leading '/'"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "it has an empty, '.' or '..' component"
    elif not all(_NAME_PART.match(part) for part in name.split("/")):
        problem = "only letters, digits and _ . - are allowed, with / between groups"
    elif name.split("/")[0] in RESERVED:
        problem = f"{name.split('/')[0]!r} is reserved for shmstore's own use"
    if problem:
        raise ArgumentError(f"invalid dataset name {name!r}: {problem}")
    return name
