"""The trading agent's checkpoints saved beside its loop (agents/trading/checkpointer.py), against a real
PostgreSQL: a checkpoint due while another is still being saved is not lost (the idle flush saves it right
behind), one save runs at a time, and a failed save crashes the worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg

from agents.control.signing import Keyring
from agents.trading.checkpointer import CHECKPOINT_IDLE_S, Checkpointer, LiveState
from agents.trading.core import TradingConfig, TradingCore
from storage.trading import load_checkpoint
from tests.builders import bar
from topics.units import NS_PER_HOUR

KEYRING = Keyring({"ops1": b"checkpointer-test-secret-0123456789abcdef"})


def _apply(live: LiveState, cp: Checkpointer, n: int) -> None:
    """``n`` more bars through the core, counted as the agent counts them."""
    for _ in range(n):
        live.core.on_bar(bar(open_time=live.events * NS_PER_HOUR, close=100.0 + live.events))
        live.events += 1
        live.position[("market.bars", 0)] = live.events
        cp.applied()


async def _events_saved(dsn: str) -> int | None:
    conn = await asyncpg.connect(dsn)
    try:
        row = await load_checkpoint(conn, "paper")
    finally:
        await conn.close()
    return None if row is None else row.events_applied


@contextlib.asynccontextmanager
async def _checkpointer(
    dsn: str, flush: Callable[[], Awaitable[None]]
) -> AsyncIterator[tuple[Checkpointer, list[Exception]]]:
    """A paper-execution checkpointer of a fresh core, with the crashes it reports; its connections closed
    after the save in flight."""
    crashes: list[Exception] = []

    async def crash(exc: Exception) -> None:
        crashes.append(exc)

    live = LiveState(TradingCore(TradingConfig(), KEYRING))
    cp = Checkpointer(live, keyring=KEYRING, config_hash="h1", dsn=dsn, every_batch=False, flush=flush, crash=crash)
    try:
        yield cp, crashes
    finally:
        await cp.drain()
        for conn in (cp.db, cp.save_db):
            if conn is not None:
                await conn.close()


async def test_checkpoint_due_while_one_is_saving_then_saved_right_behind_it(dsn: str) -> None:
    release = asyncio.Event()
    flushes = 0

    async def slow_flush() -> None:  # the producer flush of the first save takes until released
        nonlocal flushes
        flushes += 1
        if flushes == 1:
            await release.wait()

    async with _checkpointer(dsn, slow_flush) as (cp, crashes):
        _apply(cp.live, cp, 3)
        async with cp.gate:
            await cp.after_batch()  # the first checkpoint: sealed at 3 inputs, saving beside the loop
        assert cp.saving is not None and not cp.saving.done()
        _apply(cp.live, cp, 2)
        cp.last_checkpoint = 0.0  # the next is due at once, while the first still saves
        async with cp.gate:
            await cp.after_batch()
        assert cp.unsaved == 2  # left for later: one save at a time
        await asyncio.sleep(CHECKPOINT_IDLE_S * 4)
        assert await _events_saved(dsn) is None  # the first is still held in its flush
        release.set()
        for _ in range(100):  # the input stopped: the idle flush saves the last two right behind the first
            if await _events_saved(dsn) == 5:
                break
            await asyncio.sleep(0.05)
        assert await _events_saved(dsn) == 5 and cp.unsaved == 0 and flushes == 2
        assert not crashes


async def test_failed_save_beside_the_loop_then_the_worker_crashes(dsn: str) -> None:
    async def broken_flush() -> None:
        raise RuntimeError("a delivery failed")

    async with _checkpointer(dsn, broken_flush) as (cp, crashes):
        _apply(cp.live, cp, 1)
        async with cp.gate:
            await cp.after_batch()
        await cp.drain()
        assert [str(e) for e in crashes] == ["a delivery failed"]
        assert await _events_saved(dsn) is None  # nothing saved that covers an output not delivered
