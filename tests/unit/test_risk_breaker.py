"""The volatility breaker (docs/risk.md#volatility-breaker): the absolute return over a window of
bars or of market time against per-symbol thresholds and UTC hour bands, a global kill switch for
a halt of market time, the bar-range rule as the second mode, every value settable by a signed
``set_limit`` (the config hash follows), defaults from the environment, and its state carried
through a trading checkpoint exactly."""

from __future__ import annotations

import pytest

from agents.clock import EventClock, TimeDomain
from agents.control.signing import AuditOutcome, ControlVerifier
from agents.portfolio.engine import PortfolioState
from agents.risk.config import BreakerMode, RiskConfig
from agents.risk.engine import ControlReason, MarkOutcome, RiskEngine, RiskReason
from agents.risk.killswitch import KillScope
from agents.trading.checkpoint import open_checkpoint, seal
from agents.trading.core import TradingConfig, TradingCore
from agents.trading.settings import RISK_VARIABLES, TradingSettings, risk_from_env
from runtime.env import VARIABLES, ConfigError
from tests import builders
from tests.unit.test_risk import KEYRING, control, intent
from tests.unit.test_runtime_limits import set_limit
from topics.records import Bar, ControlCommand, RiskVerdict
from topics.schema import JsonScalar, codec_for
from topics.units import NS_PER_DAY as DAY
from topics.units import NS_PER_HOUR as H
from topics.units import NS_PER_SECOND as S

T0 = 1_609_459_200_000_000_000  # 2021-01-01 00:00 UTC
BTC, ETH = "BTC/USDT", "ETH/USDT"


def engine_at(config: RiskConfig | None = None, *, wall: EventClock | None = None) -> tuple[RiskEngine, EventClock]:
    clock = EventClock(T0)
    engine = RiskEngine(config or RiskConfig(), clock, ControlVerifier(KEYRING), wall_clock=wall)
    engine.on_portfolio(PortfolioState.initial(100_000.0, T0))
    return engine, clock


def candle(symbol: str, hour: float, open_: float, close: float, *, wide: float = 0.0) -> Bar:
    """A 1h bar opening ``hour`` hours after T0; ``wide``: the range reaches that far beyond open and close
    (a measure of the range, not of the return)."""
    return builders.bar(
        symbol=symbol,
        open_time=T0 + round(hour * H),
        open=open_,
        close=close,
        high=max(open_, close) * (1 + wide),
        low=min(open_, close) * (1 - wide),
        volume=1.0,
    )


def mark(engine: RiskEngine, clock: EventClock, bar: Bar) -> MarkOutcome:
    clock.advance(bar.ts_event)  # as the trading core does: market time is the bar's close
    return engine.on_mark(bar)


def moves(engine: RiskEngine, clock: EventClock, symbol: str, hour: int, returns: list[float]) -> list[bool]:
    """Consecutive 1h bars from ``hour``, each with the given open-to-close return; which ones tripped."""
    price, out = 100.0, []
    for i, r in enumerate(returns):
        out.append(bool(mark(engine, clock, candle(symbol, hour + i, price, price * (1 + r))).engaged))
        price *= 1 + r
    return out


# ---------------------------------------------------------------------------
# Return mode: thresholds per symbol, UTC hour bands, the window
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "threshold", "config"),
    [
        (BTC, 0.05, RiskConfig()),
        (ETH, 0.06, RiskConfig()),
        ("SOL/USDT", 0.08, RiskConfig()),
        ("XRP/USDT", 0.08, RiskConfig()),  # vol_threshold_default
        ("BTC/USDT:USDT", 0.03, RiskConfig(vol_thresholds={"BTC": 0.05, "BTC/USDT:USDT": 0.03})),  # exact symbol wins
    ],
)
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_return_over_the_window_vs_the_symbols_threshold_then_trips_only_above(
    symbol: str, threshold: float, config: RiskConfig, direction: float
) -> None:
    """09:00 UTC (x1.0). Every bar's range is far above the threshold: only the return decides."""
    for factor, trips in ((0.98, False), (1.02, True)):
        engine, clock = engine_at(config)
        bar = candle(symbol, 9, 100.0, 100.0 * (1 + direction * threshold * factor), wide=threshold)
        out = mark(engine, clock, bar)
        assert bool(out.engaged) is trips, (symbol, factor)
        if trips:
            assert f"|return| over 1 bar(s) {threshold * factor:.4f} > {threshold:.4f}" in out.engaged[0].reason


