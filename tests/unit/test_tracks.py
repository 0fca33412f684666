"""Tracks as configuration (agents/tracks.py): the liquid track (BTC, ETH, SOL) trades, the vc
track is monitor-only. A vc signal is sized to nothing with the reason ``monitor_only_track`` and
no order (paper and live cores alike); a SOL signal orders; risk refuses any vc order."""

from __future__ import annotations

import dataclasses

import pytest

from agents.clock import EventClock
from agents.control.signing import ControlVerifier
from agents.portfolio.engine import PortfolioState
from agents.risk.config import DEFAULT_ALLOWED_SYMBOLS, RiskConfig
from agents.risk.engine import RiskEngine, RiskReason
from agents.strategy.config import StrategyConfig
from agents.strategy.engine import SizingReason, StrategyEngine
from agents.tracks import DEFAULT_LIQUID_SYMBOLS, DEFAULT_VC_SYMBOLS, TrackMode, Tracks
from agents.trading.core import TradingCore
from agents.trading.settings import TradingSettings
from backtest.runs import BacktestRequest
from runtime.env import VARIABLES, ConfigError
from tests import builders
from tests.unit.test_trading_determinism import KEYRING, load_bars, stub_signal
from topics.records import Bar, OrderIntent, RiskDecision, RiskVerdict, Signal, Timeframe

SOL, SUI = "SOL/USDT", "SUI/USDT"
H = Timeframe.H1.nanos


def _default(name: str) -> str:
    return next(v.default for v in VARIABLES if v.name == name)


# ---------------------------------------------------------------------------
# the definition
# ---------------------------------------------------------------------------


def test_default_tracks_then_liquid_is_btc_eth_sol_spot_and_perp_and_vc_is_monitor_only() -> None:
    tracks = Tracks.from_env({})
    assert tracks.liquid.mode is TrackMode.GATED and tracks.liquid.may_trade
    assert tracks.liquid.symbols == tuple(f"{b}/USDT" for b in ("BTC", "ETH", "SOL")) + tuple(
        f"{b}/USDT:USDT" for b in ("BTC", "ETH", "SOL")
    )
    assert tracks.vc.mode is TrackMode.MONITOR and not tracks.vc.may_trade
    assert tracks.tradeable_symbols == DEFAULT_LIQUID_SYMBOLS == DEFAULT_ALLOWED_SYMBOLS
    assert tracks.monitor_only_symbols == DEFAULT_VC_SYMBOLS
    assert tracks.collected_symbols("spot") == ("BTC/USDT", "ETH/USDT", SOL, *DEFAULT_VC_SYMBOLS)
    assert tracks.collected_symbols("swap") == ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
    # the registry documents the code's defaults
    assert ",".join(DEFAULT_LIQUID_SYMBOLS) == _default("TRADEFLOW_TRACK_LIQUID_SYMBOLS")
    assert ",".join(DEFAULT_VC_SYMBOLS) == _default("TRADEFLOW_TRACK_VC_SYMBOLS")
    assert ",".join(TradingSettings.from_env({}).config().risk.allowed_symbols) == _default("TRADEFLOW_TRADING_SYMBOLS")


def test_track_variables_then_replace_the_lists_and_bad_ones_are_config_errors() -> None:
    tracks = Tracks.from_env(
        {"TRADEFLOW_TRACK_LIQUID_SYMBOLS": "BTC/USDT, SOL/USDT", "TRADEFLOW_TRACK_VC_SYMBOLS": "DOGE/USDT"}
    )
    assert tracks.liquid.symbols == ("BTC/USDT", SOL) and tracks.vc.symbols == ("DOGE/USDT",)
    assert Tracks.from_env({"TRADEFLOW_TRACK_VC_SYMBOLS": "none"}).vc.symbols == ()
    with pytest.raises(ConfigError, match="both the liquid and the vc track"):
        Tracks.from_env({"TRADEFLOW_TRACK_VC_SYMBOLS": "SOL/USDT"})
    with pytest.raises(ConfigError, match="TRADEFLOW_TRACK_VC_SYMBOLS"):
        Tracks.from_env({"TRADEFLOW_TRACK_VC_SYMBOLS": "SUIUSDT"})
    with pytest.raises(ConfigError, match="TRADEFLOW_TRACK_LIQUID_SYMBOLS"):
        Tracks.from_env({"TRADEFLOW_TRACK_LIQUID_SYMBOLS": "none"})


def test_gate_track_then_monitor_only_by_name_or_when_every_run_symbol_is_on_the_vc_track() -> None:
    tracks = Tracks()
    assert tracks.gate_track_monitor_only("vc") and not tracks.gate_track_monitor_only("liquid")
    assert tracks.gate_track_monitor_only("tanh-sizer:m1", ["SUI/USDT", "ARB/USDT"])
    assert not tracks.gate_track_monitor_only("tanh-sizer:m1", ["SUI/USDT", SOL])  # it trades SOL: gated
    assert not tracks.gate_track_monitor_only("tanh-sizer:m1", [])  # no runs: nothing says monitor-only


# ---------------------------------------------------------------------------
# the engines
# ---------------------------------------------------------------------------


def _bar(symbol: str, ts: int, price: float) -> Bar:
    return builders.bar(symbol=symbol, open_time=ts - H, open=price, volume=1e3, ts_event=ts)


