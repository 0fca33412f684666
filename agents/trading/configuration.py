"""The trading engines' settings from a TOML file and the environment: defaults < file < environment.

Every field of :class:`~agents.strategy.config.StrategyConfig`, :class:`~agents.risk.config.RiskConfig`
(the volatility breaker's included) and :class:`~agents.execution.paper.PaperConfig` but the
version tags, the paper adapter's name and the symbol lists (``TRADEFLOW_TRADING_SYMBOLS``, the tracks) is
set by ``[strategy]`` / ``[risk]`` / ``[paper]`` keys of the file named by
``TRADEFLOW_TRADING_CONFIG`` and by ``TRADEFLOW_<SECTION>_<FIELD>`` (:data:`FIELD_VARIABLES`), a
variable beating the file. An unknown section or key, a value of the wrong type and a config that
breaks an invariant are :class:`~runtime.env.ConfigError` naming the key or variable (the agent
exits 2). :func:`effective_configuration` is what the agent logs at start and ``tradeflow trading
config`` prints: every value with where it came from, and the hash the checkpoint is keyed by.

Value syntax (file / environment): numbers and strings as such; booleans ``true`` / ``1``;
per-key tables as TOML tables / ``KEY=VALUE,KEY=VALUE``; 24-hour tables as a TOML array of 24
numbers, a table of UTC hour bands (``"00-07" = 1.4``) or the same bands as text.
Design: docs/trading_agent.md#configuration-file
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.confighash import stable_config_hash
from agents.execution.paper import PaperConfig
from agents.risk.config import RiskConfig, hour_multipliers_from_text, thresholds_from_text
from agents.strategy.config import StrategyConfig
from runtime.env import ConfigError, env_str

__all__ = [
    "CONFIG_FILE_VARIABLE",
    "FIELD_VARIABLES",
    "SECTIONS",
    "EngineSettings",
    "effective_configuration",
    "load_engine_settings",
    "plain",
]

CONFIG_FILE_VARIABLE = "TRADEFLOW_TRADING_CONFIG"

#: section -> the config class its keys set.
SECTIONS: Mapping[str, type[Any]] = {"strategy": StrategyConfig, "risk": RiskConfig, "paper": PaperConfig}

#: section -> field -> the variable that sets it (a test keeps this equal to the configurable fields).
FIELD_VARIABLES: Mapping[str, Mapping[str, str]] = {
    "strategy": {
        "strategy_id": "TRADEFLOW_STRATEGY_STRATEGY_ID",
        "track": "TRADEFLOW_STRATEGY_TRACK",
        "curve_gain": "TRADEFLOW_STRATEGY_CURVE_GAIN",
        "entry_threshold": "TRADEFLOW_STRATEGY_ENTRY_THRESHOLD",
        "exit_threshold": "TRADEFLOW_STRATEGY_EXIT_THRESHOLD",
        "max_position_fraction": "TRADEFLOW_STRATEGY_MAX_POSITION_FRACTION",
        "position_cap_notional": "TRADEFLOW_STRATEGY_POSITION_CAP_NOTIONAL",
        "default_position_cap_notional": "TRADEFLOW_STRATEGY_DEFAULT_POSITION_CAP_NOTIONAL",
        "min_order_notional": "TRADEFLOW_STRATEGY_MIN_ORDER_NOTIONAL",
        "rebalance_band": "TRADEFLOW_STRATEGY_REBALANCE_BAND",
        "symbol_vol_bucket": "TRADEFLOW_STRATEGY_SYMBOL_VOL_BUCKET",
        "default_vol_bucket": "TRADEFLOW_STRATEGY_DEFAULT_VOL_BUCKET",
        "bucket_scale": "TRADEFLOW_STRATEGY_BUCKET_SCALE",
        "hour_scale": "TRADEFLOW_STRATEGY_HOUR_SCALE",
        "fee_bps": "TRADEFLOW_STRATEGY_FEE_BPS",
        "slippage_bps": "TRADEFLOW_STRATEGY_SLIPPAGE_BPS",
        "cost_multiple": "TRADEFLOW_STRATEGY_COST_MULTIPLE",
        "drawdown_warn": "TRADEFLOW_STRATEGY_DRAWDOWN_WARN",
        "drawdown_warn_scale": "TRADEFLOW_STRATEGY_DRAWDOWN_WARN_SCALE",
        "drawdown_reduce_only": "TRADEFLOW_STRATEGY_DRAWDOWN_REDUCE_ONLY",
        "drawdown_flat": "TRADEFLOW_STRATEGY_DRAWDOWN_FLAT",
        "max_signal_age_ns": "TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS",
        "quantity_decimals": "TRADEFLOW_STRATEGY_QUANTITY_DECIMALS",
        "max_seen_signals": "TRADEFLOW_STRATEGY_MAX_SEEN_SIGNALS",
        "pending_order_ttl_ns": "TRADEFLOW_STRATEGY_PENDING_ORDER_TTL_NS",
    },
    "risk": {
        "track": "TRADEFLOW_RISK_TRACK",
        "max_drawdown": "TRADEFLOW_RISK_MAX_DRAWDOWN",
        "drawdown_near_limit": "TRADEFLOW_RISK_DRAWDOWN_NEAR_LIMIT",
        "drawdown_warn": "TRADEFLOW_RISK_DRAWDOWN_WARN",
        "warn_size_scale": "TRADEFLOW_RISK_WARN_SIZE_SCALE",
        "daily_loss_limit": "TRADEFLOW_RISK_DAILY_LOSS_LIMIT",
        "consecutive_loss_limit": "TRADEFLOW_RISK_CONSECUTIVE_LOSS_LIMIT",
        "consecutive_loss_cooldown_ns": "TRADEFLOW_RISK_CONSECUTIVE_LOSS_COOLDOWN_NS",
        "strategy_consecutive_loss_limit": "TRADEFLOW_RISK_STRATEGY_CONSECUTIVE_LOSS_LIMIT",
        "strategy_consecutive_loss_cooldown_ns": "TRADEFLOW_RISK_STRATEGY_CONSECUTIVE_LOSS_COOLDOWN_NS",
        "intraday_drawdown_halt": "TRADEFLOW_RISK_INTRADAY_DRAWDOWN_HALT",
        "stop_loss": "TRADEFLOW_RISK_STOP_LOSS",
        "take_profit": "TRADEFLOW_RISK_TAKE_PROFIT",
        "vol_breaker_mode": "TRADEFLOW_RISK_VOL_BREAKER_MODE",
        "vol_thresholds": "TRADEFLOW_RISK_VOL_THRESHOLDS",
        "vol_threshold_default": "TRADEFLOW_RISK_VOL_THRESHOLD_DEFAULT",
        "vol_hour_multipliers": "TRADEFLOW_RISK_VOL_HOUR_MULTIPLIERS",
        "vol_window_bars": "TRADEFLOW_RISK_VOL_WINDOW_BARS",
        "vol_window_ns": "TRADEFLOW_RISK_VOL_WINDOW_NS",
        "vol_reference_timeframe_ns": "TRADEFLOW_RISK_VOL_REFERENCE_TIMEFRAME_NS",
        "vol_halt_ns": "TRADEFLOW_RISK_VOL_HALT_NS",
        "max_order_notional": "TRADEFLOW_RISK_MAX_ORDER_NOTIONAL",
        "max_symbol_notional": "TRADEFLOW_RISK_MAX_SYMBOL_NOTIONAL",
        "symbol_max_notional": "TRADEFLOW_RISK_SYMBOL_MAX_NOTIONAL",
        "max_orders_per_window": "TRADEFLOW_RISK_MAX_ORDERS_PER_WINDOW",
        "order_rate_window_ns": "TRADEFLOW_RISK_ORDER_RATE_WINDOW_NS",
        "pending_order_ttl_ns": "TRADEFLOW_RISK_PENDING_ORDER_TTL_NS",
        "max_price_deviation": "TRADEFLOW_RISK_MAX_PRICE_DEVIATION",
        "max_mark_age_ns": "TRADEFLOW_RISK_MAX_MARK_AGE_NS",
        "kill_switch_allows_reduce_only": "TRADEFLOW_RISK_KILL_SWITCH_ALLOWS_REDUCE_ONLY",
        "protective_strategy_id": "TRADEFLOW_RISK_PROTECTIVE_STRATEGY_ID",
    },
    "paper": {
        "fee_bps": "TRADEFLOW_PAPER_FEE_BPS",
        "slippage_bps": "TRADEFLOW_PAPER_SLIPPAGE_BPS",
        "impact_coefficient_bps": "TRADEFLOW_PAPER_IMPACT_COEFFICIENT_BPS",
        "max_participation": "TRADEFLOW_PAPER_MAX_PARTICIPATION",
        "max_retries": "TRADEFLOW_PAPER_MAX_RETRIES",
        "max_slippage_bps": "TRADEFLOW_PAPER_MAX_SLIPPAGE_BPS",
        "timeout_probability": "TRADEFLOW_PAPER_TIMEOUT_PROBABILITY",
        "default_timeout_probability": "TRADEFLOW_PAPER_DEFAULT_TIMEOUT_PROBABILITY",
        "seed": "TRADEFLOW_PAPER_SEED",
        "max_seen_orders": "TRADEFLOW_PAPER_MAX_SEEN_ORDERS",
    },
}

#: Fields no file or variable sets: version tags (a new version is a code change), the paper
#: adapter's name (set by the execution adapter) and the symbol lists (TRADEFLOW_TRADING_SYMBOLS and
#: the tracks, TRADEFLOW_TRACK_*).
NOT_CONFIGURABLE: Mapping[str, frozenset[str]] = {
    "strategy": frozenset({"version", "monitor_only_symbols"}),
    "risk": frozenset({"version", "allowed_symbols", "monitor_only_symbols"}),
    "paper": frozenset({"version", "adapter"}),
}

#: Tables of strings (the others hold numbers).
_TEXT_TABLES = frozenset({("strategy", "symbol_vol_bucket")})
#: 24-value tables: one value per UTC hour.
_HOUR_TABLES = frozenset({("risk", "vol_hour_multipliers"), ("strategy", "hour_scale")})


@dataclasses.dataclass(frozen=True, slots=True)
class EngineSettings:
    """The engines' configs and where each set value came from (``section.field`` -> file or variable)."""

    strategy: StrategyConfig
    risk: RiskConfig
    paper: PaperConfig
    file: str | None
    sources: Mapping[str, str]