@pytest.mark.parametrize(
    ("hour", "multiplier"),
    [(0, 1.4), (7, 1.4), (8, 1.0), (16, 1.0), (17, 1.2), (23, 1.2)],
)
def test_hour_band_edges_then_btc_threshold_scaled_by_the_bands_multiplier(hour: int, multiplier: float) -> None:
    """UTC 00-07 x1.4, 08-16 x1.0, 17-23 x1.2, by the hour of the bar's open; each band's first and last hour."""
    limit = 0.05 * multiplier
    for factor, trips in ((0.99, False), (1.01, True)):
        engine, clock = engine_at()
        out = mark(engine, clock, candle(BTC, hour, 100.0, 100.0 * (1 + limit * factor), wide=0.2))
        assert bool(out.engaged) is trips, (hour, factor)
        if trips:
            assert f"> {limit:.4f} at hour {hour:02d} UTC" in out.engaged[0].reason


def test_window_of_three_bars_then_the_move_across_them_trips_the_third() -> None:
    engine, clock = engine_at(RiskConfig(vol_window_bars=3))
    assert moves(engine, clock, BTC, 9, [0.02, 0.02, 0.02]) == [False, False, True]
    (switch,) = engine.kill_switches.active(clock.now_ns())
    assert "|return| over 3 bar(s) 0.0612 > 0.0500" in switch.reason
    calm = candle(BTC, 12, 106.1208, 106.1208)  # the window slides: 102 -> 106.12 is 4 %
    assert mark(engine, clock, calm).engaged == ()
    assert len(engine.breaker.window(BTC, "1h")) == 3  # only what the window covers is kept
    calm, calm_clock = engine_at()  # the default window (1 h): each 2 % bar alone
    assert moves(calm, calm_clock, BTC, 9, [0.02, 0.02, 0.02, 0.0]) == [False] * 4


def test_window_in_market_time_then_bars_before_a_gap_are_outside_it() -> None:
    """A 3 h window holds the bars that opened within 3 h of this bar's close, however many there are."""
    by_time, clock = engine_at(RiskConfig(vol_window_ns=3 * H))
    assert moves(by_time, clock, BTC, 9, [0.02, 0.02, 0.02]) == [False, False, True]
    gap = [candle(BTC, 9, 100.0, 102.0), candle(BTC, 10, 102.0, 104.04), candle(BTC, 14, 104.04, 106.12)]
    by_time, clock = engine_at(RiskConfig(vol_window_ns=3 * H))
    assert [bool(mark(by_time, clock, b).engaged) for b in gap] == [False, False, False]
    assert by_time.breaker.window(BTC, "1h") == ((T0 + 14 * H, 104.04, 106.12),)
    by_count, clock = engine_at(RiskConfig(vol_window_bars=3))
    assert [bool(mark(by_count, clock, b).engaged) for b in gap] == [False, False, True]


def test_series_then_kept_per_symbol_and_timeframe_and_older_bars_ignored() -> None:
    engine, clock = engine_at(RiskConfig(vol_window_bars=2))
    assert moves(engine, clock, BTC, 9, [0.03]) == [False]
    assert moves(engine, clock, ETH, 10, [0.03]) == [False]  # ETH's bar does not extend BTC's window
    old = candle(BTC, 5, 100.0, 50.0)  # older than the series' last bar: neither kept nor measured
    assert mark(engine, clock, old).engaged == ()
    assert engine.breaker.window(BTC, "1h") == ((T0 + 9 * H, 100.0, 103.0),)


