"""Paginated, resumable OHLCV history download through ccxt's ``fetch_ohlcv``.

One call downloads one (exchange, symbol, timeframe) range ``[start, end)`` page by page,
publishing each page as Bars before asking for the next. Candles are published in strictly
increasing open time (repeats dropped); after each page the last *closed* candle's open time
is checkpointed, so a restart resumes after it and the forming candle is fetched again.
Retriable failures back off with seeded jitter for a bounded number of attempts, then raise
:class:`RetriesExhausted`; fatal ones raise :class:`FatalExchangeError` at once. Delivery is
at-least-once: a crash between a page and its checkpoint republishes that page with the same
event ids.

Design: docs/market_data.md#history-download
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from agents.market.ccxt_parse import (
    ExchangeDataError,
    candle_is_closed,
    ccxt_ohlcv_to_bar,
)
from agents.market.exchanges import (
    BackoffPolicy,
    CheckpointStore,
    FatalExchangeError,
    OhlcvSource,
    Publisher,
    RetriesExhausted,
    classify_error,
)
from agents.market.live import CollectorMetrics, default_collector_metrics
from topics.records import Bar, Timeframe
from topics.schema import ErrorReason
from topics.units import NS_PER_MS

__all__ = [
    "HISTORY_SOURCE",
    "HistoryReport",
    "RejectHandler",
    "download_history",
    "history_checkpoint_key",
]

log = structlog.get_logger(__name__)

#: ``Bar.source`` of downloaded bars.
HISTORY_SOURCE = "ccxt_rest"

#: Called with each row that could not become a Bar (dead-letter it).
RejectHandler = Callable[[ExchangeDataError], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryReport:
    """What one download did. ``None`` times mean nothing was published."""

    venue: str
    symbol: str
    timeframe: Timeframe
    checkpoint_key: str
    start_ns: int
    end_ns: int
    #: The checkpoint the download resumed after, or None for a fresh start.
    resumed_after_ns: int | None
    requests: int
    retries: int
    pages_published: int
    bars_published: int
    forming_bars: int
    duplicates_dropped: int
    rejected_rows: int
    first_open_ns: int | None
    last_open_ns: int | None
    checkpoint_ns: int | None


def history_checkpoint_key(venue: str, symbol: str, timeframe: Timeframe, start_ns: int) -> str:
    """Checkpoint key of a download. Includes the start: progress of a range
    that began at ``start`` says nothing about an earlier range."""
    return f"ohlcv:{venue}:{symbol}:{timeframe.value}:{start_ns}"


async def _default_reject(error: ExchangeDataError) -> None:
    log.warning("history.row_rejected", reason=error.reason.value, detail=error.detail, raw=repr(error.raw)[:300])


async def download_history(
    exchange: OhlcvSource,
    symbol: str,
    timeframe: Timeframe | str,
    start_ns: int,
    end_ns: int,
    publisher: Publisher,
    checkpoints: CheckpointStore,
    *,
    wall_clock: Callable[[], int],
    page_limit: int = 1000,
    retry: BackoffPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    venue: str | None = None,
    checkpoint_key: str | None = None,
    settle_ms: int = 5_000,
    on_reject: RejectHandler | None = None,
    metrics: CollectorMetrics | None = None,
) -> HistoryReport:
    """Download ``[start_ns, end_ns)`` of ``symbol`` candles and publish them as Bars.

    ``wall_clock`` (ns) stamps ``ts_init`` and decides whether the newest
    candle is still forming; ``sleep`` and ``rng`` are injectable so tests
    run instantly and deterministically (the default RNG is seeded from the
    checkpoint key). ``page_limit`` is passed to ccxt, which caps it to the
    venue's maximum. Raises :class:`FatalExchangeError`,
    :class:`RetriesExhausted`, or whatever the publisher or checkpoint store
    raise (a lost broker must stop the download loudly).

    Every ``fetch_ohlcv`` attempt is counted in ``market_collector_calls_total``
    (stream ``history``, transport ``rest``) like the live collector's calls, so
    one connector-success alert covers both.
    """
    tf = Timeframe(timeframe)
    if end_ns <= start_ns:
        raise ValueError(f"empty range: start_ns={start_ns} >= end_ns={end_ns}")
    if page_limit < 1:
        raise ValueError("page_limit must be >= 1")
    venue = venue or exchange.id
    key = checkpoint_key or history_checkpoint_key(venue, symbol, tf, start_ns)
    policy = retry or BackoffPolicy()
    rng = rng or random.Random(key)
    reject = on_reject or _default_reject
    calls = (metrics or default_collector_metrics()).calls

    def count_call(outcome: str, reason: str) -> None:
        calls.labels(venue, "history", "rest", outcome, reason).inc()

    saved = await checkpoints.load(key)
    resumed_after = saved if saved is not None and saved >= start_ns else None
    # Candles open on millisecond boundaries: the first one we want opens at
    # or after start (ceil), the last one strictly before end.
    cursor_ms = -(-start_ns // NS_PER_MS)
    end_ms = -(-end_ns // NS_PER_MS)
    last_open_ms: int | None = None
    if resumed_after is not None:
        last_open_ms = resumed_after // NS_PER_MS
        cursor_ms = last_open_ms + 1
    newest_open_ms = last_open_ms or 0

    requests = retries = pages = published = forming = duplicates = rejected = 0
    first_open_ns: int | None = None
    last_published_ns: int | None = None
    checkpoint_ns = resumed_after
    log.info("history.start", venue=venue, symbol=symbol, timeframe=tf.value, key=key, resumed_after_ns=resumed_after)

    checkpoint_frozen = False
    while cursor_ms < end_ms:
        rows, attempts = await _fetch_page(exchange, symbol, tf, cursor_ms, page_limit, policy, rng, sleep, count_call)
        requests += attempts
        retries += attempts - 1
        if not rows:
            break
        dated: list[tuple[int, Sequence[Any]]] = []
        for row in rows:
            open_ms = _row_open_ms(row)
            if open_ms is None:
                rejected += 1
                await reject(ExchangeDataError(ErrorReason.WRONG_TYPE, "OHLCV row has no integer open time", row))
            else:
                dated.append((open_ms, row))
        dated.sort(key=lambda item: item[0])  # ccxt sorts; other sources may not
        fresh: list[tuple[int, Sequence[Any]]] = []
        for open_ms, dated_row in dated:
            newest_open_ms = max(newest_open_ms, open_ms)
            if open_ms >= end_ms:
                continue
            if open_ms < cursor_ms or (last_open_ms is not None and open_ms <= last_open_ms):
                duplicates += 1
                continue
            fresh.append((open_ms, dated_row))
            last_open_ms = open_ms
        if not fresh:
            break

        now_ns = wall_clock()
        bars: list[Bar] = []
        closed_through_ms: int | None = None
        for open_ms, candle in fresh:
            is_closed = candle_is_closed(open_ms, tf, newest_open_ms, now_ns // NS_PER_MS, settle_ms)
            try:
                bar = ccxt_ohlcv_to_bar(candle, venue, symbol, tf, now_ns, is_closed, HISTORY_SOURCE)
            except ExchangeDataError as exc:
                rejected += 1
                await reject(exc)
                continue
            bars.append(bar)
            if not is_closed:
                forming += 1
                # Never checkpoint past a bar published as forming: the next
                # run must fetch it again and publish its closed revision.
                checkpoint_frozen = True
            elif not checkpoint_frozen:
                closed_through_ms = open_ms
        if bars:
            await publisher.publish(bars)
            pages += 1
            published += len(bars)
            if first_open_ns is None:
                first_open_ns = bars[0].open_time
            last_published_ns = bars[-1].open_time
        if closed_through_ms is not None:
            checkpoint_ns = closed_through_ms * NS_PER_MS
            await checkpoints.save(key, checkpoint_ns)
        cursor_ms = fresh[-1][0] + 1

    report = HistoryReport(
        venue=venue,
        symbol=symbol,
        timeframe=tf,
        checkpoint_key=key,
        start_ns=start_ns,
        end_ns=end_ns,
        resumed_after_ns=resumed_after,
        requests=requests,
        retries=retries,
        pages_published=pages,
        bars_published=published,
        forming_bars=forming,
        duplicates_dropped=duplicates,
        rejected_rows=rejected,
        first_open_ns=first_open_ns,
        last_open_ns=last_published_ns,
        checkpoint_ns=checkpoint_ns,
    )
    log.info(
        "history.done",
        key=key,
        bars=published,
        forming=forming,
        duplicates=duplicates,
        rejected=rejected,
        requests=requests,
        retries=retries,
    )
    return report


def _row_open_ms(row: Any) -> int | None:
    """The row's open time if it looks like one; None defers to the converter."""
    if isinstance(row, Sequence) and not isinstance(row, (str, bytes)) and row:
        ts = row[0]
        if isinstance(ts, int) and not isinstance(ts, bool):
            return ts
    return None


async def _fetch_page(
    exchange: OhlcvSource,
    symbol: str,
    timeframe: Timeframe,
    since_ms: int,
    limit: int,
    policy: BackoffPolicy,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[None]],
    count_call: Callable[[str, str], None],
) -> tuple[list[list[Any]], int]:
    """One page with retries. Returns the rows and how many attempts it took."""
    attempt = 0
    while True:
        attempt += 1
        try:
            rows = await exchange.fetch_ohlcv(symbol, timeframe.value, since=since_ms, limit=limit)
        except Exception as exc:  # ccxt raises its own tree; classify_error sorts it
            classification = classify_error(exc)
            count_call("failure", classification.reason.value)
            detail = f"{exchange.id} fetch_ohlcv({symbol}, {timeframe.value}, since={since_ms}): {exc}"
            if not classification.retriable:
                raise FatalExchangeError(classification.reason, detail) from exc
            if attempt >= policy.max_attempts:
                raise RetriesExhausted(classification.reason, attempt, detail) from exc
            delay = policy.delay_s(attempt, rng, classification.reason)
            log.warning(
                "history.retry",
                reason=classification.reason.value,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=str(exc)[:300],
            )
            await sleep(delay)
            continue
        count_call("success", "none")
        return list(rows or []), attempt
