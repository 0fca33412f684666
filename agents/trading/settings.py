"""The trading agent's configuration (``TRADEFLOW_TRADING_*``, ``TRADEFLOW_STRATEGY_*``,
``TRADEFLOW_RISK_*``, ``TRADEFLOW_EXECUTION_*``, ``TRADEFLOW_EXCHANGE_*``), parsed once at
start-up from the mapping passed in. The strategy's parameters of
:data:`~agents.strategy.config.SETTABLE_PARAMS` and the volatility breaker's
(:data:`RISK_VARIABLES`) are set here at start and by a signed ``set_limit`` at runtime.

The audit builds its configuration from the same settings, so it replays in
the mode that traded. Every error is a :class:`~runtime.env.ConfigError`
(a ``ValueError``) naming the variable; credential values never appear in
one. Dry run is the default: orders reach a venue only with an explicit
``TRADEFLOW_EXECUTION_DRY_RUN=0``, which also needs credentials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.execution.paper import PaperConfig
from agents.risk.config import (
    SETTABLE_LIMITS,
    RiskConfig,
    hour_multipliers_from_text,
    thresholds_from_text,
)
from agents.strategy.config import SETTABLE_PARAMS, StrategyConfig
from agents.tracks import Tracks
from agents.trading.core import ExecutionMode, TradingConfig
from runtime.env import ConfigError, env_float, env_int, env_list, env_str, read_secret
from topics.records import Timeframe

if TYPE_CHECKING:
    from agents.execution.ccxt_live import LiveExecutionConfig

__all__ = [
    "ADAPTERS",
    "RISK_VARIABLES",
    "STRATEGY_VARIABLES",
    "ExecutionSettings",
    "TradingSettings",
    "load_exchange_credentials",
    "risk_from_env",
    "strategy_from_env",
]

ADAPTERS = ("paper", "ccxt")

_DRY_RUN = "TRADEFLOW_EXECUTION_DRY_RUN"

#: ccxt credential key -> environment variable (each also readable from ``<NAME>_FILE``).
_CREDENTIAL_VARS = {
    "apiKey": "TRADEFLOW_EXCHANGE_API_KEY",
    "secret": "TRADEFLOW_EXCHANGE_SECRET",
    "password": "TRADEFLOW_EXCHANGE_PASSWORD",
}


#: StrategyConfig field -> the variable setting it at start: one per parameter of
#: :data:`~agents.strategy.config.SETTABLE_PARAMS` (a test keeps the two equal).
STRATEGY_VARIABLES: Mapping[str, str] = {
    "entry_threshold": "TRADEFLOW_STRATEGY_ENTRY_THRESHOLD",
    "exit_threshold": "TRADEFLOW_STRATEGY_EXIT_THRESHOLD",
    "max_position_fraction": "TRADEFLOW_STRATEGY_MAX_POSITION_FRACTION",
    "min_order_notional": "TRADEFLOW_STRATEGY_MIN_ORDER_NOTIONAL",
    "rebalance_band": "TRADEFLOW_STRATEGY_REBALANCE_BAND",
    "cost_multiple": "TRADEFLOW_STRATEGY_COST_MULTIPLE",
    "max_signal_age_ns": "TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS",
}


def strategy_from_env(env: Mapping[str, str]) -> StrategyConfig:
    """The strategy config with the ``TRADEFLOW_STRATEGY_*`` values set (unset: the defaults)."""
    updates: dict[str, Any] = {
        name: (env_int if SETTABLE_PARAMS[name].kind is int else env_float)(var, 0, env)
        for name, var in STRATEGY_VARIABLES.items()
        if env_str(var, "", env)
    }
    try:
        return StrategyConfig(**updates)
    except ValueError as exc:
        names = ", ".join(STRATEGY_VARIABLES[n] for n in sorted(updates))
        raise ConfigError(f"{names}: {exc}") from None


#: RiskConfig field -> the variable setting the volatility breaker's default at start (each also
#: settable at runtime: ``set_limit <field>``; the tables per entry, see :data:`KEYED_LIMITS`).
RISK_VARIABLES: Mapping[str, str] = {
    "vol_breaker_mode": "TRADEFLOW_RISK_VOL_BREAKER_MODE",
    "vol_thresholds": "TRADEFLOW_RISK_VOL_THRESHOLDS",
    "vol_threshold_default": "TRADEFLOW_RISK_VOL_THRESHOLD_DEFAULT",
    "vol_hour_multipliers": "TRADEFLOW_RISK_VOL_HOUR_MULTIPLIERS",
    "vol_window_bars": "TRADEFLOW_RISK_VOL_WINDOW_BARS",
    "vol_window_ns": "TRADEFLOW_RISK_VOL_WINDOW_NS",
    "vol_reference_timeframe_ns": "TRADEFLOW_RISK_VOL_REFERENCE_TIMEFRAME_NS",
    "vol_halt_ns": "TRADEFLOW_RISK_VOL_HALT_NS",
}


def risk_from_env(env: Mapping[str, str]) -> RiskConfig:
    """The risk config with the ``TRADEFLOW_RISK_*`` values set (unset: the defaults)."""
    updates: dict[str, Any] = {}
    for name, var in RISK_VARIABLES.items():
        text = env_str(var, "", env)
        if not text:
            continue
        try:
            if name == "vol_thresholds":
                updates[name] = thresholds_from_text(text)
            elif name == "vol_hour_multipliers":
                updates[name] = hour_multipliers_from_text(text)
            elif name == "vol_breaker_mode":
                updates[name] = text
            elif SETTABLE_LIMITS[name].kind is int:
                updates[name] = env_int(var, 0, env)
            else:
                updates[name] = env_float(var, 0.0, env)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
    try:
        return RiskConfig(**updates)
    except ValueError as exc:
        names = ", ".join(RISK_VARIABLES[n] for n in sorted(updates))
        raise ConfigError(f"{names}: {exc}") from None


def load_exchange_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """The exchange credentials from the environment or files (``{}`` when none is set).

    Errors name variables and paths, never values.
    """
    out: dict[str, str] = {}
    for key, var in _CREDENTIAL_VARS.items():
        value = read_secret(var, env)
        if value:
            out[key] = value
    return out


def _dry_run(env: Mapping[str, str]) -> bool:
    """``TRADEFLOW_EXECUTION_DRY_RUN`` (default on).

    Stricter than :func:`runtime.env.env_flag` on purpose: the switch that
    sends real orders takes only ``1/true/yes`` or ``0/false/no``.
    """
    text = env_str(_DRY_RUN, "", env).lower()
    if not text:
        return True
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ConfigError(f"{_DRY_RUN}={text!r}: expected 1 or 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionSettings:
    """The ccxt adapter's environment (``TRADEFLOW_EXECUTION_*``), credentials excluded.

    A markets file pins the market rules a dry run validates against; live
    sending always loads the venue's current markets (stale precision or
    limits would reject or mis-size real orders).
    """

    venue: str
    market: str = "spot"
    dry_run: bool = True
    leverage: int | None = None
    margin_mode: str = "cross"
    position_mode: str = "one_way"
    markets_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExecutionSettings:
        venue = env_str("TRADEFLOW_EXECUTION_VENUE", "", env)
        if not venue:
            raise ConfigError(
                "TRADEFLOW_EXECUTION_ADAPTER=ccxt: ccxt execution is not wired to a venue; set "
                "TRADEFLOW_EXECUTION_VENUE (binance, bitget or coinbase)"
            )
        leverage_set = bool(env_str("TRADEFLOW_EXECUTION_LEVERAGE", "", env))
        leverage = env_int("TRADEFLOW_EXECUTION_LEVERAGE", 0, env) if leverage_set else None
        settings = cls(
            venue=venue,
            market=env_str("TRADEFLOW_EXECUTION_MARKET", "spot", env),
            dry_run=_dry_run(env),
            leverage=leverage,
            margin_mode=env_str("TRADEFLOW_EXECUTION_MARGIN_MODE", "cross", env),
            position_mode=env_str("TRADEFLOW_EXECUTION_POSITION_MODE", "one_way", env),
            markets_file=env_str("TRADEFLOW_EXECUTION_MARKETS_FILE", "", env) or None,
        )
        if settings.markets_file is not None and not settings.dry_run:
            raise ConfigError(
                "TRADEFLOW_EXECUTION_MARKETS_FILE pins market rules for dry runs only; live sending "
                "(TRADEFLOW_EXECUTION_DRY_RUN=0) loads the venue's current markets"
            )
        settings.live_config()  # the adapter's own validation (venue x market, leverage, modes)
        return settings

    def live_config(self) -> LiveExecutionConfig:
        from agents.execution.ccxt_live import LiveExecutionConfig, MarginMode, PositionMode, VenueMarket

        try:
            return LiveExecutionConfig(
                exchange_id=self.venue,
                market_type=VenueMarket(self.market),
                dry_run=self.dry_run,
                leverage=self.leverage,
                margin_mode=MarginMode(self.margin_mode),
                position_mode=PositionMode(self.position_mode),
            )
        except ValueError as exc:
            raise ConfigError(f"TRADEFLOW_EXECUTION_*: {exc}") from None

    @property
    def adapter(self) -> str:
        """The adapter's name on its records and metrics: ``ccxt:<venue>:<market>``."""
        return f"ccxt:{self.venue}:{self.market}"


