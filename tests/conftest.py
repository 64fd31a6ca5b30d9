"""Fixtures every folder of the suite uses, and the hypothesis profiles.

The suite is in folders by layer (``store/``, ``metadata/``, ``sharing/``,
``cache/``, ``seed/``, ``cli/``, ``dask/``, ``reliability/``, ``docs/``,
``package/``); a fixture only one folder uses is in that folder's
``conftest.py``.  Helper modules used by several folders are here at the
top (``_cache_children``, ``_children_views``, ``dtype_strategies``); the
others live beside their tests.  Every folder is a package, so processes
started with ``spawn`` or ``forkserver`` import a helper by its module name
(``tests.sharing._children_blocks``) as the parent did.

Hypothesis profiles: ``dev`` (the default: 10 examples a test, for the
edit-test loop), ``ci`` (40 examples; tox, and so CI, sets it) and ``deep``
(1,000, for a hunt); pick one with ``HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import shmstore
from shmstore._cache import Cache
from tests._cache_children import SHM

settings.register_profile(
    "dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where a test's store lives; nothing is there yet."""
    return tmp_path / "store.h5"


SampleStore = Callable[..., Path]
"""``sample_store(arrays=None, path=None, **write_options) -> Path`` (see the fixture)."""


@pytest.fixture
def sample_store(store_path: Path) -> SampleStore:
    """A factory writing *arrays* (name -> array) into a new store and returning its path.

    ``sample_store()`` writes one small float dataset ``"x"``;
    ``sample_store({"a": arr}, path=other, chunks=True)`` passes the keyword
    options to every ``Store.write``.  The store is closed again.
    """

    def make(
        arrays: Mapping[str, np.ndarray[Any, Any]] | None = None,
        path: Path | None = None,
        **write_options: Any,
    ) -> Path:
        target = store_path if path is None else path
        if arrays is None:
            arrays = {"x": np.arange(30, dtype="<f8").reshape(10, 3)}
        with shmstore.open(target, "w") as store:
            for name, array in arrays.items():
                store.write(name, array, **write_options)
        return target

    return make


@pytest.fixture(autouse=True, scope="session")
def _private_default_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Point the default cache (``shmstore.Cache()``) at a directory of the test session.

    A test that never names a cache must not leave segments in the user's
    real ``/dev/shm/shmstore-<uid>``.
    """
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path_factory.getbasetemp()
    directory = base / f"shmstore-session-{os.getpid()}"
    previous = os.environ.get("SHMSTORE_DIR")
    os.environ["SHMSTORE_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("SHMSTORE_DIR", None)
    else:
        os.environ["SHMSTORE_DIR"] = previous
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    """A cache directory path on /dev/shm, not yet created; removed after the test."""
    if not SHM.is_dir():
        pytest.skip("needs /dev/shm, the tmpfs shared memory lives on")
    directory = SHM / f"shmstore-cachetest-{uuid.uuid4().hex[:12]}"
    yield directory
    if directory.is_symlink():
        directory.unlink()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cache(cache_dir: Path) -> Cache:
    """A cache in :func:`cache_dir` with a budget of 64 MiB."""
    return Cache(directory=cache_dir, budget="64M")
