"""Bad order intents through the whole trading core (risk -> paper execution
-> portfolio, the composition the agent runs): each is rejected with its
reason, gets exactly one terminal ``rejected`` order update (``risk_blocked``),
and is never sent: no ``new``/``acknowledged`` update, no fill on the bars
that follow, no position. Real Binance candles."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agents.execution.interface import client_order_id_for
from agents.trading.core import TradingConfig, TradingCore
from tests import builders
from tests.unit.test_trading_determinism import KEYRING, load_bars
from topics.records import Fill, OrderIntent, OrderStatus, OrderType, OrderUpdate, RiskDecision, RiskVerdict
from topics.schema import Record


def _intent(core: TradingCore, **changes: Any) -> OrderIntent:
    now = core.clock.now_ns()
    base = builders.intent(
        quantity=0.01,
        strategy_id="manual",
        target_position=0.01,
        signal_event_id=f"bad-{sorted(changes.items())!r}",
        ts=now,
    )
    return dataclasses.replace(base, **changes)


SCENARIOS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "zero_quantity": ({"quantity": 0.0}, ("invalid_quantity",)),
    "negative_quantity": ({"quantity": -0.5}, ("invalid_quantity",)),
    "nan_quantity": ({"quantity": float("nan")}, ("invalid_quantity",)),
    "infinite_quantity": ({"quantity": float("inf")}, ("invalid_quantity",)),
    "unknown_symbol": ({"symbol": "DOGE/USDT"}, ("unknown_symbol", "no_market_price")),
    "limit_far_above_market": ({"order_type": OrderType.LIMIT, "limit_price": 1e9}, ("price_far_from_market",)),
    "limit_far_below_market": ({"order_type": OrderType.LIMIT, "limit_price": 1.0}, ("price_far_from_market",)),
    "nan_limit_price": ({"order_type": OrderType.LIMIT, "limit_price": float("nan")}, ("price_far_from_market",)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_bad_intent_then_rejected_with_reason_and_never_sent(scenario: str) -> None:
    changes, want = SCENARIOS[scenario]
    bars = load_bars()[:12]
    core = TradingCore(TradingConfig(), KEYRING)
    for bar in bars[:8]:
        core.on_bar(bar)
    intent = _intent(core, **changes)
    out: list[Record] = []
    core._decide(intent, out)  # the core's one path from an intent to execution
    for bar in bars[8:]:
        out += core.on_bar(bar).records

    decisions = [r for r in out if isinstance(r, RiskDecision)]
    assert len(decisions) == 1
    d = decisions[0]
    assert d.verdict is RiskVerdict.REJECTED and d.approved_quantity == 0.0
    assert d.reasons == want
    coid = client_order_id_for(intent.event_id)
    updates = [r for r in out if isinstance(r, OrderUpdate) and r.client_order_id == coid]
    assert [(u.status, u.reason) for u in updates] == [(OrderStatus.REJECTED, "risk_blocked")]
    assert not [r for r in out if isinstance(r, Fill)]
    assert core.paper.open_orders() == ()
    assert all(p.quantity == 0.0 for p in core.portfolio_state().positions.values())
    # the same intent again (a redelivery) changes nothing and sends nothing
    again: list[Record] = []
    core._decide(intent, again)
    assert [r for r in again if isinstance(r, (OrderUpdate, Fill))] == []