@dataclass(frozen=True, slots=True)
class TradingSettings:
    """The agent's environment, parsed once at start-up.

    ``adapter``: ``paper`` (in-process fills) or ``ccxt`` (``execution`` set:
    the core runs in external mode, see :mod:`agents.trading.core`).
    """

    account: str = "paper"
    adapter: str = "paper"
    symbols: tuple[str, ...] = ()
    timeframes: tuple[Timeframe, ...] = (Timeframe.H1,)
    execution: ExecutionSettings | None = None
    #: How long a signal that arrived before its bar waits for it (arrival time, seconds).
    signal_bar_wait_s: float = 60.0
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    #: The risk limits (the breaker's from ``TRADEFLOW_RISK_*``); ``symbols`` replaces ``allowed_symbols``.
    risk: RiskConfig = dataclasses.field(default_factory=RiskConfig)
    #: The liquid (may trade) and vc (monitor-only) tracks (``TRADEFLOW_TRACK_*``, :func:`_with_tracks`).
    tracks: Tracks = dataclasses.field(default_factory=Tracks)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TradingSettings:
        adapter = env_str("TRADEFLOW_EXECUTION_ADAPTER", "paper", env)
        if adapter not in ADAPTERS:
            raise ConfigError(f"TRADEFLOW_EXECUTION_ADAPTER={adapter!r}: the trading agent supports {list(ADAPTERS)}")
        execution = ExecutionSettings.from_env(env) if adapter == "ccxt" else None
        try:
            timeframes = tuple(Timeframe(t) for t in env_list("TRADEFLOW_TRADING_TIMEFRAMES", (), env))
        except ValueError as exc:
            raise ConfigError(f"TRADEFLOW_TRADING_TIMEFRAMES: {exc}") from None
        return cls(
            account=env_str("TRADEFLOW_TRADING_ACCOUNT", "paper", env),
            adapter=adapter,
            symbols=env_list("TRADEFLOW_TRADING_SYMBOLS", (), env),
            timeframes=timeframes or (Timeframe.H1,),
            execution=execution,
            signal_bar_wait_s=env_float("TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S", 60.0, env, minimum=0.0),
            strategy=strategy_from_env(env),
            risk=risk_from_env(env),
            tracks=Tracks.from_env(env),
        )

    def config(self) -> TradingConfig:
        strategy, risk = _with_tracks(self.strategy, self.risk, self.tracks, self.symbols)
        config = TradingConfig(
            account=self.account,
            timeframes=self.timeframes,
            strategy=strategy,
            risk=risk,
            signal_bar_wait_ns=round(self.signal_bar_wait_s * 1e9),
        )
        if self.execution is None:
            return config
        # paper.adapter labels the refusals the core emits for orders it never sends
        return dataclasses.replace(
            config, execution=ExecutionMode.EXTERNAL, paper=PaperConfig(adapter=self.execution.adapter)
        )


# -- tracks (agents/tracks.py) ------------------------------------------------------------------


def _with_tracks(
    strategy: StrategyConfig, risk: RiskConfig, tracks: Tracks, symbols: tuple[str, ...]
) -> tuple[StrategyConfig, RiskConfig]:
    """Sizing and risk configs that trade ``symbols`` (unset: the gated tracks' symbols) and never a
    monitor-only track's; a traded symbol on a monitor-only track is a ConfigError."""
    monitor = tracks.monitor_only_symbols
    try:
        risk = dataclasses.replace(
            risk, allowed_symbols=symbols or tracks.tradeable_symbols, monitor_only_symbols=monitor
        )
    except ValueError as exc:
        raise ConfigError(f"TRADEFLOW_TRADING_SYMBOLS / TRADEFLOW_TRACK_*_SYMBOLS: {exc}") from None
    return dataclasses.replace(strategy, monitor_only_symbols=monitor), risk
