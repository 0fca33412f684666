"""Pure helpers for a paper-vs-backtest parity session (issue #6: parity by construction).

A parity session replays recorded bars through the *live* pipeline on the
broker (``features`` -> ``inference`` -> ``trading``) and through
:func:`backtest.runs.run_backtest`, then compares the fills. Two facts of a
live session have to be reproduced for the comparison to be meaningful, and
both live here as small pure functions so the test that drives the workers
stays readable:

* **Time.** The trading agent runs live: its clock is bounded by each
  message's arrival, and the gates judge paper fills in windows ending *now*
  (7 and 30 days). Recorded candles are therefore re-stamped by a whole
  number of timeframes so the newest one closes just before now
  (:func:`restamp`); prices, volumes and spacing stay exactly as recorded.
* **Pacing.** In a live session a timeframe passes between two bars, so the
  signal derived from bar ``i`` reaches the trading agent before bar
  ``i + 1`` does. Publishing recorded bars back to back would let a bar
  overtake its own signal and legitimately move the fill to a later bar.
  :func:`settled` says, from the workers' ``tradeflow_records_in/out_total``
  counters, when everything bar ``i`` caused has been consumed downstream,
  i.e. when the next bar may be published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from topics.records import Bar

__all__ = ["PipelineCounts", "last_closed_boundary", "restamp", "settled"]


def last_closed_boundary(now_ns: int, timeframe_ns: int, lag: int = 1) -> int:
    """A timeframe boundary ``lag`` whole timeframes before the last one at or before ``now_ns``.

    ``lag >= 1`` keeps the newest re-stamped bar's close strictly in the past,
    so no clock bound (event time never ahead of arrival) ever cuts it.
    """
    if timeframe_ns <= 0 or lag < 1:
        raise ValueError("timeframe_ns must be > 0 and lag >= 1")
    return (now_ns // timeframe_ns - lag) * timeframe_ns


def restamp(bars: Sequence[Bar], last_close_ns: int) -> list[Bar]:
    """``bars`` shifted by one constant so the last closes at ``last_close_ns``.

    The shift is a whole number of the bars' timeframe (ValueError otherwise),
    so open times stay on timeframe boundaries and gaps stay gaps. Event ids
    are re-derived (``Bar.new``) because the open time is part of a bar's
    identity; ``source`` says the bar was re-stamped.
    """
    if not bars:
        return []
    tf = bars[0].timeframe
    if any(b.timeframe is not tf for b in bars):
        raise ValueError("restamp expects bars of one timeframe")
    shift = last_close_ns - bars[-1].ts_event
    if shift % tf.nanos:
        raise ValueError(f"shift {shift} ns is not a whole number of {tf.value} bars")
    return [
        Bar.new(
            ts_init=b.ts_event + shift, ts_event=b.ts_event + shift, venue=b.venue, symbol=b.symbol, timeframe=tf,
            open_time=b.open_time + shift, open=b.open, high=b.high, low=b.low, close=b.close, volume=b.volume,
            trade_count=b.trade_count, is_closed=b.is_closed, revision=b.revision, source=f"restamped:{b.source}",
        )
        for b in bars
    ]


@dataclass(frozen=True, slots=True)
class PipelineCounts:
    """Counters of the three live workers, read in pipeline order (features, inference, trading).

    The order matters: each worker bumps its in- and out-counters for a
    micro-batch without yielding to its event loop in between, so an
    upstream out-count read *before* the downstream in-count is final for
    what the downstream count is compared with.
    """

    features_in_bars: float
    features_out: float
    inference_in: float
    inference_out: float
    trading_in_bars: float
    trading_in_signals: float


def settled(counts: PipelineCounts, bars_sent: int) -> bool:
    """True when every bar sent so far, and every vector and signal derived from them, was consumed.

    A bar the features agent withholds (warm-up, a data-quality block) simply
    adds no vector; a vector the inference agent cannot score yet (model
    window not full) adds no signal: both settle without waiting for output
    that will never come.
    """
    return (
        counts.features_in_bars >= bars_sent
        and counts.trading_in_bars >= bars_sent
        and counts.inference_in >= counts.features_out
        and counts.trading_in_signals >= counts.inference_out
    )