# ---------------------------------------------------------------------------
# The halt: a global kill switch for vol_halt_ns of market time
# ---------------------------------------------------------------------------


def test_trip_then_global_switch_for_60s_of_market_time_whatever_the_wall_clock_says() -> None:
    wall = EventClock(T0)
    engine, clock = engine_at(wall=wall)
    mark(engine, clock, candle(ETH, 9, 1_000.0, 1_000.0))
    (switch,) = mark(engine, clock, candle(BTC, 9, 30_000.0, 28_000.0)).engaged  # -6.7 %
    close = T0 + 10 * H
    assert (switch.scope, switch.target, switch.domain) == (KillScope.GLOBAL, "*", TimeDomain.MARKET)
    assert (switch.set_at_ns, switch.expires_at_ns) == (close, close + 60 * S)
    wall.advance(close + DAY)  # a day of wall time passes: the halt is in market time
    clock.advance(close + 59 * S)
    d = engine.on_intent(intent(symbol=ETH, qty=1.0))
    assert d.verdict is RiskVerdict.REJECTED and d.reasons == (RiskReason.KILL_SWITCH_GLOBAL,)
    clock.advance(close + 60 * S)  # expiry is exclusive
    assert engine.on_intent(intent(symbol=ETH, qty=1.0)).verdict is RiskVerdict.APPROVED


# ---------------------------------------------------------------------------
# Range mode (the second mode)
# ---------------------------------------------------------------------------


def test_range_mode_then_the_bar_range_trips_and_the_return_does_not() -> None:
    wide_flat = candle(BTC, 9, 100.0, 100.0, wide=0.03)  # range ~6 %, return 0
    narrow_trend = candle(BTC, 10, 100.0, 106.0)  # range = return = 6 %
    ranged, clock = engine_at(RiskConfig(vol_breaker_mode=BreakerMode.RANGE))
    assert "range 0.0600 > 0.0500" in mark(ranged, clock, wide_flat).engaged[0].reason
    returned, clock = engine_at()
    assert mark(returned, clock, wide_flat).engaged == ()
    assert len(mark(returned, clock, narrow_trend).engaged) == 1


# ---------------------------------------------------------------------------
# Runtime changes: signed set_limit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "field", "expected", "change"),
    [
        ("vol_breaker_mode", "range", "vol_breaker_mode", BreakerMode.RANGE, "'return' -> 'range'"),
        ("vol_threshold.BTC", 0.2, "vol_thresholds", {"BTC": 0.2, "ETH": 0.06, "SOL": 0.08}, "0.05 -> 0.2"),
        (
            "vol_threshold.BTC/USDT:USDT",
            0.04,
            "vol_thresholds",
            {"BTC": 0.05, "ETH": 0.06, "SOL": 0.08, "BTC/USDT:USDT": 0.04},
            "None -> 0.04",
        ),
        ("vol_threshold_default", 0.1, "vol_threshold_default", 0.1, "0.08 -> 0.1"),
        ("vol_hour_multiplier.08-16", 2, "vol_hour_multipliers", (1.4,) * 8 + (2.0,) * 9 + (1.2,) * 7, "1.0 -> 2.0"),
        (
            "vol_hour_multiplier.3",
            1.5,
            "vol_hour_multipliers",
            (1.4,) * 3 + (1.5,) + (1.4,) * 4 + (1.0,) * 9 + (1.2,) * 7,
            "1.4 -> 1.5",
        ),
        ("vol_window_bars", 3, "vol_window_bars", 3, "0 -> 3"),
        ("vol_window_ns", 4 * H, "vol_window_ns", 4 * H, f"{H} -> {4 * H}"),
        ("vol_reference_timeframe_ns", 4 * H, "vol_reference_timeframe_ns", 4 * H, f"{H} -> {4 * H}"),
        ("vol_halt_ns", 120 * S, "vol_halt_ns", 120 * S, f"{60 * S} -> {120 * S}"),
    ],
)
def test_signed_set_limit_of_a_breaker_value_then_applied_and_the_config_hash_follows(
    name: str, value: JsonScalar, field: str, expected: object, change: str
) -> None:
    engine, clock = engine_at()
    before = engine.config.config_hash()
    audit = engine.on_control(control(ControlCommand.SET_LIMIT, name=name, value=value, ts=clock.now_ns()))
    assert (audit.outcome, audit.reason) == (AuditOutcome.ACCEPTED, ControlReason.APPLIED), audit.detail
    got = getattr(engine.config, field)
    assert (dict(got) if field == "vol_thresholds" else got) == expected
    assert audit.changes == (f"{name}: {change}",)
    assert audit.config_hash_before == before != audit.config_hash_after == engine.config.config_hash()
    assert engine.config.config_hash() == RiskConfig(**{field: expected}).config_hash()  # type: ignore[arg-type]