def test_vc_signal_then_monitor_only_track_reason_and_no_intent_from_the_strategy() -> None:
    now = 1_609_459_200_000_000_000
    engine = StrategyEngine(StrategyConfig(), EventClock(now))
    for symbol in (SOL, SUI):
        engine.on_bar(_bar(symbol, now, 20.0))
    engine.on_portfolio(PortfolioState.initial(100_000.0, now))

    def sig(symbol: str) -> Signal:
        return builders.signal(score=0.9, symbol=symbol, ts=now, expected_return=0.05, feature_event_id=symbol)

    vc = engine.on_signal(sig(SUI))
    assert vc.reason is SizingReason.MONITOR_ONLY_TRACK and vc.intent is None
    sol = engine.on_signal(sig(SOL))
    assert sol.reason is SizingReason.ORDER and sol.intent is not None and sol.intent.symbol == SOL
    # the check is the config's: the same signal on an engine without a vc track orders
    open_engine = StrategyEngine(StrategyConfig(monitor_only_symbols=()), EventClock(now))
    open_engine.on_bar(_bar(SUI, now, 20.0))
    open_engine.on_portfolio(PortfolioState.initial(100_000.0, now))
    assert open_engine.on_signal(sig(SUI)).reason is SizingReason.ORDER


def test_vc_intent_from_any_strategy_then_risk_rejects_it_as_monitor_only() -> None:
    now = 1_609_459_200_000_000_000
    risk = RiskEngine(RiskConfig(), EventClock(now), ControlVerifier(KEYRING))
    risk.on_mark(_bar(SUI, now, 2.0))
    risk.on_portfolio(PortfolioState.initial(100_000.0, now))
    intent = builders.intent(symbol=SUI, quantity=10.0, ts=now)
    decision = risk.on_intent(intent)
    assert decision.verdict is RiskVerdict.REJECTED
    assert RiskReason.MONITOR_ONLY_TRACK.value in decision.reasons
    assert RiskReason.UNKNOWN_SYMBOL.value not in decision.reasons
    with pytest.raises(ValueError, match="monitor-only track"):
        RiskConfig(allowed_symbols=("BTC/USDT", SUI))


# ---------------------------------------------------------------------------
# the trading agent's configuration: paper and live (external execution) cores
# ---------------------------------------------------------------------------

LIVE_ENV = {"TRADEFLOW_EXECUTION_ADAPTER": "ccxt", "TRADEFLOW_EXECUTION_VENUE": "binance"}


@pytest.mark.parametrize("env", [{}, LIVE_ENV], ids=["paper", "live"])
def test_agent_config_then_vc_signal_records_its_reason_and_sol_signal_orders(env: dict[str, str]) -> None:
    core = TradingCore(TradingSettings.from_env(env).config(), KEYRING)
    bars = load_bars()
    for symbol in (SOL, SUI):
        for i in range(10):
            core.on_bar(dataclasses.replace(bars[i], symbol=symbol))
    base = dataclasses.replace(stub_signal(bars, 9), score=0.9, expected_return=0.02, shadow=False)

    vc = core.on_signal(dataclasses.replace(base, symbol=SUI, event_id="vc-signal"))
    assert vc.sizing is not None and vc.sizing.reason is SizingReason.MONITOR_ONLY_TRACK
    assert vc.records == () and vc.to_submit == ()  # no intent, no decision, no order

    sol = core.on_signal(dataclasses.replace(base, symbol=SOL, event_id="sol-signal"))
    assert sol.sizing is not None and sol.sizing.reason is SizingReason.ORDER
    (intent,) = [r for r in sol.records if isinstance(r, OrderIntent)]
    (decision,) = [r for r in sol.records if isinstance(r, RiskDecision)]
    assert intent.symbol == SOL and decision.verdict is not RiskVerdict.REJECTED, decision.reasons
    if env:  # live: the order goes to the adapter
        assert [i.symbol for i, _, _ in sol.to_submit] == [SOL]


def test_traded_symbols_naming_a_vc_symbol_then_the_agent_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="TRADEFLOW_TRADING_SYMBOLS"):
        TradingSettings.from_env({"TRADEFLOW_TRADING_SYMBOLS": f"BTC/USDT,{SUI}"}).config()
    # a vc track of other symbols frees SUI to trade
    other = TradingSettings.from_env({"TRADEFLOW_TRADING_SYMBOLS": SUI, "TRADEFLOW_TRACK_VC_SYMBOLS": "DOGE/USDT"})
    assert other.config().risk.allowed_symbols == (SUI,)
    assert other.config().strategy.monitor_only_symbols == ("DOGE/USDT",)


def test_backtest_of_vc_symbols_then_simulates_them_and_a_liquid_one_keeps_the_default_config() -> None:
    def request(symbol: str) -> BacktestRequest:
        return BacktestRequest(symbols=(symbol,), start_ns=0, end_ns=1000 * H, models=("m@1",))

    vc = request(SUI).trading_config()
    assert SUI not in vc.strategy.monitor_only_symbols and SUI not in vc.risk.monitor_only_symbols
    liquid = request(SOL).trading_config()
    assert liquid.strategy.monitor_only_symbols == StrategyConfig().monitor_only_symbols


def test_collect_without_symbols_then_reads_the_tracks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.cli.main import build_parser

    args = build_parser().parse_args(["collect", "--exchange", "binance"])
    assert args.symbols is None  # the default is the tracks', resolved when the command runs
    monkeypatch.setenv("TRADEFLOW_TRACK_VC_SYMBOLS", "SUIUSDT")
    assert args.fn(args) == 2
    assert "TRADEFLOW_TRACK_VC_SYMBOLS" in capsys.readouterr().err
