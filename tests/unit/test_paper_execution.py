"""Paper execution: next-bar fills with the documented fee, slippage and
impact formulas, partial fills under the participation cap, every
explainable refusal, seeded timeouts, and duplicate safety."""

from __future__ import annotations

import re

import pytest

from agents.clock import EventClock
from agents.execution.interface import ExecReason, MarketContext, client_order_id_for
from agents.execution.paper import PaperConfig, PaperExecutionAdapter, PaperExecutionEngine
from tests import builders
from topics.records import (
    Bar,
    Fill,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    RiskDecision,
    RiskVerdict,
    Side,
)
from topics.schema import Record
from topics.units import NS_PER_HOUR as H

T0 = 1_609_459_200_000_000_000
NOW = T0 + 3 * H  # decisions at the close of the 02:00 bar
BTC = "BTC/USDT"

_signal_ids = builders.Numbered("sig-")


def order(
    side: Side = Side.BUY,
    qty: float = 1.0,
    *,
    approved: float | None = None,
    verdict: RiskVerdict = RiskVerdict.APPROVED,
    limit: float | None = None,
    symbol: str = BTC,
) -> tuple[OrderIntent, RiskDecision]:
    it = builders.intent(
        side=side,
        quantity=qty,
        symbol=symbol,
        limit_price=limit,
        target_position=qty,
        signal_event_id=_signal_ids(),
        ts=NOW,
    )
    return it, builders.decision(it, verdict=verdict, approved=approved)


def bar(open_: float = 30_000.0, volume: float = 100.0, *, open_time: int = NOW, symbol: str = BTC) -> Bar:
    return builders.bar(
        symbol=symbol, open_time=open_time, open=open_, high=open_ * 1.01, low=open_ * 0.99, volume=volume
    )


def engine(config: PaperConfig | None = None) -> PaperExecutionEngine:
    return PaperExecutionEngine(config or PaperConfig(), EventClock(NOW))


def updates(records: list[OrderUpdate | Fill]) -> list[OrderUpdate]:
    return [r for r in records if isinstance(r, OrderUpdate)]


def fills(records: list[OrderUpdate | Fill]) -> list[Fill]:
    return [r for r in records if isinstance(r, Fill)]


def test_client_order_id_then_deterministic_32_alnum() -> None:
    coid = client_order_id_for("intent-1")
    assert coid == client_order_id_for("intent-1") != client_order_id_for("intent-2")
    assert re.fullmatch(r"tf[0-9a-f]{30}", coid)


def test_approved_buy_then_filled_at_next_open_with_documented_costs() -> None:
    eng = engine()
    it, dec = order(qty=1.0)
    accepted = eng.submit(it, dec, MarketContext(symbol=BTC, last_price=30_000.0, ts_ns=NOW))
    assert [u.status for u in updates(accepted)] == [OrderStatus.NEW, OrderStatus.ACKNOWLEDGED]
    assert eng.on_bar(bar(open_time=NOW - H)) == []  # opened before the decision: no look-ahead
    out = eng.on_bar(bar(30_000.0, volume=100.0))
    (f,) = fills(out)
    participation = 1.0 / 100.0
    impact = 100.0 * participation  # coefficient x participation = 1 bps
    price = 30_000.0 * (1 + (2.0 + impact) / 10_000)
    assert f.price == pytest.approx(price) and f.price == pytest.approx(30_009.0)
    assert f.quantity == 1.0 and f.impact_bps == pytest.approx(1.0) and f.slippage_bps == 2.0
    assert f.fee == pytest.approx(price * 10.0 / 10_000) and f.fee_currency == "USDT"
    assert f.ts_event == NOW and f.client_order_id == client_order_id_for(it.event_id)
    (done,) = updates(out)
    assert done.status is OrderStatus.FILLED and done.filled_quantity == 1.0 and done.avg_fill_price == f.price


def test_sell_then_price_below_open_by_slippage_and_impact() -> None:
    eng = engine()
    eng.submit(*order(Side.SELL, 5.0))
    (f,) = fills(eng.on_bar(bar(30_000.0, volume=100.0)))
    assert f.price == pytest.approx(30_000.0 * (1 - (2.0 + 5.0) / 10_000))


