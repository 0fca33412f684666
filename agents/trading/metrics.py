"""Prometheus metrics of the trading agent, labelled by account.

The names are read by ``deploy/prometheus/alerts.yml`` and its tests: a
rename here is a rename there.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BARS_SKIPPED",
    "CHECKPOINT_BYTES",
    "CHECKPOINT_SECONDS",
    "CONTROL",
    "DRAWDOWN",
    "EQUITY",
    "EXECUTION_SUBMIT_SECONDS",
    "INPUTS_SKIPPED",
    "KILL_SWITCHES",
    "ORDER_UPDATES",
    "RISK_REASONS",
    "RISK_VERDICTS",
    "SIGNALS_ALIGNED",
    "SIGNALS_HELD",
    "SIZING",
]

SIZING = Counter("tradeflow_sizing_decisions_total", "Signals by sizing outcome", ["account", "reason"])
RISK_VERDICTS = Counter("tradeflow_risk_decisions_total", "Risk decisions by verdict", ["account", "verdict"])
RISK_REASONS = Counter("tradeflow_risk_reasons_total", "Reasons on risk decisions", ["account", "reason"])
ORDER_UPDATES = Counter(
    "tradeflow_order_updates_total", "Order lifecycle transitions", ["account", "adapter", "status", "reason"]
)
CONTROL = Counter("tradeflow_control_commands_total", "Control commands handled", ["account", "outcome", "reason"])
BARS_SKIPPED = Counter("tradeflow_trading_bars_skipped_total", "Bars not traded on", ["account", "reason"])
SIGNALS_ALIGNED = Counter(
    "tradeflow_trading_signals_aligned_total",
    "Signals that arrived before their bar: held (waited for it) or released without it (wait or capacity exceeded)",
    ["account", "outcome"],
)
SIGNALS_HELD = Gauge("tradeflow_trading_signals_held", "Signals waiting for their bar now", ["account"])
KILL_SWITCHES = Gauge("tradeflow_kill_switches_active", "Kill switches in force", ["account"])
EQUITY = Gauge("tradeflow_portfolio_equity", "Account equity (quote currency)", ["account"])
INPUTS_SKIPPED = Counter(
    "tradeflow_trading_inputs_skipped_total", "Input messages already in the restored state", ["account", "topic"]
)
CHECKPOINT_SECONDS = Histogram(
    "tradeflow_trading_checkpoint_seconds",
    "Snapshot + producer flush + upsert of one checkpoint",
    ["account"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CHECKPOINT_BYTES = Gauge("tradeflow_trading_checkpoint_bytes", "Size of the last checkpoint's state", ["account"])
DRAWDOWN = Gauge("tradeflow_portfolio_drawdown", "Peak-to-now drawdown (fraction)", ["account"])
EXECUTION_SUBMIT_SECONDS = Histogram(
    "tradeflow_execution_submit_seconds",
    "One order through an external execution adapter",
    ["account", "adapter"],
    buckets=(0.0005, 0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)
