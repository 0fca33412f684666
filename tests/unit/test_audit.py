"""Audit comparison (pure part): hashing, first divergence, counterfactual settings."""

from __future__ import annotations

import json

import pytest

from agents.trading.core import TradingConfig
from backtest.audit import Item, apply_overrides, compare, decision_hash


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