def test_set_limits_then_the_breaker_decides_by_the_new_values() -> None:
    engine, clock = engine_at()

    def apply(name: str, value: JsonScalar) -> None:
        audit = engine.on_control(control(ControlCommand.SET_LIMIT, name=name, value=value, ts=clock.now_ns()))
        assert audit.reason == ControlReason.APPLIED, audit.detail

    apply("vol_threshold.BTC", 0.07)
    assert moves(engine, clock, BTC, 9, [0.06]) == [False]
    apply("vol_hour_multiplier.10", 0.5)  # 3.5 % at 10:00 only
    assert moves(engine, clock, BTC, 10, [0.04]) == [True]
    apply("vol_halt_ns", 300 * S)
    apply("vol_window_bars", 2)
    (switch,) = mark(engine, clock, candle(BTC, 11, 104.0, 108.0)).engaged  # 2 bars: 100 -> 108, 8 % > 7 %
    assert switch.expires_at_ns == T0 + 12 * H + 300 * S
    apply("vol_breaker_mode", "range")
    assert len(mark(engine, clock, candle(BTC, 12, 104.0, 104.0, wide=0.04)).engaged) == 1  # range 8 % > 7 %


@pytest.mark.parametrize(
    ("name", "value", "reason", "detail"),
    [
        ("vol_breaker_mode", "sideways", ControlReason.INVALID_VALUE, "not one of ['return', 'range']"),
        ("vol_breaker_mode", 1, ControlReason.INVALID_VALUE, "needs one of"),
        ("vol_threshold.BTC", 0, ControlReason.INVALID_VALUE, "vol_threshold.BTC=0.0 outside (0.0, 10.0]"),
        ("vol_threshold.ETH", -0.05, ControlReason.INVALID_VALUE, "outside"),
        ("vol_threshold.BTC", "high", ControlReason.INVALID_VALUE, "needs a number"),
        ("vol_threshold.DOGE", 0.1, ControlReason.UNKNOWN_LIMIT, "not a traded symbol"),
        ("vol_threshold.", 0.1, ControlReason.UNKNOWN_LIMIT, "not a symbol or asset"),
        ("vol_threshold_default", float("nan"), ControlReason.INVALID_VALUE, "finite"),
        ("vol_hour_multiplier.24", 1.0, ControlReason.UNKNOWN_LIMIT, "0 <= first <= last <= 23"),
        ("vol_hour_multiplier.07-03", 1.0, ControlReason.UNKNOWN_LIMIT, "0 <= first <= last <= 23"),
        ("vol_hour_multiplier.night", 1.0, ControlReason.UNKNOWN_LIMIT, "HH or HH-HH"),
        ("vol_hour_multiplier.00-07", 0, ControlReason.INVALID_VALUE, "vol_hour_multiplier.00=0.0 outside"),
        ("vol_window_bars", -1, ControlReason.INVALID_VALUE, "vol_window_bars=-1 outside [0, 100000]"),
        ("vol_window_bars", 2.5, ControlReason.INVALID_VALUE, "needs an integer"),
        ("vol_window_ns", 0, ControlReason.INVALID_VALUE, "vol_window_ns=0 outside (0"),
        ("vol_halt_ns", 0, ControlReason.INVALID_VALUE, "vol_halt_ns=0 outside (0"),
        ("vol_halt_ns", 31 * DAY, ControlReason.INVALID_VALUE, "outside"),
        ("vol_halt_ns", True, ControlReason.INVALID_VALUE, "needs a number"),
        ("vol_hour_multipliers", 1.0, ControlReason.UNKNOWN_LIMIT, "not settable"),
    ],
)
def test_invalid_breaker_set_limit_then_refused_with_the_reason_and_nothing_changes(
    name: str, value: JsonScalar, reason: ControlReason, detail: str
) -> None:
    engine, clock = engine_at()
    config = engine.config
    audit = engine.on_control(control(ControlCommand.SET_LIMIT, name=name, value=value, ts=clock.now_ns()))
    assert (audit.outcome, audit.reason) == (AuditOutcome.REJECTED, reason)
    assert detail in audit.detail
    assert engine.config is config and audit.config_hash_after == audit.config_hash_before


