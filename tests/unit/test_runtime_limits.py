"""Limits an operator changes while the platform runs: the strategy's thresholds
are configuration (``TRADEFLOW_STRATEGY_*`` at start, a signed ``set_limit
strategy.<name>`` at runtime, audited with the strategy config's hashes), and
relaxing a risk limit releases the pause it caused, or the audit says why not."""

from __future__ import annotations

import dataclasses

import pytest

from agents.control.signing import AuditOutcome, Keyring, new_control_event
from agents.risk.config import RiskConfig
from agents.risk.engine import ControlReason, RiskReason
from agents.strategy.config import SETTABLE_PARAMS, StrategyConfig
from agents.strategy.engine import SizingReason
from agents.trading.core import TradingConfig, TradingCore
from agents.trading.settings import STRATEGY_VARIABLES, TradingSettings
from runtime.env import ConfigError
from tests import builders
from tests.unit.test_risk import NOW, intent, make_engine, reasons, state
from tests.unit.test_risk import control as signed
from tests.unit.test_trading_determinism import KEYRING, load_bars
from topics.records import ControlCommand, ControlEvent, RiskVerdict
from topics.schema import JsonScalar


def set_limit(name: str, value: JsonScalar, *, ts: int, keyring: Keyring = KEYRING, nonce: str = "") -> ControlEvent:
    return new_control_event(
        command=ControlCommand.SET_LIMIT,
        scope="global",
        target="*",
        params={"name": name, "value": value},
        reason="tune",
        operator="alice",
        key_id="ops1",
        nonce=nonce or f"{name}={value}",
        ts_event=ts,
        ts_init=ts,
        expires_at=None,
        keyring=keyring,
    )


def warmed_core() -> TradingCore:
    core = TradingCore(TradingConfig(), KEYRING)
    for bar in load_bars()[:5]:
        core.on_bar(bar)
    return core


def weak_signal(core: TradingCore, event_id: str, score: float = 0.1) -> SizingReason:
    """A signal of |score| 0.1 (below the default entry threshold 0.2) at the last bar's close."""
    sig = builders.signal(score=score, ts=core.clock.now_ns(), expected_return=0.02)
    step = core.on_signal(dataclasses.replace(sig, event_id=event_id))
    assert step.sizing is not None
    return step.sizing.reason


# ---------------------------------------------------------------------------
# strategy thresholds
# ---------------------------------------------------------------------------


def test_signed_set_limit_of_the_entry_threshold_then_weak_signals_trade_and_the_strategy_hash_is_audited() -> None:
    core = warmed_core()
    assert weak_signal(core, "w1") is SizingReason.BELOW_ENTRY_THRESHOLD
    before = core.strategy.config.config_hash()
    step = core.on_control(set_limit("strategy.entry_threshold", 0.08, ts=core.clock.now_ns()))
    audit = step.audit
    assert audit is not None and (audit.outcome, audit.reason) == (AuditOutcome.ACCEPTED, ControlReason.APPLIED)
    assert audit.changes == ("strategy.entry_threshold: 0.2 -> 0.08",)
    assert core.strategy.config.entry_threshold == 0.08
    assert audit.config_hash_before == before != audit.config_hash_after == core.strategy.config.config_hash()
    assert core.risk.config == RiskConfig()  # a strategy limit leaves risk's config alone
    assert weak_signal(core, "w2") is SizingReason.ORDER


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("strategy.entry_threshold", 0.01, ControlReason.INVALID_VALUE),  # below the exit threshold 0.05
        ("strategy.entry_threshold", 1.5, ControlReason.INVALID_VALUE),
        ("strategy.entry_threshold", "low", ControlReason.INVALID_VALUE),
        ("strategy.curve_gain", 1.0, ControlReason.UNKNOWN_LIMIT),  # not on the whitelist
        ("strategy.", 1.0, ControlReason.UNKNOWN_LIMIT),
    ],
)
def test_bad_strategy_set_limit_then_rejected_and_the_strategy_unchanged(
    name: str, value: JsonScalar, reason: ControlReason
) -> None:
    core = warmed_core()
    step = core.on_control(set_limit(name, value, ts=core.clock.now_ns()))
    assert step.audit is not None and (step.audit.outcome, step.audit.reason) == (AuditOutcome.REJECTED, reason)
    assert core.strategy.config == StrategyConfig()
    assert step.audit.config_hash_before == step.audit.config_hash_after


def test_forged_strategy_set_limit_then_rejected_alerted_and_nothing_changes() -> None:
    core = warmed_core()
    forged = set_limit("strategy.entry_threshold", 0.05, ts=core.clock.now_ns(), keyring=Keyring({"ops1": b"x" * 40}))
    step = core.on_control(forged)
    assert step.audit is not None and step.audit.reason == "bad_signature" and step.audit.alert
    assert core.strategy.config == StrategyConfig()


def test_strategy_parameters_from_the_environment_then_in_the_trading_config() -> None:
    assert set(STRATEGY_VARIABLES) == set(SETTABLE_PARAMS)
    settings = TradingSettings.from_env(
        {"TRADEFLOW_STRATEGY_ENTRY_THRESHOLD": "0.1", "TRADEFLOW_STRATEGY_MIN_ORDER_NOTIONAL": " 25 "}
    )
    strategy = settings.config().strategy
    assert (strategy.entry_threshold, strategy.min_order_notional) == (0.1, 25.0)
    assert dataclasses.replace(strategy, entry_threshold=0.2, min_order_notional=10.0) == StrategyConfig()
    # unset: the defaults, so the configuration hash (checkpoints, audits) is the one before these variables
    assert TradingSettings.from_env({}).config() == TradingConfig()


