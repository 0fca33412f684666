"""Prometheus metrics shared by the platform's workers (one registry per process).

Domain modules define their own metrics next to their code; this module holds
the cross-cutting ones (records in/out, dead letters, sink, broker health).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_IN = Counter("tradeflow_records_in_total", "Records consumed", ["consumer", "topic"])
RECORDS_OUT = Counter("tradeflow_records_out_total", "Records produced", ["producer", "topic"])
DEAD_LETTERS = Counter("tradeflow_dead_letters_total", "Messages dead-lettered", ["consumer", "topic", "reason"])
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
    "tradeflow_sink_commit_seconds",
    "Database transaction time per sink batch",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_DB_ERRORS = Counter("tradeflow_sink_db_errors_total", "Database errors seen by the sink (retried)", ["kind"])
BROKER_UP = Gauge("tradeflow_broker_up", "1 when the last broker probe succeeded")

# --- alerting and SLOs ----------------------------------------------------------------------
# Metrics named by deploy/prometheus/alerts.yml. The ones whose producers live in modules owned by
# other domains (gates, dashboard, inference) are defined here so the rule file and the producers
# share one definition: import them from here, never redefine the name (prometheus_client refuses
# a duplicate name in one registry, so a second definition would crash the importing worker).

CONSUMER_LAG = Gauge(
    "tradeflow_consumer_lag",
    "Messages between the fetch high-water mark and the last committed offset, per partition",
    ["consumer", "topic", "partition"],
)
#: ``tradeflow_gate_status`` encoding; a failed gate is 0 so that a gauge that was labelled but never
#: set reads as *failed* (a false red), never as passed (a false green).
GATE_PASSED, GATE_FAILED, GATE_INSUFFICIENT = 1.0, 0.0, -1.0
GATE_STATUS = Gauge(
    "tradeflow_gate_status",
    "Latest gate result per gate/track/metric: 1 passed, 0 failed, -1 insufficient_observation",
    ["gate", "track", "metric"],
)
DASHBOARD_CLIENTS_DROPPED = Counter(
    "tradeflow_dashboard_clients_dropped", "Dashboard websocket clients disconnected by the server", ["reason"]
)
SIGNAL_LATENCY = Histogram(
    "tradeflow_signal_latency_seconds",
    "Wall time from the feature vector's ts_init to the signal's ts_init (inference hop incl. broker)",
    ["model_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def gate_status_value(status: str) -> float:
    """The gauge value of a gate status string (``passed|failed|insufficient_observation``).

    Raises ValueError on anything else: an unknown status must not be silently mapped to a value.
    """
    values = {"passed": GATE_PASSED, "failed": GATE_FAILED, "insufficient_observation": GATE_INSUFFICIENT}
    try:
        return values[status]
    except KeyError:
        raise ValueError(f"unknown gate status {status!r}; one of {sorted(values)}") from None


def logical_topic(physical: str, namespace: str) -> str:
    """The catalogue name of a broker topic (strips the ``namespace.`` prefix) for metric labels."""
    prefix = f"{namespace}." if namespace else ""
    return physical[len(prefix) :] if prefix and physical.startswith(prefix) else physical


def set_consumer_lag(
    consumer: str, topic: str, partition: int, highwater: int | None, committed: int | None
) -> int | None:
    """Set ``tradeflow_consumer_lag`` for one partition; return the lag, or None when unknown.

    ``highwater`` must be the one the fetch responses reported (tansu's ``end_offsets`` can be off by a
    batch). Unknown (no fetch yet, or nothing committed yet) leaves the series unset
    instead of writing a 0 that would read as "caught up".
    """
    if highwater is None or committed is None:
        return None
    lag = max(highwater - committed, 0)
    CONSUMER_LAG.labels(consumer, topic, str(partition)).set(lag)
    return lag
