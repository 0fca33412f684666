"""The topic catalogue: every topic the platform uses, in one place.

Names are hierarchical (``<domain>.<stream>``). Each entry fixes the key, the
partition count, the cleanup policy, the retention and the record type, and
the broker module creates all of them up front (the embedded broker would
otherwise auto-create 4-partition topics on first use).

``compact`` topics hold latest state per key. The embedded tansu broker does
not compact, so every reader of a compacted topic takes the latest record per
key itself; correctness never depends on broker-side compaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from topics.records import (
    Alert,
    Bar,
    ControlAudit,
    ControlEvent,
    DataQualityEvent,
    DeadLetter,
    FeatureVector,
    Fill,
    GateResult,
    InferenceJob,
    JobResult,
    ModelRegistryEvent,
    OpeningStatus,
    OrderIntent,
    OrderUpdate,
    PortfolioSnapshot,
    RiskDecision,
    RolloutDecision,
    Signal,
    Tick,
    TrainJob,
)
from topics.schema import Record
from topics.units import MS_PER_DAY


class Cleanup(StrEnum):
    DELETE = "delete"
    COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    record: type[Record]
    key: str
    partitions: int
    cleanup: Cleanup
    retention_ms: int | None
    table: str
    description: str

    def config(self) -> dict[str, str]:
        """Kafka topic configs for a real cluster (compose / at scale)."""
        cfg = {"cleanup.policy": self.cleanup.value}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


def _spec(
    name: str,
    record: type[Record],
    key: str,
    partitions: int,
    cleanup: Cleanup,
    retention_days: int | None,
    table: str,
    description: str,
) -> TopicSpec:
    return TopicSpec(
        name=name,
        record=record,
        key=key,
        partitions=partitions,
        cleanup=cleanup,
        retention_ms=None if retention_days is None else retention_days * MS_PER_DAY,
        table=table,
        description=description,
    )


C, D = Cleanup.COMPACT, Cleanup.DELETE

# fmt: off
TOPICS: tuple[TopicSpec, ...] = (
    _spec("market.ticks", Tick, "symbol", 8, D, 7, "ev_market_ticks",
          "Public trades from venues (ccxt watch_trades / REST)."),
    _spec("market.bars.raw", Bar, "symbol|timeframe", 8, D, 30, "ev_market_bars_raw",
          "Bars as collected (file import, history download, live OHLCV, tick aggregation); unchecked."),
    _spec("market.bars", Bar, "symbol|timeframe", 8, C, None, "ev_market_bars",
          "Checked bars; latest revision per (symbol, timeframe, open_time) wins. Bar history."),
    _spec("market.data_quality", DataQualityEvent, "symbol", 4, D, 90, "ev_data_quality",
          "Data-quality findings with severity and blocking flag."),
    _spec("features", FeatureVector, "symbol", 8, D, 90, "ev_features",
          "Feature vectors per symbol and bar, with feature-set/data versions and lineage."),
    _spec("signals", Signal, "symbol", 8, D, 90, "ev_signals",
          "Model signals (public contract for outside consumers)."),
    _spec("orders.intents", OrderIntent, "symbol", 4, D, 90, "ev_order_intents",
          "Order intents from strategy sizing."),
    _spec("risk.decisions", RiskDecision, "symbol", 4, D, 365, "ev_risk_decisions",
          "Pre-trade risk verdicts with reasons."),
    _spec("orders.updates", OrderUpdate, "client_order_id", 4, D, 365, "ev_order_updates",
          "Order lifecycle transitions."),
    _spec("fills", Fill, "symbol", 4, D, 365, "ev_fills", "Executions with costs."),
    _spec("portfolio.state", PortfolioSnapshot, "account", 1, C, None, "ev_portfolio_state",
          "Portfolio and risk state per account after each bar (positions, PnL, equity, drawdown)."),
    _spec("risk.opening", OpeningStatus, "account", 1, C, None, "ev_risk_opening",
          "Per account: may it open positions now, and every blocker with its reason and time remaining."),
    _spec("gates.results", GateResult, "gate|track|metric", 1, C, None, "ev_gate_results",
          "Gate verdicts; latest per key is the current state."),
    _spec("control", ControlEvent, "scope|target", 1, C, None, "ev_control",
          "Signed operator commands (kill switch, limits, rollout)."),
    _spec("control.audit", ControlAudit, "control_event_id", 1, D, 365, "ev_control_audit",
          "What each component did with each control command (accepted, rejected, ignored), with reasons."),
    _spec("models.registry", ModelRegistryEvent, "model_id|version", 1, C, None, "ev_model_registry",
          "Model versions and their rollout stage."),
    _spec("governance.audit", RolloutDecision, "model_id|symbol", 1, D, 365, "ev_governance_audit",
          "Model governance decisions per rollout (promote, hold, rollback, manual, rejected) with the gate "
          "window, thresholds and actor."),
    _spec("jobs.train", TrainJob, "job_id", 4, D, 30, "ev_jobs_train", "Training job requests."),
    _spec("jobs.inference", InferenceJob, "job_id", 4, D, 30, "ev_jobs_inference",
          "Batch inference job requests."),
    _spec("jobs.results", JobResult, "job_id", 4, D, 90, "ev_job_results", "Outcomes of jobs."),
    _spec("ops.alerts", Alert, "code", 1, D, 90, "ev_alerts",
          "Operator alerts (refused checkpoints, rejected control commands, ...)."),
    _spec("deadletter", DeadLetter, "source_topic", 1, D, 30, "ev_dead_letters",
          "Messages that failed decode/validation, with reason and original bytes."),
)
# fmt: on

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}

#: Where a producer's record goes when it names no topic. Bars from any source
#: enter unchecked; only the checker agent writes ``market.bars``.
DEFAULT_TOPIC: dict[type[Record], str] = {
    **{t.record: t.name for t in TOPICS if sum(1 for u in TOPICS if u.record is t.record) == 1},
    Bar: "market.bars.raw",
}


def spec(name: str) -> TopicSpec:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"topic {name!r} is not in the catalogue") from None


def physical_name(name: str, namespace: str = "") -> str:
    """Topic name on the broker; a namespace isolates test runs sharing a broker."""
    return f"{namespace}.{name}" if namespace else name
