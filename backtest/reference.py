"""Reference strategy: SMA crossover on close, long-only, the proof of the backtest accounting.

Small enough to check fill by fill against established engines
(``tests/unit/test_reference_strategy.py`` runs backtesting.py and vectorbt on the bundled
Binance BTC/USDT 1h bars: final equity to the cent, trade count, fees, every fill) and fast
enough to be the workload of :mod:`backtest.tuning`.

Rules (deterministic, event time only, no I/O): SMAs of the last ``fast`` / ``slow`` closes;
a strict cross (exactly ``backtesting.lib.crossover``) decided at bar ``i``'s close fills at
bar ``i + 1``'s open; a cross up while flat buys, a cross down while long sells everything;
fee ``fee_rate * notional`` from cash; all-in sizing ``(cash / (1 + fee_rate)) / price``
rounded down to ``lot_size`` (an entry that cannot buy one lot is skipped and counted);
equity is marked at each close, an open position at the last close without an exit fee.

Design: docs/reference_strategy.md#reference-strategy
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from runtime.errors import BadInput
from topics.records import Bar, Side, Timeframe

__all__ = [
    "PriceSeries",
    "ReferenceFill",
    "ReferenceInputError",
    "ReferenceResult",
    "ReferenceTrade",
    "SmaCrossParams",
    "crossings",
    "run_sma_cross",
    "sma",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class ReferenceInputError(BadInput, ValueError):
    """Bars or parameters the reference engine refuses (clear message, never a silent fix)."""


@dataclass(frozen=True, slots=True)
class SmaCrossParams:
    """Strategy and account parameters. ``lot_size=None``: fractional units."""

    fast: int
    slow: int
    fee_rate: float = 0.001
    initial_cash: float = 1_000_000.0
    lot_size: float | None = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.fast, bool) or isinstance(self.slow, bool):
            raise ReferenceInputError("fast and slow are bar counts, not booleans")
        if not (isinstance(self.fast, int) and isinstance(self.slow, int) and 1 <= self.fast < self.slow):
            raise ReferenceInputError(f"need integers 1 <= fast < slow, got fast={self.fast!r} slow={self.slow!r}")
        if not (math.isfinite(self.fee_rate) and 0.0 <= self.fee_rate < 0.1):
            raise ReferenceInputError(f"fee_rate must be in [0, 0.1), got {self.fee_rate!r}")
        if not (math.isfinite(self.initial_cash) and self.initial_cash > 0.0):
            raise ReferenceInputError(f"initial_cash must be a positive number, got {self.initial_cash!r}")
        if self.lot_size is not None and not (math.isfinite(self.lot_size) and self.lot_size > 0.0):
            raise ReferenceInputError(f"lot_size must be positive or None (fractional), got {self.lot_size!r}")


@dataclass(frozen=True, slots=True, eq=False)
class PriceSeries:
    """The columns of one market's closed bars that the strategy reads, ascending by open time.

    Built from :class:`~topics.records.Bar` records (the records on the topics),
    so the reference strategy consumes exactly what the pipeline carries.
    """

    venue: str
    symbol: str
    timeframe: Timeframe
    open_time: IntArray
    open: FloatArray
    close: FloatArray

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    @property
    def close_time(self) -> IntArray:
        """Each bar's close time (its ``ts_event``): when its close, and the equity mark, is known."""
        return self.open_time + self.timeframe.nanos

    @classmethod
    def from_bars(cls, bars: Sequence[Bar]) -> PriceSeries:
        """Validate and columnise: one venue/symbol/timeframe, closed bars, strictly ascending open times."""
        if not bars:
            raise ReferenceInputError("no bars")
        first = bars[0]
        key = (first.venue, first.symbol, first.timeframe)
        for b in bars:
            if (b.venue, b.symbol, b.timeframe) != key:
                raise ReferenceInputError(
                    f"bars of more than one market: {key} and {(b.venue, b.symbol, b.timeframe.value)}"
                )
            if not b.is_closed:
                raise ReferenceInputError(f"bar at open_time={b.open_time} is not closed: its close is not final")
        n = len(bars)
        open_time = np.fromiter((b.open_time for b in bars), dtype=np.int64, count=n)
        if n > 1 and not bool(np.all(open_time[1:] > open_time[:-1])):
            k = int(np.argmin(open_time[1:] > open_time[:-1])) + 1
            raise ReferenceInputError(
                f"open times must be strictly ascending (one bar per open time, highest revision chosen "
                f"by the caller): bar {k} open_time={int(open_time[k])} after {int(open_time[k - 1])}"
            )
        return cls(
            venue=first.venue,
            symbol=first.symbol,
            timeframe=first.timeframe,
            open_time=open_time,
            open=np.fromiter((b.open for b in bars), dtype=np.float64, count=n),
            close=np.fromiter((b.close for b in bars), dtype=np.float64, count=n),
        )


