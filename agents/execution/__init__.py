"""Execution adapters behind one interface.

- :mod:`agents.execution.interface`: the adapter protocol, deterministic
  client order ids, reason codes, in-flight order tracking, open orders;
- :mod:`agents.execution.paper`: the pure, seeded paper fill model;
- :mod:`agents.execution.ccxt_live`: live venues through ccxt (an async I/O
  edge; import it explicitly, it pulls in ccxt).
"""

from agents.execution.interface import (
    ExecReason,
    ExecutionAdapter,
    ExecutionRecord,
    InFlightOrders,
    MarketContext,
    OpenOrder,
    client_order_id_for,
)
from agents.execution.paper import PaperConfig, PaperExecutionAdapter, PaperExecutionEngine

__all__ = [
    "ExecReason",
    "ExecutionAdapter",
    "ExecutionRecord",
    "InFlightOrders",
    "MarketContext",
    "OpenOrder",
    "PaperConfig",
    "PaperExecutionAdapter",
    "PaperExecutionEngine",
    "client_order_id_for",
]