def test_order_above_max_participation_then_partial_fills_across_bars() -> None:
    eng = engine()
    eng.submit(*order(qty=25.0))
    first = eng.on_bar(bar(volume=100.0))  # cap: 10 % of 100 = 10
    second = eng.on_bar(bar(volume=100.0, open_time=NOW + H))
    third = eng.on_bar(bar(volume=100.0, open_time=NOW + 2 * H))
    assert [f.quantity for f in fills(first + second + third)] == [10.0, 10.0, 5.0]
    assert [u.status for u in updates(first + second + third)] == [
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.FILLED,
    ]
    assert fills(first)[0].impact_bps == pytest.approx(10.0)  # 100 bps x 10 % participation
    assert eng.open_orders() == ()


def test_order_too_large_for_retries_then_rest_expires_no_fill_after_retries() -> None:
    eng = engine(PaperConfig(max_retries=1))
    eng.submit(*order(qty=50.0))
    out = eng.on_bar(bar(volume=100.0)) + eng.on_bar(bar(volume=100.0, open_time=NOW + H))
    last = updates(out)[-1]
    assert last.status is OrderStatus.EXPIRED and last.reason == ExecReason.NO_FILL_AFTER_RETRIES
    assert last.filled_quantity == 20.0
    assert eng.on_bar(bar(open_time=NOW + 2 * H)) == []


def test_two_orders_on_one_bar_then_share_the_participation_cap() -> None:
    eng = engine()
    eng.submit(*order(qty=8.0))
    eng.submit(*order(qty=8.0))
    assert [f.quantity for f in fills(eng.on_bar(bar(volume=100.0)))] == [8.0, 2.0]


def test_same_intent_and_decision_submitted_twice_then_one_order_one_fill_set() -> None:
    eng = engine()
    it, dec = order(qty=1.0)
    first = eng.submit(it, dec)
    assert eng.submit(it, dec) == []
    out = eng.on_bar(bar())
    assert eng.submit(it, dec) == []  # also after it filled
    assert len(updates(first)) == 2 and len(fills(out)) == 1
    assert eng.on_bar(bar(open_time=NOW + H)) == []


def test_recovered_seen_ids_then_redelivery_after_restart_ignored() -> None:
    it, dec = order()
    eng = engine()
    eng.remember(client_order_id_for(it.event_id))
    assert eng.submit(it, dec) == []


@pytest.mark.parametrize(
    ("verdict", "approved", "reason"),
    [(RiskVerdict.REJECTED, None, ExecReason.RISK_BLOCKED), (RiskVerdict.APPROVED, 0.0, ExecReason.INVALID_QUANTITY)],
)
def test_blocked_or_empty_order_then_rejected_with_reason(
    verdict: RiskVerdict, approved: float | None, reason: ExecReason
) -> None:
    eng = engine()
    (rej,) = eng.submit(*order(verdict=verdict, approved=approved))
    assert isinstance(rej, OrderUpdate) and rej.status is OrderStatus.REJECTED and rej.reason == reason
    assert eng.on_bar(bar()) == []


def test_next_open_gaps_far_from_arrival_then_slippage_too_wide() -> None:
    eng = engine()
    it, dec = order()
    eng.submit(it, dec, MarketContext(symbol=BTC, last_price=30_000.0, ts_ns=NOW))
    (rej,) = eng.on_bar(bar(31_000.0))  # 3.3 % gap > 100 bps
    assert isinstance(rej, OrderUpdate)
    assert rej.status is OrderStatus.REJECTED and rej.reason == ExecReason.SLIPPAGE_TOO_WIDE


def test_limit_buy_below_modelled_price_then_waits_for_a_cheaper_bar() -> None:
    eng = engine()
    eng.submit(*order(limit=29_800.0))
    assert fills(eng.on_bar(bar(30_000.0))) == []
    (f,) = fills(eng.on_bar(bar(29_700.0, open_time=NOW + H)))
    assert f.price <= 29_800.0