@dataclass(frozen=True, slots=True)
class ReferenceFill:
    """One fill. ``ts`` is the open time of the bar whose open it filled at."""

    seq: int
    bar_index: int
    ts: int
    side: Side
    quantity: float
    price: float
    notional: float
    fee: float


@dataclass(frozen=True, slots=True)
class ReferenceTrade:
    """A round trip. An open trade has no exit; its ``pnl`` is marked at the last close.

    ``pnl = quantity * (exit_or_mark - entry_price) - fees``; ``fees`` is the
    entry fee plus, once closed, the exit fee.
    """

    entry_ts: int
    entry_price: float
    quantity: float
    exit_ts: int | None
    exit_price: float | None
    fees: float
    pnl: float

    @property
    def is_open(self) -> bool:
        return self.exit_ts is None


@dataclass(frozen=True, slots=True, eq=False)
class ReferenceResult:
    """Everything a run produced. ``equity[i]`` is the equity at bar ``i``'s close."""

    params: SmaCrossParams
    fills: tuple[ReferenceFill, ...]
    trades: tuple[ReferenceTrade, ...]
    equity: FloatArray
    final_equity: float
    total_fees: float
    skipped_entries: int

    @property
    def trade_count(self) -> int:
        """Round trips entered, the open one included."""
        return len(self.trades)

    @property
    def traded_notional(self) -> float:
        return math.fsum(f.notional for f in self.fills)

    @property
    def turnover(self) -> float:
        """Traded notional (both sides) over the mean equity of the run.

        Over the mean equity, not the initial cash: an all-in strategy that
        compounded 10x would otherwise look 10x as active as it was.
        """
        mean_equity = float(np.mean(self.equity))
        return self.traded_notional / mean_equity if mean_equity > 0.0 else math.inf


def sma(values: FloatArray, window: int) -> FloatArray:
    """Simple moving average over ``window`` values, NaN before the first full window."""
    n = int(values.shape[0])
    out = np.full(n, np.nan, dtype=np.float64)
    if window < 1:
        raise ReferenceInputError(f"window must be >= 1, got {window}")
    if window > n:
        return out
    cs = np.cumsum(values, dtype=np.float64)
    out[window - 1] = cs[window - 1]
    out[window:] = cs[window:] - cs[:-window]
    out[window - 1 :] /= window
    return out


def crossings(fast: FloatArray, slow: FloatArray) -> tuple[BoolArray, BoolArray]:
    """(cross_up, cross_down) per bar, strict on both bars (``backtesting.lib.crossover``)."""
    diff = fast - slow
    above = diff > 0.0  # NaN compares False: no cross before both averages exist
    below = diff < 0.0
    up = np.zeros(diff.shape[0], dtype=np.bool_)
    down = np.zeros(diff.shape[0], dtype=np.bool_)
    up[1:] = below[:-1] & above[1:]
    down[1:] = above[:-1] & below[1:]
    return up, down