def configurable_fields(section: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(SECTIONS[section]) if f.name not in NOT_CONFIGURABLE[section])


def load_engine_settings(env: Mapping[str, str]) -> EngineSettings:
    """Defaults, then the file of ``TRADEFLOW_TRADING_CONFIG``, then the variables; each config validated."""
    path = env_str(CONFIG_FILE_VARIABLE, "", env) or None
    from_file = _read_file(path) if path is not None else {}
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        defaults = cls()
        updates: dict[str, Any] = {}
        for name, raw in from_file.get(section, {}).items():
            where = f"{path} [{section}] {name}"
            updates[name] = _coerce(section, name, raw, getattr(defaults, name), where, text=False)
            sources[f"{section}.{name}"] = f"file {path}"
        for name, var in FIELD_VARIABLES[section].items():
            text = env_str(var, "", env)
            if text:
                updates[name] = _coerce(section, name, text, getattr(defaults, name), var, text=True)
                sources[f"{section}.{name}"] = f"env {var}"
        try:
            out[section] = cls(**updates)
        except (ValueError, TypeError) as exc:
            names = ", ".join(sources[f"{section}.{n}"] for n in sorted(updates))
            raise ConfigError(f"{names}: {exc}") from None
    return EngineSettings(
        strategy=out["strategy"], risk=out["risk"], paper=out["paper"], file=path, sources=dict(sorted(sources.items()))
    )


