"""runtime.faust_adapter against a stand-in for faust's consumer: the hook runs
after faust's own seek, each hook once per consumer, and a seek past faust's commit
bookkeeping moves it along (never back)."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime import faust_adapter


class _Consumer:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._committed_offset: dict[str, int] = {"a": 10}

    async def perform_seek(self) -> None:
        self.calls.append("faust")

    async def seek(self, tp: str, offset: int) -> None:
        self.calls.append((tp, offset))


def test_hook_installed_twice_then_runs_once_after_fausts_seek() -> None:
    consumer = _Consumer()

    async def hook(c: Any) -> None:
        c.calls.append("hook")

    faust_adapter.after_every_seek(consumer, hook)
    faust_adapter.after_every_seek(consumer, hook)
    asyncio.run(consumer.perform_seek())
    assert consumer.calls == ["faust", "hook"]


def test_two_agents_hooks_on_one_consumer_then_both_run_in_order_each_once() -> None:
    consumer = _Consumer()

    class Agent:
        def __init__(self, name: str) -> None:
            self.name = name

        async def hook(self, c: Any) -> None:
            c.calls.append(self.name)

    trading, dashboard = Agent("trading"), Agent("dashboard")
    for _ in range(2):  # every assignment adds them again: bound methods compare equal
        faust_adapter.after_every_seek(consumer, trading.hook)
        faust_adapter.after_every_seek(consumer, dashboard.hook)
    asyncio.run(consumer.perform_seek())
    assert consumer.calls == ["faust", "trading", "dashboard"]


def test_seek_past_or_before_the_commit_then_bookkeeping_only_moves_forward() -> None:
    consumer = _Consumer()

    async def seeks() -> None:
        await faust_adapter.seek(consumer, "a", 4)
        await faust_adapter.seek(consumer, "b", 7)
        await faust_adapter.seek(consumer, "a", 12)

    asyncio.run(seeks())
    assert consumer.calls == [("a", 4), ("b", 7), ("a", 12)]
    assert consumer._committed_offset == {"a": 12, "b": 7}
