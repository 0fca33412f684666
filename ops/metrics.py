"""Prometheus metrics shared by the platform's workers (one registry per process).

Domain modules define their own metrics next to their code; this module holds
the cross-cutting ones (records in/out, dead letters, sink, broker health).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_IN = Counter("tradeflow_records_in_total", "Records consumed", ["consumer", "topic"])
RECORDS_OUT = Counter("tradeflow_records_out_total", "Records produced", ["producer", "topic"])
DEAD_LETTERS = Counter(
    "tradeflow_dead_letters_total", "Messages dead-lettered", ["consumer", "topic", "reason"]
)
PROCESS_LATENCY = Histogram(
    "tradeflow_processing_seconds",
    "Time to process one record or batch",
    ["consumer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SINK_ROWS = Counter("tradeflow_sink_rows_total", "Rows inserted by the sink (new rows only)", ["table"])
SINK_BATCH = Histogram(
    "tradeflow_sink_batch_records",
    "Records per sink batch",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
)
SINK_COMMIT_SECONDS = Histogram(
    "tradeflow_sink_commit_seconds", "Database transaction time per sink batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_DB_ERRORS = Counter("tradeflow_sink_db_errors_total", "Database errors seen by the sink (retried)", ["kind"])
BROKER_UP = Gauge("tradeflow_broker_up", "1 when the last broker probe succeeded")
