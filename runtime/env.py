"""Configuration from the environment: every ``TRADEFLOW_*`` variable is
declared once here (name, default, what it does) and read through a typed
reader at the edge, never at import time.

Readers take the mapping to read (``os.environ`` when omitted, read at call
time), so a worker's settings are built from an explicit environment and
tests pass a dict. A value that does not parse is a :class:`ConfigError`
naming the variable, never a silent default. Secrets are read by
:func:`read_secret` from the variable or from the file named by
``<NAME>_FILE`` (one of the two, not both); their values are never logged
and never appear in an error message.

``docs/configuration.md`` is generated from :data:`VARIABLES`
(``tradeflow topics --config``) and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import BadInput

__all__ = [
    "VARIABLES",
    "ConfigError",
    "Variable",
    "configuration_markdown",
    "env_flag",
    "env_float",
    "env_int",
    "env_list",
    "env_str",
    "read_secret",
]


class ConfigError(BadInput, ValueError):
    """A variable is malformed or missing. The message names the variable, never a secret value."""


@dataclass(frozen=True, slots=True)
class Variable:
    name: str  #: full name; a trailing ``_`` marks a prefix (``TRADEFLOW_CONTROL_KEY_<ID>``)
    default: str  #: as documented (``""`` when unset means off/none)
    help: str
    secret: bool = False  #: also read from ``<name>_FILE``; never logged
    group: str = "platform"


_V = Variable
VARIABLES: tuple[Variable, ...] = (
    # -- platform (every process) -------------------------------------------------------------
    _V("TRADEFLOW_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers (`--bootstrap`)"),
    _V("TRADEFLOW_DSN", "postgresql://postgres@127.0.0.1/tradeflow", "PostgreSQL (`--dsn`)"),
    _V("TRADEFLOW_NAMESPACE", "", "topic-name prefix: isolates deployments or test runs on one broker (`--namespace`)"),
    _V("TRADEFLOW_DATA_DIR", "var", "persistent Postgres cluster, faust state and logs (`--data-dir`)"),
    _V("TRADEFLOW_LOG_LEVEL", "INFO", "JSON logs on stderr (structlog; faust/aiokafka logs too) (`--log-level`)"),
    _V("TRADEFLOW_FETCH_WAIT_MS", "20", "faust consumer fetch wait (faust hard-codes 1500 ms)"),
    _V(
        "TRADEFLOW_SINK_FETCH_WAIT_MS",
        "20",
        "the sink's consumer fetch wait; `tradeflow up` sets 500 on the s3-backed broker, which answers a fetch "
        "with what it read from the object store within the wait (a shorter wait than those reads: no records)",
    ),
    _V("TRADEFLOW_WEB_HOST", "127.0.0.1", "worker web server bind address (`--web-host`)"),
    _V(
        "TRADEFLOW_METRICS_HOST",
        "127.0.0.1",
        "`/metrics` bind address of `sink` (`--metrics-host`) and `gates evaluate --every`",
    ),
    _V("TRADEFLOW_ARTIFACTS", "var/models", "where trained checkpoints are written (path + sha256 go to the registry)"),
    _V(
        "TRADEFLOW_KAFKA_SASL_USERNAME",
        "",
        "broker user (SASL); unset: no authentication (the embedded broker). compose.yaml: one user per service",
    ),
    _V("TRADEFLOW_KAFKA_SASL_PASSWORD", "", "that user's password", secret=True),
    _V("TRADEFLOW_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256", "SASL mechanism (`SCRAM-SHA-256`, `SCRAM-SHA-512`, `PLAIN`)"),
    _V(
        "TRADEFLOW_KAFKA_SECURITY_PROTOCOL",
        "SASL_PLAINTEXT",
        "with a SASL user: `SASL_PLAINTEXT` or `SASL_SSL` (system CA bundle)",
    ),
    # -- operators --------------------------------------------------------------------------
    _V(
        "TRADEFLOW_CONTROL_KEY_",
        "",
        "operator signing key `<ID>` (>= 32 bytes; `hex:` prefix for hex)",
        secret=True,
        group="control",
    ),
    _V("TRADEFLOW_CONTROL_SIGNING_KEY_ID", "", "which key the `control` CLI signs with", group="control"),
    _V(
        "TRADEFLOW_OPERATOR",
        "",
        "who signs `tradeflow control` commands, audited (`--operator`; unset: the OS login name)",
        group="control",
    ),
    _V(
        "TRADEFLOW_SIGNAL_KEY_",
        "",
        "signal signing key `<ID>` (>= 32 bytes; `hex:` prefix for hex): inference signs with it (a key derived "
        "per model version), trading verifies; `tradeflow up` generates one per data dir",
        secret=True,
        group="control",
    ),
    _V(
        "TRADEFLOW_SIGNAL_SIGNING_KEY_ID",
        "",
        "which signal key the `inference` agent signs with (unset: the only one)",
        group="control",
    ),
    _V(
        "TRADEFLOW_SIGNAL_REQUIRE_SIGNED",
        "on when a signal key is set",
        "`trading`: refuse unsigned signals (`signal_unauthenticated`, an alert, no order); `0` during a rollout "
        "accepts unsigned ones (a bad signature is always refused); `1` without a key: refuses to start",
        group="control",
    ),
    # -- market data and features -----------------------------------------------------------
    _V(
        "TRADEFLOW_BAR_TIMEFRAMES",
        "1m",
        "timeframes the `bar-aggregator` agent builds from ticks (comma list)",
        group="market",
    ),
    _V(
        "TRADEFLOW_STALE_CHECK_S",
        "0",
        "how often the `features` agent checks for stale feeds by the wall clock "
        "(0 = off: a replay of history would be stale by definition)",
        group="market",
    ),
    _V(
        "TRADEFLOW_EXCHANGE_API_URL",
        "",
        "`http(s)://host[:port]` that replaces the exchange's REST hosts for the live collector and "
        "`tradeflow up --live` (a proxy or mirror of its API; websockets off then) (`collect --api-url`)",
        group="market",
    ),
    # -- trading -----------------------------------------------------------------------------
    _V(
        "TRADEFLOW_TRADING_ACCOUNT",
        "paper",
        "the account the trading agent runs (one agent per account)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_TRACK_LIQUID_SYMBOLS",
        "BTC/USDT,ETH/USDT,SOL/USDT,BTC/USDT:USDT,ETH/USDT:USDT,SOL/USDT:USDT",
        "the gated `liquid` track: symbols collected and traded, gates decide (comma list; docs/trading.md#tracks)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_TRACK_VC_SYMBOLS",
        "SUI/USDT,APT/USDT,ARB/USDT",
        "the monitor-only `vc` track: collected, featured, scored, gates reported (`gates evaluate` exits 0 on "
        "them), never an order (sizing reason `monitor_only_track`); `none`: no vc symbol",
        group="trading",
    ),
    _V(
        "TRADEFLOW_TRADING_SYMBOLS",
        "BTC/USDT,ETH/USDT,SOL/USDT,BTC/USDT:USDT,ETH/USDT:USDT,SOL/USDT:USDT",
        "symbols the trading agent may order (unset: the liquid track's); a vc-track symbol is refused",
        group="trading",
    ),
    _V("TRADEFLOW_TRADING_TIMEFRAMES", "1h", "bar timeframes the trading agent trades on", group="trading"),
    _V(
        "TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S",
        "60",
        "arrival-time seconds a signal waits for its bar before it is applied without it",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_ENTRY_THRESHOLD",
        "0.2",
        "|score| a signal needs to open a position from flat (or to flip); "
        "at runtime: `control set-limit strategy.entry_threshold`",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_EXIT_THRESHOLD",
        "0.05",
        "a held position is kept while score x direction >= this (below the entry threshold)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_MAX_POSITION_FRACTION",
        "0.2",
        "full-size position as a fraction of equity",
        group="trading",
    ),
    _V("TRADEFLOW_STRATEGY_MIN_ORDER_NOTIONAL", "10", "smallest order worth sending (quote)", group="trading"),
    _V(
        "TRADEFLOW_STRATEGY_REBALANCE_BAND",
        "0.1",
        "same-direction resizes smaller than this fraction of the symbol cap are skipped",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_COST_MULTIPLE",
        "1",
        "added exposure needs an expected edge of this many round-trip costs",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS",
        "7200000000000",
        "signals older than this in market time (ns; default 2 h) are not traded; "
        "`tradeflow up` sets one week on the recorded feed",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_BREAKER_MODE",
        "return",
        "volatility breaker: `return` (absolute return over the window) or `range` (one bar's "
        "(high - low) / open); at runtime: `control set-limit vol_breaker_mode` (every `TRADEFLOW_RISK_VOL_*` "
        "is a `set-limit` name too, see docs/risk.md)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_THRESHOLDS",
        "BTC=0.05,ETH=0.06,SOL=0.08",
        "breaker threshold per base asset or exact symbol (`KEY=FRACTION`, comma list; replaces the table); "
        "at runtime one entry: `set-limit vol_threshold.<KEY>`",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_THRESHOLD_DEFAULT",
        "0.08",
        "breaker threshold of a symbol the table does not name",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_HOUR_MULTIPLIERS",
        "00-07=1.4,08-16=1.0,17-23=1.2",
        "breaker threshold multiplier per UTC hour of the bar's open (`HH-HH=X`, every hour once); "
        "at runtime: `set-limit vol_hour_multiplier.<HH or HH-HH>`",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_WINDOW_BARS",
        "0",
        "return mode: the window in bars of the series; 0: `TRADEFLOW_RISK_VOL_WINDOW_NS` of market time",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_WINDOW_NS",
        "3600000000000",
        "return mode: the window in market time (ns; default 1 h) when the bar count is 0",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_REFERENCE_TIMEFRAME_NS",
        "3600000000000",
        "range mode: the bar timeframe the thresholds are for (ns; default 1 h; others scale by sqrt(tf / ref))",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_VOL_HALT_NS",
        "60000000000",
        "how long (market time, ns; default 60 s) the breaker's global kill switch stays on",
        group="trading",
    ),
    _V(
        "TRADEFLOW_TRADING_CONFIG",
        "",
        "TOML file with `[strategy]`, `[risk]` (the breaker's `vol_*` included) and `[paper]` settings; every "
        "`TRADEFLOW_STRATEGY_*` / `TRADEFLOW_RISK_*` / `TRADEFLOW_PAPER_*` variable beats its key; an unknown "
        "key exits 2 (`tradeflow trading config` prints the result)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_STRATEGY_ID",
        "tanh-sizer",
        "strategy.strategy_id: strategy id on the intents the sizer emits (per-strategy kill switches and loss "
        "pauses name it)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_TRACK",
        "paper",
        "strategy.track: track the sizer's intents carry (paper, live-bitget, ...)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_CURVE_GAIN",
        "2",
        "strategy.curve_gain: gain of the tanh score-to-size curve",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_POSITION_CAP_NOTIONAL",
        "",
        "strategy.position_cap_notional: Absolute cap per symbol (quote), exact symbol or base asset, else the "
        "default.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_DEFAULT_POSITION_CAP_NOTIONAL",
        "50000",
        "strategy.default_position_cap_notional: position cap (quote) of a symbol `position_cap_notional` does not "
        "name",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_SYMBOL_VOL_BUCKET",
        "BTC=low,ETH=mid",
        "strategy.symbol_vol_bucket: Asset (or exact symbol) -> bucket; anything else is `default_vol_bucket`.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_DEFAULT_VOL_BUCKET",
        "high",
        "strategy.default_vol_bucket: volatility bucket of a symbol `symbol_vol_bucket` does not name",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_BUCKET_SCALE",
        "low=1,mid=0.8,high=0.5",
        "strategy.bucket_scale: size multiplier per volatility bucket (`BUCKET=X`, comma list)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_HOUR_SCALE",
        "00-12=1,13-16=0.8,17-23=1",
        "strategy.hour_scale: size multiplier per UTC hour (`HH-HH=X`, every hour once, or 24 comma values)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_FEE_BPS",
        "10",
        "strategy.fee_bps: expected one-way fee (bps) in the edge a trade must clear",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_SLIPPAGE_BPS",
        "2",
        "strategy.slippage_bps: expected one-way slippage (bps) in the edge a trade must clear",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_DRAWDOWN_WARN",
        "0.08",
        "strategy.drawdown_warn: drawdown from which the sizer scales new size by `drawdown_warn_scale`",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_DRAWDOWN_WARN_SCALE",
        "0.5",
        "strategy.drawdown_warn_scale: size multiplier in the sizer's warn tier",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_DRAWDOWN_REDUCE_ONLY",
        "0.1",
        "strategy.drawdown_reduce_only: drawdown from which the sizer only reduces",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_DRAWDOWN_FLAT",
        "0.12",
        "strategy.drawdown_flat: drawdown at which the sizer goes flat",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_QUANTITY_DECIMALS",
        "8",
        "strategy.quantity_decimals: Order quantities are rounded to this many decimals (exchange precision is the "
        "execution adapter's job; this only removes float dust).",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_MAX_SEEN_SIGNALS",
        "100000",
        "strategy.max_seen_signals: signal ids remembered to drop redeliveries",
        group="trading",
    ),
    _V(
        "TRADEFLOW_STRATEGY_PENDING_ORDER_TTL_NS",
        "21600000000000",
        "strategy.pending_order_ttl_ns: An order of ours no update has ended after this long stops counting as in "
        "flight.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_TRACK",
        "paper",
        "risk.track: The track (paper, live-bitget, ...) this engine guards; protective exits carry it.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_MAX_DRAWDOWN",
        "0.12",
        "risk.max_drawdown: drawdown (of peak equity) that blocks opening (the replaced system's 0.12)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_DRAWDOWN_NEAR_LIMIT",
        "0.1",
        "risk.drawdown_near_limit: drawdown from which only reducing orders pass (reduce-only tier)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_DRAWDOWN_WARN",
        "0.08",
        "risk.drawdown_warn: drawdown from which opening size is scaled by `warn_size_scale`",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_WARN_SIZE_SCALE",
        "0.5",
        "risk.warn_size_scale: Opening size multiplier in the warn tier.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_DAILY_LOSS_LIMIT",
        "0.03",
        "risk.daily_loss_limit: Daily loss (UTC day, vs the day's starting equity) that stops opening. 3 %: below "
        "the 5 % intraday halt so it is the first line, not dead code.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_CONSECUTIVE_LOSS_LIMIT",
        "5",
        "risk.consecutive_loss_limit: Closed round trips lost in a row that pause opening for the cool-down.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_CONSECUTIVE_LOSS_COOLDOWN_NS",
        "86400000000000",
        "risk.consecutive_loss_cooldown_ns: how long (market time, ns; default 24 h) the account's consecutive-loss "
        "pause lasts",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_STRATEGY_CONSECUTIVE_LOSS_LIMIT",
        "0",
        "risk.strategy_consecutive_loss_limit: Round trips one strategy opened and lost in a row that pause that "
        "strategy's opening for `strategy_consecutive_loss_cooldown_ns` (market time, from the closing fill). 0: "
        "off (the replaced system counted per account only; with one strategy the account limit covers it).",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_STRATEGY_CONSECUTIVE_LOSS_COOLDOWN_NS",
        "86400000000000",
        "risk.strategy_consecutive_loss_cooldown_ns: how long (market time, ns; default 24 h) one strategy's "
        "consecutive-loss pause lasts",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_INTRADAY_DRAWDOWN_HALT",
        "0.05",
        "risk.intraday_drawdown_halt: Intraday (UTC day, peak-to-now) drawdown that halts opening until the next day.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_STOP_LOSS",
        "0.018",
        "risk.stop_loss: adverse move from the average entry that triggers a reduce-only exit",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_TAKE_PROFIT",
        "0.036",
        "risk.take_profit: favourable move from the average entry that triggers a reduce-only exit",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_MAX_ORDER_NOTIONAL",
        "25000",
        "risk.max_order_notional: Largest notional (quote) of one order; larger ones are cut to it.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_MAX_SYMBOL_NOTIONAL",
        "50000",
        "risk.max_symbol_notional: Largest absolute position notional per symbol after the order.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_SYMBOL_MAX_NOTIONAL",
        "",
        "risk.symbol_max_notional: per-symbol or per-asset position caps (`KEY=QUOTE`, comma list)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_MAX_ORDERS_PER_WINDOW",
        "30",
        "risk.max_orders_per_window: Orders approved per rolling window of event time (venue and fat-finger guard).",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_ORDER_RATE_WINDOW_NS",
        "60000000000",
        "risk.order_rate_window_ns: rolling window (market time, ns) of `max_orders_per_window`",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_PENDING_ORDER_TTL_NS",
        "21600000000000",
        "risk.pending_order_ttl_ns: An approved order that no fill or terminal update has ended after this long "
        "stops counting as in-flight exposure (a lost update must not block forever).",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_MAX_PRICE_DEVIATION",
        "0.05",
        "risk.max_price_deviation: A limit price further than this from the last mark is a fat finger.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_MAX_MARK_AGE_NS",
        "10800000000000",
        "risk.max_mark_age_ns: A mark older than this (event time) is not a price to size against.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_KILL_SWITCH_ALLOWS_REDUCE_ONLY",
        "0",
        "risk.kill_switch_allows_reduce_only: 1: reduce-only exits pass an engaged kill switch; 0 (default): "
        "nothing passes",
        group="trading",
    ),
    _V(
        "TRADEFLOW_RISK_PROTECTIVE_STRATEGY_ID",
        "risk-protect",
        "risk.protective_strategy_id: strategy_id of the stop-loss / take-profit exits the engine emits.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_FEE_BPS",
        "10",
        "paper.fee_bps: Taker fee (Binance / Bitget spot VIP0 is 10 bps).",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_SLIPPAGE_BPS",
        "2",
        "paper.slippage_bps: Fixed half-spread + latency slippage.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_IMPACT_COEFFICIENT_BPS",
        "100",
        "paper.impact_coefficient_bps: Impact in bps per unit of participation (100 bps at 100 % of bar volume).",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_MAX_PARTICIPATION",
        "0.1",
        "paper.max_participation: Most of a bar's volume one bar's fills may take.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_MAX_RETRIES",
        "3",
        "paper.max_retries: Further bars after the first an order may use before it expires.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_MAX_SLIPPAGE_BPS",
        "100",
        "paper.max_slippage_bps: Largest distance of the modelled price from the arrival price.",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_TIMEOUT_PROBABILITY",
        "",
        "paper.timeout_probability: probability per eligible bar that a paper order times out at the simulated "
        "venue, per symbol (`SYMBOL=P`, comma list; the replaced system: BTC/USDT=0.07,ETH/USDT=0.08,SOL/USDT=0.10)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_DEFAULT_TIMEOUT_PROBABILITY",
        "0",
        "paper.default_timeout_probability: paper venue-timeout probability per eligible bar of a symbol the table "
        "does not name",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_SEED",
        "7",
        "paper.seed: seed of the paper engine's random draws (venue timeouts)",
        group="trading",
    ),
    _V(
        "TRADEFLOW_PAPER_MAX_SEEN_ORDERS",
        "100000",
        "paper.max_seen_orders: client order ids remembered to drop redelivered orders",
        group="trading",
    ),
    _V("TRADEFLOW_EXECUTION_ADAPTER", "paper", "`paper` (simulated fills) or `ccxt` (a venue)", group="trading"),
    _V(
        "TRADEFLOW_EXECUTION_VENUE",
        "",
        "ccxt venue, required with `ccxt`: binance | bitget | coinbase",
        group="trading",
    ),
    _V("TRADEFLOW_EXECUTION_MARKET", "spot", "spot | swap", group="trading"),
    _V(
        "TRADEFLOW_EXECUTION_DRY_RUN",
        "1",
        "ccxt orders validated but never sent; `0` sends real orders",
        group="trading",
    ),
    _V("TRADEFLOW_EXECUTION_MARKETS_FILE", "", "recorded market rules for dry runs (no network)", group="trading"),
    _V("TRADEFLOW_EXECUTION_LEVERAGE", "", "swap leverage set on the venue", group="trading"),
    _V("TRADEFLOW_EXECUTION_MARGIN_MODE", "cross", "swap margin mode (cross | isolated)", group="trading"),
    _V("TRADEFLOW_EXECUTION_POSITION_MODE", "one_way", "swap position mode (one_way | hedge)", group="trading"),
    _V("TRADEFLOW_EXCHANGE_API_KEY", "", "venue API key", secret=True, group="trading"),
    _V("TRADEFLOW_EXCHANGE_SECRET", "", "venue API secret", secret=True, group="trading"),
    _V(
        "TRADEFLOW_EXCHANGE_PASSWORD",
        "",
        "venue API passphrase (where the venue has one)",
        secret=True,
        group="trading",
    ),
    # -- governance, gates, dashboard ----------------------------------------------------------
    _V(
        "TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE",
        "3",
        "passing gate windows before a stage promotion",
        group="governance",
    ),
    _V("TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK", "2", "failing gate windows before a rollback", group="governance"),
    _V(
        "TRADEFLOW_GOVERNANCE_REQUIRED_GATES",
        "hard_metrics:sharpe_daily,hard_metrics:max_drawdown,execution:reject_rate,readiness:valid_runs",
        "`gate:metric` pairs that must all pass for a window to pass",
        group="governance",
    ),
    _V(
        "TRADEFLOW_GATES_TRACKS",
        "",
        "tracks `gates evaluate` evaluates without `--track` (comma list; unset: every track that has backtest runs)",
        group="governance",
    ),
    _V(
        "TRADEFLOW_GATES_LOOKBACK",
        "180d",
        "evidence window of `gates evaluate`: backtest runs finished and real orders placed this long before the "
        "evaluation time (`--lookback` wins)",
        group="governance",
    ),
    _V(
        "TRADEFLOW_GATES_MIN_VALID_RUNS",
        "20",
        "valid runs in the lookback, each passing every hard metric, a track needs to be ready",
        group="governance",
    ),
    _V(
        "TRADEFLOW_GATES_REJECT_MIN_ORDERS",
        "300",
        "real paper/live orders in the lookback below which the reject-rate gate is `insufficient_observation`",
        group="governance",
    ),
    _V(
        "TRADEFLOW_DASHBOARD_TOKEN",
        "",
        "dashboard access token, >= 16 characters (unset: none asked for; the "
        "page is then as open as the worker's `--web-host`)",
        secret=True,
        group="dashboard",
    ),
    _V("TRADEFLOW_DASHBOARD_QUEUE", "8", "frames queued per dashboard client before it is dropped", group="dashboard"),
    _V("TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS", "50", "dashboard update coalescing, 0 to 10000 ms", group="dashboard"),
)


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """The stripped value, or ``default`` when unset or empty."""
    value = _environ(environ).get(name, "").strip()
    return value or default


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None, *, minimum: int | None = None) -> int:
    raw = _environ(environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(
    name: str, default: float, environ: Mapping[str, str] | None = None, *, minimum: float | None = None
) -> float:
    raw = _environ(environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be finite, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else is an error, not False."""
    raw = _environ(environ).get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be one of {sorted(_TRUE | _FALSE)}, got {raw!r}")


