"""The package's one running platform: see harness.py.

Order: the users' workflows first, the dashboard next, the faults last. Every test leaves the platform
running, but a restart is not free: after one (the power-cut test, the SIGTERM test) the market worker
rebuilds its faust tables from the s3 log, which took minutes under load, and meanwhile signals arrive
stale (at ``--pace 4`` the strategy's 2 h signal age is 0.5 s of wall time), so the kill-switch test
that needs risk decisions timed out when it ran after the fault tests (seen twice, 2026-12-04). Named
in the closing note; the fix is a pace-aware signal age.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Up

_ORDER = ("test_workflows.py", "test_dashboard_live.py", "test_faults.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The package's modules in ``_ORDER`` (other tests keep their places)."""
    mine = [i for i in items if i.path.parent == Path(__file__).parent and i.path.name in _ORDER]
    if not mine:
        return
    ranked = sorted(mine, key=lambda i: _ORDER.index(i.path.name))  # stable: order within a module kept
    slots = iter(ranked)
    items[:] = [next(slots) if i in mine else i for i in items]


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("platform") / "data").start()
    try:
        yield up
    finally:
        up.stop()
