"""Fixtures of the crash, soak and fault-injection tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _shmstore_log_level_restored() -> Iterator[None]:
    """Give the ``shmstore`` logger its level back after each test.

    The cases of ``reliability/`` that these tests run in this process quiet
    the logger (their runs report recoveries themselves); left so, the
    warnings that tests of other folders look for would never be logged.
    """
    logger = logging.getLogger("shmstore")
    level = logger.level
    yield
    logger.setLevel(level)