# ---------------------------------------------------------------------------
# Through the trading core: runtime changes audited, state carried by the checkpoint
# ---------------------------------------------------------------------------


def rising(symbol: str, start_hour: int, n: int, step: float = 0.02) -> list[Bar]:
    price, out = 100.0, []
    for i in range(n):
        out.append(candle(symbol, start_hour + i, price, price * (1 + step)))
        price *= 1 + step
    return out


def _wire(records: tuple[object, ...]) -> list[bytes]:
    return [type(r).__name__.encode() + b":" + codec_for(type(r)).encode(r) for r in records]  # type: ignore[arg-type]


def test_core_set_limit_then_audit_record_names_the_effective_risk_config_hash() -> None:
    core = TradingCore(TradingConfig(), KEYRING)
    core.on_bar(candle(BTC, 9, 100.0, 100.0))
    before = core.risk.config.config_hash()
    step = core.on_control(set_limit("vol_window_bars", 3, ts=core.clock.now_ns(), keyring=KEYRING))
    assert step.audit is not None and step.audit.reason == ControlReason.APPLIED
    (record,) = step.records
    assert record.config_hash_before == before  # type: ignore[attr-defined]
    assert record.config_hash_after == core.risk.config.config_hash() != before  # type: ignore[attr-defined]


def test_checkpoint_mid_window_then_restored_breaker_trips_exactly_like_the_uninterrupted_core() -> None:
    bars = rising(BTC, 9, 4)
    core = TradingCore(TradingConfig(risk=RiskConfig(vol_window_bars=3)), KEYRING)
    for bar in bars[:2]:
        assert core.on_bar(bar).engaged == ()
    for i, (name, value) in enumerate((("vol_threshold.BTC", 0.055), ("vol_halt_ns", H))):
        step = core.on_control(set_limit(name, value, ts=core.clock.now_ns(), keyring=KEYRING, nonce=f"cp-{i}"))
        assert step.audit is not None and step.audit.reason == ControlReason.APPLIED
    cp = seal(core, config_hash="h1", offsets={"market.bars": {0: 2}}, events_applied=5, keyring=KEYRING)
    restored = open_checkpoint(cp, KEYRING, account="paper", config_hash="h1")
    assert restored.risk.config == core.risk.config and restored.risk.config.vol_window_bars == 3
    assert restored.risk.breaker.window(BTC, "1h") == core.risk.breaker.window(BTC, "1h") != ()
    for bar in bars[2:]:
        whole, again = core.on_bar(bar), restored.on_bar(bar)
        assert _wire(whole.records) == _wire(again.records)
        assert whole.engaged == again.engaged != ()  # +6.1 % over 3 bars > 5.5 %
    assert restored.active_kill_switches() == core.active_kill_switches()
    (switch,) = restored.active_kill_switches()
    assert switch.expires_at_ns == T0 + 14 * H  # the second trip (13:00 close) + the 1 h halt set at runtime
    # and the engaged halt itself survives a checkpoint taken while it is in force
    cp = seal(restored, config_hash="h1", offsets={"market.bars": {0: 4}}, events_applied=7, keyring=KEYRING)
    again = open_checkpoint(cp, KEYRING, account="paper", config_hash="h1")
    assert again.active_kill_switches() == restored.active_kill_switches()


