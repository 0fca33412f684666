"""Backtest metrics: the documented formulas on hand-computed cases, None vs 0.0,
and consistency with the portfolio engine on a real replay."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from agents.market.csv_import import import_csv_file
from agents.portfolio.engine import PortfolioEngine
from agents.risk.config import RiskConfig
from agents.trading.core import TradingConfig
from backtest.metrics import (
    METRIC_NAMES,
    TOTAL,
    LineageKeys,
    compute_metrics,
    daily_sharpe,
    fill_costs,
    max_drawdown,
    round_trip_pnls,
)
from backtest.replay import ReplayConfig, ReplayModel, ReplayResult, replay
from backtest.walkforward import WalkForwardSpec, train_walk_forward
from models.config import ModelConfig
from models.dataset import closes_by_open_time
from tests import builders
from topics.records import Bar, Fill, PortfolioSnapshot, Side, Timeframe
from topics.units import NS_PER_DAY as DAY

T0 = 1_600_000_000_000_000_000 - 1_600_000_000_000_000_000 % DAY
CSV = Path(__file__).resolve().parents[2] / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"


def fill(
    side: Side,
    qty: float,
    price: float,
    fee: float,
    *,
    n: int,
    slip: float = 2.0,
    impact: float = 0.0,
    symbol: str = "BTC/USDT",
) -> Fill:
    return builders.fill(
        side=side,
        quantity=qty,
        price=price,
        fee=fee,
        symbol=symbol,
        client_order_id=f"tf{n:030d}",
        fill_id=str(n),
        slippage_bps=slip,
        impact_bps=impact,
        ts=T0 + n,
    )


def test_daily_sharpe_follows_the_contract_formula() -> None:
    # intraday points: only each day's last equity counts; base = initial equity
    curve = [
        (T0 + 3_600 * 10**9, 99_000.0),
        (T0 + DAY - 1, 101_000.0),
        (T0 + DAY + 5, 100_000.0),
        (T0 + 2 * DAY + 5, 103_000.0),
    ]
    r = [101_000 / 100_000 - 1, 100_000 / 101_000 - 1, 103_000 / 100_000 - 1]
    expected = statistics.fmean(r) / statistics.stdev(r) * math.sqrt(365)
    assert daily_sharpe(curve, 100_000.0) == pytest.approx(expected, rel=1e-12)


def test_daily_sharpe_is_missing_not_zero() -> None:
    assert daily_sharpe([], 100.0) is None
    assert daily_sharpe([(T0, 101.0)], 100.0) is None  # one day: one return
    flat = [(T0 + d * DAY, 100.0) for d in range(5)]
    assert daily_sharpe(flat, 100.0) is None  # stdev 0
    assert daily_sharpe([(T0, 101.0), (T0 + DAY, 100.0)], 100.0) is not None  # two days: defined


def test_max_drawdown() -> None:
    assert max_drawdown([], 100.0) is None
    assert max_drawdown([100.0, 100.0], 100.0) == 0.0
    assert max_drawdown([110.0, 99.0, 120.0, 108.0], 100.0) == pytest.approx(0.1)


def test_fill_costs_recover_the_paper_engine_price_decomposition() -> None:
    # paper: price = open * (1 + (slip + impact)/1e4) for a buy
    open_ = 20_000.0
    buy = fill(Side.BUY, 2.0, open_ * (1 + 7.0 / 10_000), 4.0, n=1, slip=2.0, impact=5.0)
    c = fill_costs(buy)
    assert c.slippage == pytest.approx(2.0 * open_ * 2.0 / 10_000)
    assert c.impact == pytest.approx(2.0 * open_ * 5.0 / 10_000)
    sell = fill(Side.SELL, 1.0, open_ * (1 - 7.0 / 10_000), 2.0, n=2, slip=2.0, impact=5.0)
    assert fill_costs(sell).impact == pytest.approx(open_ * 5.0 / 10_000)
    assert c.notional == pytest.approx(2.0 * buy.price) and c.fee == 4.0


def test_round_trips_match_the_portfolio_engine_including_a_flip() -> None:
    fills = [
        fill(Side.BUY, 1.0, 100.0, 0.1, n=1),
        fill(Side.BUY, 1.0, 110.0, 0.1, n=2),
        fill(Side.SELL, 3.0, 120.0, 0.3, n=3),  # closes 2 (win), opens a 1 short
        fill(Side.BUY, 1.0, 125.0, 0.1, n=4),  # closes the short (loss)
        fill(Side.BUY, 1.0, 100.0, 0.1, n=5),  # still open
    ]
    pnls = round_trip_pnls(fills)
    assert len(pnls) == 2
    assert pnls[0] == pytest.approx(2 * 120 - 210 - 0.2 - 0.2)
    assert pnls[1] == pytest.approx(-5.0 - 0.1 - 0.1)
    engine = PortfolioEngine()
    state = None
    for f in fills:
        state = engine.on_fill(f)
    assert state is not None and state.closed_trades == 2 and state.losing_trades == 1


@pytest.fixture(scope="module")
def real_run() -> tuple[ReplayResult, dict[tuple[str, str], float | None]]:
    bars: list[Bar] = list(
        import_csv_file(
            CSV, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=1_700_000_000_000_000_000
        ).bars[30_000:30_600]
    )
    spec = WalkForwardSpec(
        n_windows=2, model=ModelConfig(window=8, hidden_sizes=(16,), max_epochs=4, device="cpu", seed=5)
    )
    model, lineage = train_walk_forward(
        bars, {"BTC/USDT": closes_by_open_time(bars)}, spec, ReplayConfig().spec, "1x1h"
    )
    cfg = ReplayConfig(trading=TradingConfig(risk=RiskConfig(allowed_symbols=("BTC/USDT",))))
    res = replay(bars, cfg, model)
    keys = LineageKeys({(w.model_id, w.model_version): cfg.spec.version for w in lineage})
    return res, compute_metrics(res, symbols=("BTC/USDT",), initial_cash=100_000.0, lineage=keys)


def test_real_replay_metrics_are_consistent(real_run: tuple[ReplayResult, dict[tuple[str, str], float | None]]) -> None:
    res, m = real_run
    assert {k[1] for k in m} == set(METRIC_NAMES) and {k[0] for k in m} == {"BTC/USDT", TOTAL}
    snaps = [r for r in res.records if isinstance(r, PortfolioSnapshot)]
    last = snaps[-1]
    assert m[(TOTAL, "pnl_after_costs")] == pytest.approx(last.equity - 100_000.0)
    assert m[(TOTAL, "fees")] == pytest.approx(last.fees_paid)
    assert m[(TOTAL, "round_trips")] == last.closed_trades
    if last.closed_trades:
        assert m[(TOTAL, "win_rate")] == pytest.approx(1 - last.losing_trades / last.closed_trades)
    pnl, after = m[(TOTAL, "pnl")], m[(TOTAL, "pnl_after_costs")]
    assert pnl is not None and after is not None
    costs = [m[(TOTAL, k)] for k in ("fees", "slippage", "impact")]
    assert pnl - after == pytest.approx(sum(c for c in costs if c is not None))
    assert None not in costs
    assert m[(TOTAL, "max_drawdown")] == pytest.approx(max(s.drawdown for s in snaps), rel=1e-9)
    assert m[(TOTAL, "trade_count")] == len(res.fills) > 0
    assert m[(TOTAL, "lineage_coverage")] == 1.0
    assert m[(TOTAL, "observation_days")] == pytest.approx(len({s.as_of_ns // DAY for s in snaps}))


def test_unknown_lineage_lowers_coverage(real_run: tuple[ReplayResult, dict[tuple[str, str], float | None]]) -> None:
    res, _ = real_run
    m = compute_metrics(res, symbols=("BTC/USDT",), initial_cash=100_000.0, lineage=LineageKeys({}))
    cov = m[(TOTAL, "lineage_coverage")]
    assert cov is not None and cov < 1.0


def test_no_activity_gives_zeros_and_missing_states() -> None:
    bars = list(
        import_csv_file(
            CSV, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=1_700_000_000_000_000_000
        ).bars[:100]
    )
    res = replay(
        bars, ReplayConfig(trading=TradingConfig(risk=RiskConfig(allowed_symbols=("BTC/USDT",)))), ReplayModel(())
    )
    m = compute_metrics(res, symbols=("BTC/USDT",), initial_cash=100_000.0, lineage=LineageKeys({}))
    assert m[(TOTAL, "fees")] == 0.0 and m[(TOTAL, "trade_count")] == 0.0 and m[(TOTAL, "pnl_after_costs")] == 0.0
    assert m[(TOTAL, "win_rate")] is None and m[(TOTAL, "reject_rate")] is None
    assert m[(TOTAL, "lineage_coverage")] is None and m[(TOTAL, "sharpe_daily")] is None  # flat equity
    assert m[(TOTAL, "max_drawdown")] == 0.0
