"""Pure helpers for a paper-vs-backtest parity session (parity by construction).

A parity session replays recorded bars through the *live* pipeline on the
broker (``features`` -> ``inference`` -> ``trading``) and through
:func:`backtest.runs.run_backtest`, then compares the fills.

Pacing is the one fact of a live session a replay of recorded bars has to
reproduce: live, a timeframe passes between two bars, so the signal derived
from bar ``i`` reaches the trading agent before bar ``i + 1`` does.
Publishing recorded bars back to back would let a bar overtake its own
signal and legitimately move the fill to a later bar. :func:`settled` says,
from the workers' ``tradeflow_records_in/out_total`` counters, when
everything bar ``i`` caused has been consumed downstream, i.e. when the next
bar may be published. Within one bar, the signal may still overtake its own
bar on the way to the trading agent (three hops against one); the trading
core holds such a signal until its bar (event-time alignment,
:mod:`agents.trading.core`), so that race does not change the fills.
(Recorded timestamps need no re-stamping: the trading agent's clock is
bounded by arrival, never pushed by it, and the gates take an explicit
evaluation time.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PipelineCounts", "settled"]


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