def test_max_signal_age_from_the_environment_and_by_set_limit_then_an_integer_of_market_ns() -> None:
    ten_hours = 10 * 3_600_000_000_000
    settings = TradingSettings.from_env({"TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS": str(ten_hours)})
    assert settings.config().strategy.max_signal_age_ns == ten_hours
    with pytest.raises(ConfigError, match="TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS must be an integer"):
        TradingSettings.from_env({"TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS": "2.5"})
    core = warmed_core()
    step = core.on_control(set_limit("strategy.max_signal_age_ns", ten_hours, ts=core.clock.now_ns()))
    assert step.audit is not None and step.audit.outcome == AuditOutcome.ACCEPTED, step.audit
    assert core.strategy.config.max_signal_age_ns == ten_hours
    refused = core.on_control(set_limit("strategy.max_signal_age_ns", 1.5, ts=core.clock.now_ns(), nonce="n2"))
    assert refused.audit is not None and refused.audit.reason == ControlReason.INVALID_VALUE
    assert core.strategy.config.max_signal_age_ns == ten_hours


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRADEFLOW_STRATEGY_ENTRY_THRESHOLD": "high"}, "TRADEFLOW_STRATEGY_ENTRY_THRESHOLD"),
        ({"TRADEFLOW_STRATEGY_ENTRY_THRESHOLD": "0.01"}, "TRADEFLOW_STRATEGY_ENTRY_THRESHOLD: invalid strategy"),
        ({"TRADEFLOW_STRATEGY_REBALANCE_BAND": "2"}, "rebalance_band=2.0 outside"),
    ],
)
def test_bad_strategy_variable_then_config_error_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TradingSettings.from_env(env)


# ---------------------------------------------------------------------------
# relaxing a limit releases the pause it caused
# ---------------------------------------------------------------------------


def test_raising_the_consecutive_loss_limit_above_the_streak_then_its_pause_released_and_audited() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(losses=5))
    d = engine.on_intent(intent())
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.CONSECUTIVE_LOSS_LIMIT}
    assert "consecutive_loss_limit" in engine.pauses()
    audit = engine.on_control(signed(ControlCommand.SET_LIMIT, name="consecutive_loss_limit", value=8))
    assert (audit.outcome, audit.reason, audit.detail) == (AuditOutcome.ACCEPTED, ControlReason.APPLIED, "")
    assert audit.changes[0] == "consecutive_loss_limit: 5 -> 8"
    assert len(audit.changes) == 2 and audit.changes[1].startswith("released the consecutive_loss_limit pause")
    assert engine.pauses() == {}
    assert engine.on_intent(intent()).verdict is RiskVerdict.APPROVED
    # the streak that was released is served: lowering the limit again does not pause on it twice
    engine.on_control(signed(ControlCommand.SET_LIMIT, name="consecutive_loss_limit", value=5))
    assert engine.on_intent(intent()).verdict is RiskVerdict.APPROVED
    engine.on_portfolio(state(losses=6))  # but a longer streak does
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED


def test_raising_the_loss_limit_not_above_the_streak_then_the_audit_says_the_pause_stays() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(losses=6))
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED
    audit = engine.on_control(signed(ControlCommand.SET_LIMIT, name="consecutive_loss_limit", value=6))
    assert audit.outcome is AuditOutcome.ACCEPTED and audit.changes == ("consecutive_loss_limit: 5 -> 6",)
    assert audit.detail.startswith("consecutive_loss_limit pause not released: 6 consecutive losses (>= limit 6)")
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED


def test_loss_pause_released_while_over_the_daily_loss_limit_then_the_audit_names_the_pause_still_in_force() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(losses=5, daily_return=-0.04))
    d = engine.on_intent(intent())
    assert reasons(d) == {RiskReason.CONSECUTIVE_LOSS_LIMIT, RiskReason.DAILY_LOSS_LIMIT}
    audit = engine.on_control(signed(ControlCommand.SET_LIMIT, name="consecutive_loss_limit", value=10))
    assert audit.changes[1].startswith("released the consecutive_loss_limit pause")
    assert audit.detail == "opening still paused by daily_loss_limit: daily return -0.0400 <= -0.03"
    d = engine.on_intent(intent())
    assert d.verdict is RiskVerdict.REJECTED and reasons(d) == {RiskReason.DAILY_LOSS_LIMIT}
    audit = engine.on_control(signed(ControlCommand.SET_LIMIT, name="daily_loss_limit", value=0.05))
    assert audit.changes == (
        "daily_loss_limit: 0.03 -> 0.05",
        "released the daily_loss_limit pause (was: daily return -0.0400 <= -0.03)",
    )
    assert audit.detail == "" and engine.on_intent(intent()).verdict is RiskVerdict.APPROVED


def test_raising_the_daily_loss_limit_not_enough_then_not_released_and_said_so() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(daily_return=-0.06))
    audit = engine.on_control(signed(ControlCommand.SET_LIMIT, name="daily_loss_limit", value=0.05))
    assert audit.changes == ("daily_loss_limit: 0.03 -> 0.05",)
    assert audit.detail == "daily_loss_limit pause not released: daily return -0.0600 <= -0.05"
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED


def test_limit_unrelated_to_a_pause_when_set_then_the_pause_stays_and_is_named() -> None:
    engine, _ = make_engine()
    engine.on_portfolio(state(losses=5))
    engine.on_intent(intent())  # starts the pause
    audit = engine.on_control(signed(ControlCommand.SET_LIMIT, name="max_order_notional", value=10_000))
    assert audit.changes == ("max_order_notional: 25000.0 -> 10000.0",)
    assert audit.detail.startswith("opening still paused by consecutive_loss_limit: 5 consecutive losses")
    assert engine.on_intent(intent()).verdict is RiskVerdict.REJECTED
    assert engine.pauses(NOW)["consecutive_loss_limit"].endswith("(market time)")