def test_timeout_probability_one_then_every_order_venue_timeout() -> None:
    eng = engine(PaperConfig(timeout_probability={BTC: 1.0}))
    for _ in range(3):
        eng.submit(*order())
    out = eng.on_bar(bar())
    assert [u.reason for u in updates(out)] == [ExecReason.VENUE_TIMEOUT] * 3
    assert fills(out) == []


def test_default_config_then_no_random_rejects_over_many_orders() -> None:
    eng = engine()
    for _ in range(200):
        eng.submit(*order(qty=0.01))
    out = eng.on_bar(bar(volume=1e6))
    assert len(fills(out)) == 200
    assert all(u.status is OrderStatus.FILLED for u in updates(out))


def test_seeded_timeouts_then_same_outcome_each_run_and_seed_matters() -> None:
    def run(seed: int) -> list[str]:
        _signal_ids.last = 1000  # same intents in every run
        eng = engine(PaperConfig(default_timeout_probability=0.5, seed=seed))
        for _ in range(40):
            eng.submit(*order(qty=0.01))
        return [u.status.value for u in updates(eng.on_bar(bar(volume=1e6)))]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert "rejected" in run(1) and "filled" in run(1)


def test_cancel_working_order_then_cancelled_and_never_filled() -> None:
    eng = engine()
    it, dec = order()
    eng.submit(it, dec)
    (c,) = eng.cancel(client_order_id_for(it.event_id), "kill_switch")
    assert isinstance(c, OrderUpdate) and c.status is OrderStatus.CANCELLED and c.reason == "kill_switch"
    assert eng.on_bar(bar()) == []
    assert eng.cancel("unknown") == []


async def test_async_adapter_then_same_records_as_engine() -> None:
    it, dec = order()
    adapter = PaperExecutionAdapter(engine())
    assert adapter.name == "paper"
    records: list[Record] = [*await adapter.submit(it, dec, None), *await adapter.on_bar(bar())]
    assert [type(r).__name__ for r in records] == ["OrderUpdate", "OrderUpdate", "Fill", "OrderUpdate"]


def test_orders_of_several_symbols_then_a_bar_fills_its_own_in_order_and_a_checkpoint_carries_no_index() -> None:
    """A bar visits only its symbol's working orders (a per-symbol index), in submission order; a cancelled
    order is never filled; the index is derived: not pickled, rebuilt after a restore, same fills."""
    import io
    import pickle

    from agents.trading.checkpoint import _CorePickler  # the checkpoint's pickler (config mappings)

    eth = "ETH/USDT"
    eng = engine(PaperConfig(max_participation=1.0))
    ids: dict[str, list[str]] = {BTC: [], eth: []}
    for i in range(6):
        sym = BTC if i % 2 == 0 else eth
        it, dec = order(qty=0.1 + i / 100, symbol=sym)
        eng.submit(it, dec, MarketContext(symbol=sym, last_price=30_000.0 if sym == BTC else 2_000.0, ts_ns=NOW))
        ids[sym].append(client_order_id_for(it.event_id))
    assert eng.on_bar(bar(open_time=NOW - H)) == []  # before the decisions: builds the index, fills nothing
    eng.cancel(ids[BTC][1])
    buf = io.BytesIO()
    _CorePickler(buf).dump(eng)
    restored = pickle.loads(buf.getvalue())
    assert "_by_symbol" not in eng.__getstate__() and getattr(restored, "_by_symbol", None) is None
    for e in (eng, restored):
        btc_fills = fills(e.on_bar(bar(30_000.0, volume=1e6)))
        assert [f.client_order_id for f in btc_fills] == [ids[BTC][0], ids[BTC][2]]
        eth_fills = fills(e.on_bar(bar(2_000.0, volume=1e6, symbol=eth)))
        assert [f.client_order_id for f in eth_fills] == ids[eth]
        assert e.open_orders() == () and e.on_bar(bar(30_000.0, volume=1e6, open_time=NOW + H)) == []
