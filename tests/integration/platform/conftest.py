"""The package's one running platform: see harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Up


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("platform") / "data").start()
    try:
        yield up
    finally:
        up.stop()