def _read_file(path: str) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc.strerror}"
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}={path}: cannot read it ({why})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}={path}: not TOML: {exc}") from None
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; the sections are {list(SECTIONS)}")
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        allowed = FIELD_VARIABLES[section]
        bad = sorted(k for k in table if k not in allowed)
        if bad:
            fixed = sorted(k for k in bad if k in NOT_CONFIGURABLE[section])
            hint = f" ({fixed} are not configurable)" if fixed else ""
            raise ConfigError(f"{path}: unknown key(s) {bad} in [{section}]{hint}; known: {sorted(allowed)}")
    return data


def _coerce(section: str, name: str, raw: Any, default: Any, where: str, *, text: bool) -> Any:
    """``raw`` (a TOML value, or a variable's text) as the type of the field's default; ConfigError naming ``where``."""
    try:
        return _convert(section, name, raw, default, text)
    except (ValueError, TypeError) as exc:
        sep = " " if str(exc).startswith("must be") else ": "  # "<VAR> must be an integer", as runtime.env says it
        raise ConfigError(f"{where}{sep}{exc}") from None


def _convert(section: str, name: str, raw: Any, default: Any, text: bool) -> Any:
    if (section, name) in _HOUR_TABLES:
        if isinstance(raw, str):
            parts = [p.strip() for p in raw.split(",") if p.strip()]
            if len(parts) == 24 and all("=" not in p for p in parts):
                return tuple(float(p) for p in parts)
            return hour_multipliers_from_text(raw)
        if isinstance(raw, list):
            return tuple(_number(v, float) for v in raw)
        if isinstance(raw, dict):
            return hour_multipliers_from_text(",".join(f"{k}={_number(v, float)}" for k, v in raw.items()))
        raise TypeError("expected 24 numbers, a table of UTC hour bands or HH-HH=X text")
    if isinstance(default, Mapping):
        return _mapping(raw, numbers=(section, name) not in _TEXT_TABLES)
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if text and raw.lower() in ("1", "true", "yes"):
            return True
        if text and raw.lower() in ("0", "false", "no"):
            return False
        raise TypeError("expected true or false")
    if isinstance(default, (enum.Enum, str)):
        if not isinstance(raw, str):
            raise TypeError("expected a string")
        return raw
    if isinstance(default, int):
        return _number(_parse(raw, int, "an integer") if text else raw, int)
    if isinstance(default, float):
        return _number(_parse(raw, float, "a finite number") if text else raw, float)
    raise TypeError(f"unsupported setting type {type(default).__name__}")  # pragma: no cover - a new field kind