# ---------------------------------------------------------------------------
# Defaults from the environment
# ---------------------------------------------------------------------------


def test_documented_risk_variable_defaults_then_exactly_the_code_defaults() -> None:
    documented = {v.name: v.default for v in VARIABLES}
    env = {var: documented[var] for var in RISK_VARIABLES.values()}
    assert risk_from_env(env) == RiskConfig() == risk_from_env({})


def test_risk_variables_then_set_the_breaker_and_the_trading_config_hash() -> None:
    env = {
        "TRADEFLOW_RISK_VOL_BREAKER_MODE": "range",
        "TRADEFLOW_RISK_VOL_THRESHOLDS": "BTC=0.04,SOL/USDT=0.1",
        "TRADEFLOW_RISK_VOL_THRESHOLD_DEFAULT": "0.09",
        "TRADEFLOW_RISK_VOL_HOUR_MULTIPLIERS": "0-11=1.5,12-23=1",
        "TRADEFLOW_RISK_VOL_WINDOW_BARS": "4",
        "TRADEFLOW_RISK_VOL_WINDOW_NS": str(2 * H),
        "TRADEFLOW_RISK_VOL_REFERENCE_TIMEFRAME_NS": str(4 * H),
        "TRADEFLOW_RISK_VOL_HALT_NS": str(90 * S),
        "TRADEFLOW_TRADING_SYMBOLS": "BTC/USDT,SOL/USDT",
    }
    risk = TradingSettings.from_env(env).config().risk
    assert risk.vol_breaker_mode is BreakerMode.RANGE and dict(risk.vol_thresholds) == {"BTC": 0.04, "SOL/USDT": 0.1}
    assert risk.vol_hour_multipliers == (1.5,) * 12 + (1.0,) * 12 and risk.vol_threshold_default == 0.09
    assert (risk.vol_window_bars, risk.vol_window_ns, risk.vol_reference_timeframe_ns, risk.vol_halt_ns) == (
        4,
        2 * H,
        4 * H,
        90 * S,
    )
    assert risk.allowed_symbols == (BTC, "SOL/USDT")
    from agents.confighash import stable_config_hash

    plain = TradingSettings.from_env({"TRADEFLOW_TRADING_SYMBOLS": "BTC/USDT,SOL/USDT"}).config()
    assert stable_config_hash(TradingSettings.from_env(env).config()) != stable_config_hash(plain)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("TRADEFLOW_RISK_VOL_BREAKER_MODE", "sideways", "not one of"),
        ("TRADEFLOW_RISK_VOL_THRESHOLDS", "BTC:0.05", "not KEY=NUMBER"),
        ("TRADEFLOW_RISK_VOL_THRESHOLDS", "BTC=0.05,BTC=0.06", "given twice"),
        ("TRADEFLOW_RISK_VOL_THRESHOLDS", "BTC=-1", "outside"),
        ("TRADEFLOW_RISK_VOL_HOUR_MULTIPLIERS", "00-07=1.4,08-16=1.0", "no value for UTC hours"),
        ("TRADEFLOW_RISK_VOL_HOUR_MULTIPLIERS", "00-12=1.4,12-23=1.0", "hour 12 given twice"),
        ("TRADEFLOW_RISK_VOL_WINDOW_BARS", "two", "must be an integer"),
        ("TRADEFLOW_RISK_VOL_HALT_NS", "0", "vol_halt_ns=0 outside"),
    ],
)
def test_bad_risk_variable_then_config_error_naming_it(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=var) as caught:
        TradingSettings.from_env({var: value})
    assert message in str(caught.value)
