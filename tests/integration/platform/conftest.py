"""The package's one running platform: see harness.py.

Every test leaves the platform running; the tests run in file order (the dashboard, the faults, then the
users' workflows). A restart is not free: after one the market worker rebuilds its faust tables from the
s3 log and the pipeline catches up. Signals stay tradable meanwhile because ``tradeflow up`` sets the
strategy's signal age to a week of market time on the recorded feed (docs/trading_engines.md#time-domains);
before that, at ``--pace 4`` the default 2 h were half a wall second, and the kill-switch test timed out
when it ran after the fault tests.
"""

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