def _parse(text: str, kind: type[int] | type[float], what: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be {what}, got {text!r}")
    return value


def _number(value: Any, kind: type[int] | type[float]) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    if kind is int:
        if isinstance(value, float):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    return float(value)


def _mapping(raw: Any, *, numbers: bool) -> dict[str, Any]:
    if isinstance(raw, str):
        if numbers:
            return thresholds_from_text(raw)
        table: dict[str, str] = {}
        for item in (i.strip() for i in raw.split(",") if i.strip()):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ValueError(f"{item!r} is not KEY=VALUE")
            table[key.strip()] = value.strip()
        return table
    if isinstance(raw, dict):
        if numbers:
            return {str(k): _number(v, float) for k, v in raw.items()}
        if not all(isinstance(v, str) for v in raw.values()):
            raise TypeError("expected a table of strings")
        return {str(k): v for k, v in raw.items()}
    raise TypeError("expected a table (KEY=VALUE,... in a variable)")


def plain(value: Any) -> Any:
    """A config value as JSON data (enums as their value, tables as objects, tuples as arrays)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def effective_configuration(config: Any, engines: EngineSettings) -> dict[str, Any]:
    """The one configuration a trading worker runs (``config``: its :class:`TradingConfig`): every value,
    the file, the values set by file or environment, and the hash its checkpoints are keyed by."""
    return {
        "config_hash": stable_config_hash(config),
        "config_file": engines.file,
        "set": dict(engines.sources),
        "trading": plain(config),
    }