def env_list(name: str, default: tuple[str, ...], environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A comma-separated list, items stripped, empty items dropped."""
    raw = _environ(environ).get(name, "")
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    return items or default


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret in ``name`` or in the file named by ``name_FILE`` (stripped); None when neither is set.

    Both set, an unreadable file or an empty file are errors naming the
    variable and the path, never the value.
    """
    env = _environ(environ)
    value, path = env.get(name, "").strip(), env.get(name + "_FILE", "").strip()
    if value and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{name}_FILE: {path} is empty")
    return value or None


def _cell(text: str) -> str:
    """``text`` inside a markdown table cell: a bare ``|`` would end the cell."""
    return text.replace("|", "\\|")


def configuration_markdown() -> str:
    """The configuration reference (``docs/configuration.md``), generated from :data:`VARIABLES`."""
    lines = [
        "# Configuration",
        "",
        "Generated from `runtime/env.py` (`tradeflow topics --config`); a test keeps this file equal to it.",
        "Every variable is read when a process starts, never at import time. Command-line flags, where a",
        "command has one, win over the variable. A variable marked *secret* is also read from the file",
        "named by `<NAME>_FILE` (one of the two, not both) and is never logged.",
        "",
    ]
    for group in dict.fromkeys(v.group for v in VARIABLES):
        lines += [f"## {group}", "", "| variable | default | what it does |", "|---|---|---|"]
        for v in VARIABLES:
            if v.group != group:
                continue
            name = f"`{v.name}<ID>`" if v.name.endswith("_") else f"`{v.name}`"
            if v.secret:
                name += f" / `{v.name}<ID>_FILE` (secret)" if v.name.endswith("_") else " / `_FILE` (secret)"
            default = f"`{v.default}`" if v.default else "unset"
            lines.append(f"| {name} | {_cell(default)} | {_cell(v.help)} |")
        lines.append("")
    return "\n".join(lines)