def _entry_quantity(cash: float, price: float, fee_rate: float, lot_size: float | None) -> float:
    """All-in size: what ``cash`` pays for including the fee (vectorbt ``buy_nb`` arithmetic)."""
    quantity = (cash / (1.0 + fee_rate)) / price
    if lot_size is None:
        return quantity
    return float(quantity // lot_size * lot_size)


def run_sma_cross(prices: PriceSeries, params: SmaCrossParams) -> ReferenceResult:
    """Run the reference strategy over ``prices``; pure function of its arguments."""
    n = len(prices)
    if n == 0:
        raise ReferenceInputError("no bars")
    opens, closes, times = prices.open, prices.close, prices.open_time
    up, down = crossings(sma(closes, params.fast), sma(closes, params.slow))
    signal_bars = np.flatnonzero(up | down)
    signal_bars = signal_bars[signal_bars < n - 1]  # a cross on the last bar has no next open
    is_up = up[signal_bars].tolist()

    fee_rate, lot = params.fee_rate, params.lot_size
    cash = params.initial_cash
    quantity = 0.0
    fills: list[ReferenceFill] = []
    trades: list[ReferenceTrade] = []
    skipped = 0
    entry: ReferenceFill | None = None
    for i, cross_up in zip(signal_bars.tolist(), is_up, strict=True):
        j = i + 1
        if cross_up and quantity == 0.0:
            price = float(opens[j])
            q = _entry_quantity(cash, price, fee_rate, lot)
            if not q > 0.0:
                skipped += 1
                continue
            notional = q * price
            fee = notional * fee_rate
            cash -= notional + fee
            quantity = q
            entry = ReferenceFill(len(fills), j, int(times[j]), Side.BUY, q, price, notional, fee)
            fills.append(entry)
        elif not cross_up and quantity > 0.0 and entry is not None:
            price = float(opens[j])
            notional = quantity * price
            fee = notional * fee_rate
            cash += notional - fee
            fills.append(ReferenceFill(len(fills), j, int(times[j]), Side.SELL, quantity, price, notional, fee))
            trades.append(_trade(entry, price, int(times[j]), fee))
            quantity, entry = 0.0, None

    equity = _equity_curve(fills, closes, params.initial_cash)
    if entry is not None:
        trades.append(_trade(entry, float(closes[-1]), None, None))
    return ReferenceResult(
        params=params,
        fills=tuple(fills),
        trades=tuple(trades),
        equity=equity,
        final_equity=float(equity[-1]),
        total_fees=math.fsum(f.fee for f in fills),
        skipped_entries=skipped,
    )


def _trade(entry: ReferenceFill, exit_or_mark: float, exit_ts: int | None, exit_fee: float | None) -> ReferenceTrade:
    fees = entry.fee + (exit_fee or 0.0)
    return ReferenceTrade(
        entry_ts=entry.ts,
        entry_price=entry.price,
        quantity=entry.quantity,
        exit_ts=exit_ts,
        exit_price=None if exit_ts is None else exit_or_mark,
        fees=fees,
        pnl=entry.quantity * (exit_or_mark - entry.price) - fees,
    )


def _equity_curve(fills: Sequence[ReferenceFill], closes: FloatArray, initial_cash: float) -> FloatArray:
    """``cash + quantity * close`` per bar; fills happen at opens, so a fill bar's close sees it.

    Cash deltas are accumulated in the same order as the event loop (initial
    cash first), so the curve's cash equals the loop's cash bit for bit.
    """
    n = int(closes.shape[0])
    d_cash = np.zeros(n, dtype=np.float64)
    d_qty = np.zeros(n, dtype=np.float64)
    d_cash[0] = initial_cash
    for f in fills:  # at most one fill per bar: a bar carries one signal
        if f.side is Side.BUY:
            d_cash[f.bar_index] -= f.notional + f.fee
            d_qty[f.bar_index] += f.quantity
        else:
            d_cash[f.bar_index] += f.notional - f.fee
            d_qty[f.bar_index] -= f.quantity
    cash: FloatArray = np.cumsum(d_cash)
    held: FloatArray = np.cumsum(d_qty)
    return cash + held * closes
