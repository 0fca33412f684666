"""Audit comparison (pure part): hashing, first divergence, counterfactual settings, the account's scope."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agents.execution.interface import client_order_id_for
from agents.trading.core import TradingConfig
from backtest.audit import (
    AuditReport,
    Divergence,
    Item,
    LeftOut,
    Scope,
    apply_overrides,
    compare,
    decision_hash,
    item_of,
    split_scope,
)
from tests import builders
from topics.records import OrderIntent, OrderStatus, Side
from topics.schema import Record


def item(ts: int, topic: str, eid: str, **payload: object) -> Item:
    return Item(ts, topic, eid, json.dumps({"event_id": eid, **payload}, sort_keys=True))


def test_identical_streams_in_any_order_have_one_hash_and_no_divergence() -> None:
    a = [
        item(1, "orders.intents", "i1", q=1.0),
        item(1, "risk.decisions", "d1", v="approved"),
        item(2, "fills", "f1", p=10.0),
    ]
    assert decision_hash(a) == decision_hash(list(reversed(a)))
    assert compare(a, list(reversed(a))) is None


def test_changed_field_gives_another_hash_and_names_the_record_and_fields() -> None:
    a = [item(1, "orders.intents", "i1", q=1.0, side="buy"), item(2, "fills", "f1", p=10.0)]
    b = [item(1, "orders.intents", "i1", q=2.0, side="buy"), item(2, "fills", "f1", p=10.0)]
    assert decision_hash(a) != decision_hash(b)
    div = compare(a, b)
    assert div is not None and div.event_id == "i1" and div.fields == ("q",)
    text = div.side_by_side()
    assert "first divergence: orders.intents event i1" in text and "q" in text


def test_record_missing_on_either_side_is_the_divergence() -> None:
    a = [item(1, "orders.intents", "i1"), item(2, "fills", "f1")]
    only_replayed = compare(a[:1], a)
    assert only_replayed is not None and only_replayed.recorded is None and only_replayed.event_id == "f1"
    only_recorded = compare(a, a[:1])
    assert only_recorded is not None and only_recorded.replayed is None and only_recorded.event_id == "f1"


def test_empty_streams_are_identical_and_the_hash_is_that_of_nothing() -> None:
    assert compare([], []) is None
    assert decision_hash([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_overrides_parse_by_field_type_and_unknown_or_unparsable_settings_are_refused() -> None:
    cfg = apply_overrides(
        TradingConfig(), {"risk.max_order_notional": "5000", "strategy.entry_threshold": "0.4", "account": "shadow"}
    )
    assert cfg.risk.max_order_notional == 5000.0 and cfg.strategy.entry_threshold == 0.4 and cfg.account == "shadow"
    assert cfg.risk.config_hash() != TradingConfig().risk.config_hash()
    with pytest.raises(ValueError, match="no field 'nope'"):
        apply_overrides(TradingConfig(), {"risk.nope": "1"})
    with pytest.raises(ValueError, match="cannot parse"):
        apply_overrides(TradingConfig(), {"risk.max_order_notional": "lots"})
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides(TradingConfig(), {"account.x": "1"})


def _scoped(records: list[Record], scope: Scope) -> tuple[list[str], list[LeftOut]]:
    pairs = [(r, item_of(r)) for r in records]
    rec_in, rep_in, left = split_scope(pairs, records, scope, scope)
    assert rec_in == rep_in
    return [i.event_id for i in rec_in], left


def test_protective_exits_with_their_orders_are_the_accounts_and_what_is_not_is_counted_by_reason() -> None:
    config = TradingConfig()
    mine = builders.intent(strategy_id=config.strategy.strategy_id, signal_event_id="sig-1")
    stop = builders.intent(
        strategy_id=config.risk.protective_strategy_id,
        track=config.risk.track,
        side=Side.SELL,
        reduce_only=True,
        signal_event_id="bar-2",
        reason="stop_loss",
    )
    foreign_stop = builders.intent(
        strategy_id=config.risk.protective_strategy_id, track="live-x", signal_event_id="bar-3", reason="stop_loss"
    )
    records: list[Record] = []
    for it in (mine, stop, foreign_stop):
        coid = client_order_id_for(it.event_id)
        records += [
            it,
            builders.decision(it),
            builders.update(it, status=OrderStatus.FILLED, filled=it.quantity),
            builders.fill(client_order_id=coid, fill_id=f"f-{it.signal_event_id}", side=it.side),
        ]
    rule = Scope.of(config)
    ids = [r.event_id for r in records if isinstance(r, OrderIntent) and rule.owns_intent(r.strategy_id, r.track)]
    kept, left = _scoped(records, Scope.of(config, ids))
    assert kept == [r.event_id for r in records[:8]]  # the strategy's order and the stop loss, each in full
    assert [(lo.topic, lo.recorded, lo.replayed) for lo in left] == [
        ("orders.intents", 1, 1),
        ("risk.decisions", 1, 1),
        ("orders.updates", 1, 1),
        ("fills", 1, 1),
    ]
    assert "track live-x" not in rule.describe() and "risk-protect" in rule.describe()


def test_an_order_of_an_intent_made_before_the_range_is_compared_when_the_intent_is_known() -> None:
    config = TradingConfig()
    earlier = builders.intent(strategy_id=config.risk.protective_strategy_id, reason="take_profit")
    late_fill = builders.fill(client_order_id=client_order_id_for(earlier.event_id), ts=builders.T0 + 3600)
    assert Scope.of(config).exclusion(late_fill) is not None  # unknown intent: not the account's ...
    assert Scope.of(config, [earlier.event_id]).exclusion(late_fill) is None  # ... known from the history: it is


def test_unequal_counts_are_divergent_and_the_report_states_what_it_left_out() -> None:
    div = Divergence("orders.intents", 5, "i-stop", None, json.dumps({"event_id": "i-stop"}), ())
    report = AuditReport(
        start_ns=0,
        end_ns=10,
        order="journal",
        inputs=3,
        recorded=1,
        replayed=2,
        recorded_hash="a",
        replayed_hash="a",
        counts={"orders.intents": (1, 2)},
        divergence=None,
        scope="intents of strategy s",
        left_out=(LeftOut("ops.alerts", "control_undecodable alert", 1, 0),),
    )
    assert not report.identical  # counts alone decide it, whatever the hashes say
    text = dataclasses.replace(report, divergence=div).render()
    assert "DIVERGENT" in text and "first divergence: orders.intents event i-stop" in text
    assert "orders.intents   recorded       1  replayed       2  <-" in text
    assert "compared: intents of strategy s" in text
    assert "ops.alerts       recorded       1  replayed       0  control_undecodable alert" in text
    assert report.as_json()["left_out"] == [
        {"topic": "ops.alerts", "reason": "control_undecodable alert", "recorded": 1, "replayed": 0}
    ]
