"""Portfolio engine: exact accounting for long, short, partial closes and
flips; equity, drawdown, daily and intraday figures; loss streaks; duplicate
fills. Property tests check the accounting identities on random fill streams."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.portfolio.engine import PortfolioConfig, PortfolioEngine
from tests import builders
from topics.records import Bar, Fill, Side
from topics.units import NS_PER_DAY
from topics.units import NS_PER_HOUR as H

T0 = 1_609_459_200_000_000_000  # 2021-01-01 00:00 UTC
BTC = "BTC/USDT"
ETH = "ETH/USDT"

_fill_ids = builders.Numbered("f")


def fill(
    side: Side,
    qty: float,
    price: float,
    *,
    fee: float = 0.0,
    symbol: str = BTC,
    ts: int = T0 + H,
    fee_currency: str = "USDT",
    fill_id: str | None = None,
) -> Fill:
    number = _fill_ids()  # every fill takes a number, named or not
    return builders.fill(
        side=side,
        quantity=qty,
        price=price,
        fee=fee,
        fee_currency=fee_currency,
        symbol=symbol,
        client_order_id="tfcoid",
        fill_id=fill_id or number,
        adapter="test",
        ts=ts,
    )


def bar(close: float, *, symbol: str = BTC, open_time: int = T0) -> Bar:
    return builders.bar(symbol=symbol, open_time=open_time, open=close, close=close, volume=100.0)


def test_long_round_trip_with_fees_then_realized_pnl_and_cash_exact() -> None:
    pf = PortfolioEngine()
    pf.on_fill(fill(Side.BUY, 1.0, 100.0, fee=0.1))
    s = pf.on_fill(fill(Side.SELL, 1.0, 110.0, fee=0.11))
    assert s.realized_pnl == pytest.approx(10.0)
    assert s.fees_paid == pytest.approx(0.21)
    assert s.cash == pytest.approx(100_000 - 100 - 0.1 + 110 - 0.11)
    assert s.equity == pytest.approx(s.cash)
    assert s.quantity(BTC) == 0.0
    assert s.closed_trades == 1 and s.consecutive_losses == 0


def test_short_partial_close_then_average_kept_and_pnl_on_closed_part_only() -> None:
    pf = PortfolioEngine()
    pf.on_fill(fill(Side.SELL, 2.0, 100.0))
    s = pf.on_fill(fill(Side.BUY, 1.0, 90.0))
    pos = s.position(BTC)
    assert pos is not None
    assert pos.quantity == -1.0 and pos.avg_price == 100.0
    assert s.realized_pnl == pytest.approx(10.0)
    s = pf.on_bar(bar(95.0, open_time=T0 + H))
    assert s.unrealized_pnl == pytest.approx(5.0)
    assert s.equity == pytest.approx(100_000 + 10 + 5)
    assert s.closed_trades == 0  # a partial close does not end the round trip


def test_long_flipped_to_short_then_remainder_opens_at_fill_price() -> None:
    pf = PortfolioEngine()
    pf.on_fill(fill(Side.BUY, 1.0, 100.0, fee=0.3))
    s = pf.on_fill(fill(Side.SELL, 3.0, 120.0, fee=0.9))
    pos = s.position(BTC)
    assert pos is not None
    assert pos.quantity == -2.0 and pos.avg_price == 120.0 and pos.opened_at_ns == T0 + H
    assert s.realized_pnl == pytest.approx(20.0)
    assert s.closed_trades == 1 and s.consecutive_losses == 0  # +20 - 0.3 - 0.3 > 0


def test_increase_position_then_weighted_average_entry() -> None:
    pf = PortfolioEngine()
    pf.on_fill(fill(Side.BUY, 1.0, 100.0))
    s = pf.on_fill(fill(Side.BUY, 3.0, 120.0))
    pos = s.position(BTC)
    assert pos is not None and pos.avg_price == pytest.approx(115.0)


def test_same_fill_delivered_twice_then_applied_once() -> None:
    pf = PortfolioEngine()
    f = fill(Side.BUY, 1.0, 100.0)
    pf.on_fill(f)
    s = pf.on_fill(f)
    assert s.quantity(BTC) == 1.0 and s.fills_applied == 1


def test_losing_round_trips_then_streak_counts_and_a_win_resets_it() -> None:
    pf = PortfolioEngine()
    for _ in range(3):
        pf.on_fill(fill(Side.BUY, 1.0, 100.0))
        s = pf.on_fill(fill(Side.SELL, 1.0, 99.0))
    assert s.consecutive_losses == 3 and s.losing_trades == 3
    # Fees alone make a flat round trip a loss.
    pf.on_fill(fill(Side.BUY, 1.0, 100.0, fee=0.1))
    s = pf.on_fill(fill(Side.SELL, 1.0, 100.0, fee=0.1))
    assert s.consecutive_losses == 4
    pf.on_fill(fill(Side.SELL, 1.0, 100.0))
    s = pf.on_fill(fill(Side.BUY, 1.0, 90.0))
    assert s.consecutive_losses == 0 and s.closed_trades == 5


def test_marks_over_days_then_drawdown_intraday_drawdown_and_daily_pnl() -> None:
    pf = PortfolioEngine()
    pf.on_fill(fill(Side.BUY, 10.0, 1000.0, ts=T0 + H))
    s = pf.on_bar(bar(900.0, open_time=T0 + 2 * H))
    assert s.equity == pytest.approx(99_000.0)
    assert s.drawdown == pytest.approx(0.01)
    assert s.daily_pnl == pytest.approx(-1_000.0)
    # Next UTC day: the day starts at the carried equity (99,000).
    s = pf.on_bar(bar(950.0, open_time=T0 + NS_PER_DAY))
    assert s.day_start_equity == pytest.approx(99_000.0)
    assert s.daily_pnl == pytest.approx(500.0)
    assert s.daily_return == pytest.approx(500.0 / 99_000.0)
    s = pf.on_bar(bar(800.0, open_time=T0 + NS_PER_DAY + H))
    assert s.intraday_drawdown == pytest.approx((99_500 - 98_000) / 99_500)
    assert s.drawdown == pytest.approx((100_000 - 98_000) / 100_000)
    assert s.peak_equity == 100_000.0


def test_late_bar_then_newer_mark_kept() -> None:
    pf = PortfolioEngine()
    pf.on_fill(fill(Side.BUY, 1.0, 100.0))
    pf.on_bar(bar(105.0, open_time=T0 + 5 * H))
    s = pf.on_bar(bar(50.0, open_time=T0 + 2 * H))
    pos = s.position(BTC)
    assert pos is not None and pos.mark_price == 105.0


def test_fee_in_base_currency_then_converted_at_fill_price() -> None:
    pf = PortfolioEngine()
    s = pf.on_fill(fill(Side.BUY, 1.0, 100.0, fee=0.001, fee_currency="BTC"))
    assert s.fees_paid == pytest.approx(0.1)
    s = pf.on_fill(fill(Side.BUY, 1.0, 100.0, fee=0.5, fee_currency="BNB"))
    assert s.foreign_fee_fills == 1


def test_invalid_config_then_refused() -> None:
    with pytest.raises(ValueError, match="initial_cash"):
        PortfolioConfig(initial_cash=0.0)


_fills = st.lists(
    st.tuples(
        st.sampled_from([BTC, ETH]),
        st.sampled_from([Side.BUY, Side.SELL]),
        st.floats(0.001, 5.0),
        st.floats(10.0, 1_000.0),
        st.floats(0.0, 2.0),
        st.floats(10.0, 1_000.0),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(_fills)
def test_random_fills_and_marks_then_accounting_identities_hold(
    rows: list[tuple[str, Side, float, float, float, float]],
) -> None:
    pf = PortfolioEngine()
    ts = T0
    for symbol, side, qty, price, fee, mark in rows:
        ts += H
        pf.on_fill(fill(side, qty, price, fee=fee, symbol=symbol, ts=ts))
        s = pf.on_bar(bar(mark, symbol=symbol, open_time=ts))
    marks_value = sum(p.quantity * p.mark_price for p in s.positions.values())
    assert s.equity == pytest.approx(s.cash + marks_value, rel=1e-9, abs=1e-6)
    assert s.equity == pytest.approx(100_000 + s.realized_pnl - s.fees_paid + s.unrealized_pnl, rel=1e-9, abs=1e-6)
    assert s.peak_equity >= s.equity and s.drawdown >= 0.0
    assert s.consecutive_losses <= s.losing_trades <= s.closed_trades
    # Closing every position with an equal opposite fill leaves the book flat.
    for symbol in sorted(s.positions):
        q = s.quantity(symbol)
        if q != 0.0:
            ts += H
            s = pf.on_fill(fill(Side.SELL if q > 0 else Side.BUY, abs(q), 100.0, symbol=symbol, ts=ts))
    assert all(p.quantity == 0.0 for p in s.positions.values())
    assert s.unrealized_pnl == 0.0
    assert s.equity == pytest.approx(s.cash, rel=1e-12)
    assert math.isfinite(s.equity)
