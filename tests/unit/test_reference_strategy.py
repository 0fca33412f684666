"""The reference strategy against two established engines, fill by fill, plus its own rules.

Peers (dev dependencies): backtesting.py (``Backtest``, whole units) and
vectorbt (``Portfolio.from_signals``, whole units via ``size_granularity=1``
and fractional via ``size=inf``). Each peer computes its *own* moving averages
and crossings (pandas rolling means + ``backtesting.lib.crossover``; vectorbt's
``MA`` indicator), so signals are cross-checked too, not only the accounting.
Data: the bundled Binance BTC/USDT 1h file, read with the project's importer
into ``Bar`` records.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from agents.market.csv_import import import_csv_file
from backtest.reference import (
    PriceSeries,
    ReferenceInputError,
    ReferenceResult,
    SmaCrossParams,
    crossings,
    run_sma_cross,
    sma,
)
from tests import builders
from topics.records import Bar, Side, Timeframe
from topics.schema import TS_MIN_NS

DATA = Path(__file__).resolve().parents[2] / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
H = Timeframe.H1.nanos
CENT = 0.005

# (fast, slow, fee_rate): the brief's sets, with fees, plus one fee-free run.
PARAMS = [(10, 30, 0.001), (20, 50, 0.001), (50, 200, 0.001), (20, 50, 0.0)]


@dataclass(frozen=True)
class PeerRun:
    """A peer's result in the reference's vocabulary: fills as (ts ns, price, signed size)."""

    final_equity: float
    trade_count: int
    fees: float
    fills: list[tuple[int, float, float]]
    warnings: list[str]


def _mine(result: ReferenceResult) -> list[tuple[int, float, float]]:
    return [(f.ts, f.price, f.quantity if f.side is Side.BUY else -f.quantity) for f in result.fills]


@pytest.fixture(scope="module")
def bars() -> tuple[Bar, ...]:
    parsed = import_csv_file(DATA, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS)
    assert not parsed.rejects and not parsed.duplicates
    return parsed.bars


@pytest.fixture(scope="module")
def prices(bars: tuple[Bar, ...]) -> PriceSeries:
    return PriceSeries.from_bars(bars)


def _frame(bars: Sequence[Bar]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Open": [b.open for b in bars],
            "High": [b.high for b in bars],
            "Low": [b.low for b in bars],
            "Close": [b.close for b in bars],
            "Volume": [b.volume for b in bars],
        },
        index=pd.to_datetime([b.open_time for b in bars], unit="ns", utc=True),
    )


def run_backtesting_py(bars: Sequence[Bar], p: SmaCrossParams) -> PeerRun:
    """backtesting.py's canonical SmaCross, long-only; open trades left open (marked at the last close)."""
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    def pandas_sma(values: Any, n: int) -> Any:
        return pd.Series(values).rolling(n).mean()

    class SmaCross(Strategy):  # type: ignore[misc]
        fast = p.fast
        slow = p.slow

        def init(self) -> None:
            self.sma_fast = self.I(pandas_sma, self.data.Close, self.fast)
            self.sma_slow = self.I(pandas_sma, self.data.Close, self.slow)

        def next(self) -> None:
            if crossover(self.sma_fast, self.sma_slow):
                if not self.position:
                    self.buy()
            elif crossover(self.sma_slow, self.sma_fast) and self.position:
                self.position.close()

    assert p.lot_size == 1.0, "backtesting.Backtest trades whole units"
    bt = Backtest(_frame(bars), SmaCross, cash=p.initial_cash, commission=p.fee_rate, finalize_trades=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = bt.run()
    closed = stats["_trades"]
    still_open = list(stats["_strategy"].trades)
    fills: list[tuple[int, float, float]] = []
    for row in closed.itertuples():
        fills.append((row.EntryTime.value, float(row.EntryPrice), float(row.Size)))
        fills.append((row.ExitTime.value, float(row.ExitPrice), -float(row.Size)))
    fees = float(closed["Commission"].sum())
    for t in still_open:  # the entry commission is already paid from cash; backtesting books it at close
        fills.append((t.entry_time.value, float(t.entry_price), float(t.size)))
        fees += t.size * t.entry_price * p.fee_rate
    fills.sort(key=lambda f: f[0])
    return PeerRun(
        final_equity=float(stats["Equity Final [$]"]),
        trade_count=len(closed) + len(still_open),
        fees=fees,
        fills=fills,
        warnings=[str(w.message) for w in caught],
    )


def run_vectorbt(bars: Sequence[Bar], p: SmaCrossParams) -> PeerRun:
    """vectorbt: its own MA crossings, executed one bar later at the open (price=open)."""
    import vectorbt as vbt

    frame = _frame(bars)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = vbt.MA.run(frame["Close"], p.fast)
        slow = vbt.MA.run(frame["Close"], p.slow)
        entries = fast.ma_crossed_above(slow).shift(1, fill_value=False)
        exits = fast.ma_crossed_below(slow).shift(1, fill_value=False)
        pf = vbt.Portfolio.from_signals(
            frame["Close"],
            entries,
            exits,
            price=frame["Open"],
            fees=p.fee_rate,
            init_cash=p.initial_cash,
            size=np.inf,
            size_granularity=np.nan if p.lot_size is None else p.lot_size,
            direction="longonly",
        )
        orders = pf.orders.records_readable
        final = float(pf.final_value())
    fills = [
        (ts.value, float(price), float(size) if side == "Buy" else -float(size))
        for ts, price, size, side in zip(
            orders["Timestamp"], orders["Price"], orders["Size"], orders["Side"], strict=True
        )
    ]
    return PeerRun(
        final_equity=final,
        trade_count=int((orders["Side"] == "Buy").sum()),
        fees=float(orders["Fees"].sum()),
        fills=fills,
        warnings=[str(w.message) for w in caught],
    )


def assert_same(mine: ReferenceResult, peer: PeerRun, *, size_rel_tol: float = 0.0) -> None:
    assert not [w for w in peer.warnings if "cancel" in w.lower()], peer.warnings
    assert abs(mine.final_equity - peer.final_equity) < CENT, (mine.final_equity, peer.final_equity)
    assert mine.trade_count == peer.trade_count
    assert abs(mine.total_fees - peer.fees) < CENT, (mine.total_fees, peer.fees)
    ours = _mine(mine)
    assert len(ours) == len(peer.fills)
    for k, (a, b) in enumerate(zip(ours, peer.fills, strict=True)):
        assert a[0] == b[0] and a[1] == b[1], f"fill {k}: {a} != {b}"
        if size_rel_tol == 0.0:
            assert a[2] == b[2], f"fill {k}: {a} != {b}"
        else:
            assert math.isclose(a[2], b[2], rel_tol=size_rel_tol, abs_tol=0.0), f"fill {k}: {a} != {b}"


# ---------------------------------------------------------------------------
# Against the peers on the bundled data
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fast", "slow", "fee"), PARAMS)
def test_matches_backtesting_py_and_vectorbt_whole_units(
    bars: tuple[Bar, ...], prices: PriceSeries, fast: int, slow: int, fee: float
) -> None:
    p = SmaCrossParams(fast, slow, fee_rate=fee)
    mine = run_sma_cross(prices, p)
    assert mine.trade_count > 50  # a real workload, not a trivially empty one
    assert (mine.total_fees > 0) == (fee > 0)
    assert_same(mine, run_backtesting_py(bars, p))
    assert_same(mine, run_vectorbt(bars, p))


def test_open_position_marked_at_last_close_matches_peers(bars: tuple[Bar, ...], prices: PriceSeries) -> None:
    p = SmaCrossParams(20, 50, fee_rate=0.001)
    full = run_sma_cross(prices, p)
    # Cut the data 24 bars into the longest trade: it is still open at the end.
    longest = max(full.trades, key=lambda t: (t.exit_ts or 0) - t.entry_ts)
    end = int(np.searchsorted(prices.open_time, longest.entry_ts)) + 24
    assert longest.exit_ts is not None and prices.open_time[end] < longest.exit_ts
    cut = bars[:end]
    mine = run_sma_cross(PriceSeries.from_bars(cut), p)
    last = mine.trades[-1]
    assert last.is_open and last.exit_price is None
    held = last.quantity
    assert mine.final_equity == pytest.approx(float(mine.equity[-1]))
    closed_fees = sum(t.fees for t in mine.trades[:-1])
    assert mine.total_fees == pytest.approx(closed_fees + last.fees)
    assert last.pnl == pytest.approx(held * (cut[-1].close - last.entry_price) - last.fees)
    assert_same(mine, run_backtesting_py(cut, p))
    assert_same(mine, run_vectorbt(cut, p))


@pytest.mark.parametrize(("fast", "slow"), [(10, 30), (50, 200)])
def test_fractional_units_match_vectorbt(prices: PriceSeries, bars: tuple[Bar, ...], fast: int, slow: int) -> None:
    p = SmaCrossParams(fast, slow, fee_rate=0.001, lot_size=None)
    mine = run_sma_cross(prices, p)
    # Fractional: the same formula, float rounding may differ in the last bits of a size.
    assert_same(mine, run_vectorbt(bars, p), size_rel_tol=1e-12)


# ---------------------------------------------------------------------------
# The engine's own rules (synthetic bars)
# ---------------------------------------------------------------------------


def _bars(closes: Sequence[float], opens: Sequence[float] | None = None, symbol: str = "BTC/USDT") -> list[Bar]:
    t0 = 1_600_000_000 * 1_000_000_000 // H * H
    opens = opens if opens is not None else closes
    return [
        builders.bar(symbol=symbol, open_time=t0 + i * H, open=o, close=c, ts_init=t0)
        for i, (o, c) in enumerate(zip(opens, closes, strict=True))
    ]


def test_sma_and_strict_crossings() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.isnan(sma(x, 3)[:2]).all() and sma(x, 3)[2:].tolist() == [2.0, 3.0]
    assert np.isnan(sma(x, 5)).all()
    fast = np.array([np.nan, 1.0, 2.0, 2.0, 3.0, 1.0])
    slow = np.array([np.nan, 2.0, 1.0, 2.0, 2.0, 2.0])
    up, down = crossings(fast, slow)
    assert np.flatnonzero(up).tolist() == [2]  # bar 4 follows a tie at bar 3: not a cross
    assert np.flatnonzero(down).tolist() == [5]  # and bar 3 (above -> tie) is not a cross down either


def test_fill_at_next_open_fee_on_notional_whole_units() -> None:
    closes = [10.0, 10.0, 10.0, 9.0, 12.0, 13.0, 11.0, 8.0, 8.0]
    opens = [10.0, 10.0, 10.0, 10.0, 9.5, 12.5, 13.0, 10.5, 7.5]
    p = SmaCrossParams(1, 2, fee_rate=0.01, initial_cash=1_000.0)
    r = run_sma_cross(PriceSeries.from_bars(_bars(closes, opens)), p)
    # sma1 = close; sma2 = mean of two closes. Up cross at bar 4 (9 < 9.5 -> 12 > 10.5), down at bar 6 (11 < 12).
    buy, sell = r.fills
    assert (buy.bar_index, buy.side, buy.price) == (5, Side.BUY, 12.5)
    assert buy.quantity == math.floor(1_000.0 / 1.01 / 12.5) == 79.0
    assert buy.fee == pytest.approx(79 * 12.5 * 0.01)
    assert (sell.bar_index, sell.side, sell.price, sell.quantity) == (7, Side.SELL, 10.5, 79.0)
    cash = 1_000.0 - 79 * 12.5 * 1.01 + 79 * 10.5 * 0.99
    assert r.final_equity == pytest.approx(cash)
    assert r.equity[5] == pytest.approx(1_000.0 - 79 * 12.5 * 1.01 + 79 * 13.0)  # marked at bar 5's close
    assert r.trades[0].pnl == pytest.approx(79 * (10.5 - 12.5) - (79 * 12.5 + 79 * 10.5) * 0.01)
    assert r.final_equity == pytest.approx(1_000.0 + sum(t.pnl for t in r.trades))
    assert r.turnover == pytest.approx(79 * (12.5 + 10.5) / float(np.mean(r.equity)))


def test_cross_on_last_bar_does_not_trade_and_unaffordable_entry_is_counted() -> None:
    closes = [10.0, 9.0, 12.0]
    r = run_sma_cross(PriceSeries.from_bars(_bars(closes)), SmaCrossParams(1, 2, fee_rate=0.0, initial_cash=100.0))
    assert r.fills == () and r.final_equity == 100.0 and r.skipped_entries == 0
    closes = [10.0, 9.0, 12.0, 12.0]
    r = run_sma_cross(PriceSeries.from_bars(_bars(closes)), SmaCrossParams(1, 2, fee_rate=0.0, initial_cash=5.0))
    assert r.fills == () and r.skipped_entries == 1 and r.final_equity == 5.0
    frac = run_sma_cross(
        PriceSeries.from_bars(_bars(closes)), SmaCrossParams(1, 2, fee_rate=0.0, initial_cash=5.0, lot_size=None)
    )
    assert frac.fills[0].quantity == pytest.approx(5.0 / 12.0) and frac.trades[0].is_open


def test_deterministic(prices: PriceSeries) -> None:
    p = SmaCrossParams(20, 50)
    a, b = run_sma_cross(prices, p), run_sma_cross(prices, p)
    assert a.fills == b.fills and a.trades == b.trades and np.array_equal(a.equity, b.equity)
    assert a.final_equity == b.final_equity


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fast": 30, "slow": 10}, "fast < slow"),
        ({"fast": 0, "slow": 10}, "fast < slow"),
        ({"fast": 5, "slow": 10, "fee_rate": -0.001}, "fee_rate"),
        ({"fast": 5, "slow": 10, "fee_rate": math.nan}, "fee_rate"),
        ({"fast": 5, "slow": 10, "initial_cash": 0.0}, "initial_cash"),
        ({"fast": 5, "slow": 10, "lot_size": 0.0}, "lot_size"),
    ],
)
def test_bad_params_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ReferenceInputError, match=match):
        SmaCrossParams(**kwargs)


def test_bad_bars_are_refused() -> None:
    with pytest.raises(ReferenceInputError, match="no bars"):
        PriceSeries.from_bars([])
    b = _bars([1.0, 2.0, 3.0])
    with pytest.raises(ReferenceInputError, match="strictly ascending"):
        PriceSeries.from_bars([b[0], b[2], b[1]])
    with pytest.raises(ReferenceInputError, match="more than one market"):
        PriceSeries.from_bars([b[0], _bars([1.0, 2.0], symbol="ETH/USDT")[1]])
    import dataclasses

    with pytest.raises(ReferenceInputError, match="not closed"):
        PriceSeries.from_bars([b[0], dataclasses.replace(b[1], is_closed=False)])
