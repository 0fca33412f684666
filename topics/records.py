"""One frozen record class per event type. Schema changes are deliberate:
bump the class's ``SCHEMA_VERSION`` and add a line to the changelog below.

Schema changelog
----------------
- v1 (all records): initial schemas.
- OrderIntent v2: ``reason`` (null, or why the intent exists beyond its
  signal: ``stop_loss`` / ``take_profit`` on the risk engine's protective exits).
- ControlAudit v1 (``control.audit``), PortfolioSnapshot v1 (``portfolio.state``): new.
- RolloutDecision v1 (``governance.audit``): new.
- OrderUpdate v2: status ``unknown`` (an order whose placement the venue did
  not confirm or deny; still in flight until a query resolves it).
- Fill v2: ``fee_estimated`` (true when the venue reported no usable fee and
  ``fee`` is the adapter's estimate from the market's fee rate).
- OpeningStatus v1 (``risk.opening``): new.
- Signal v2: ``key_id`` and ``signature`` (null, or the producer's HMAC over the
  signal: ``agents/signals/signing.py``). v1 records still decode, as unsigned.

Units: timestamps are int nanoseconds since the epoch (UTC); prices in quote
currency; quantities in base currency; basis points are 1e-4.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from topics.schema import (
    ErrorReason,
    JsonScalar,
    NonNegative,
    Price,
    Quantity,
    Record,
    RecordError,
    Symbol,
    Timestamp,
)
from topics.units import NS_PER_DAY, NS_PER_HOUR, NS_PER_MINUTE

# ---------------------------------------------------------------------------
# Enumerations
# ---------------------------------------------------------------------------


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class AggressorSide(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"
    UNKNOWN = "unknown"


class Timeframe(enum.StrEnum):
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"

    @property
    def nanos(self) -> int:
        return _TIMEFRAME_NANOS[self._value_]


#: Each timeframe's length (ns), by value: read per bar by several engines (a parse per call was ~7 % of a
#: replay), a dict keyed by the plain string (an enum member's hash is a Python-level call).
_TIMEFRAME_NANOS: dict[str, int] = {
    tf.value: int(tf.value[:-1]) * {"m": NS_PER_MINUTE, "h": NS_PER_HOUR, "d": NS_PER_DAY}[tf.value[-1]]
    for tf in Timeframe
}


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class RiskVerdict(enum.StrEnum):
    APPROVED = "approved"
    REDUCED = "reduced"
    REJECTED = "rejected"


class OrderStatus(enum.StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    #: Sent, but whether the venue placed it is not known yet (not terminal).
    UNKNOWN = "unknown"


class Liquidity(enum.StrEnum):
    MAKER = "maker"
    TAKER = "taker"


class GateStatus(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INSUFFICIENT_OBSERVATION = "insufficient_observation"


class Comparator(enum.StrEnum):
    """How a gate compares its value with its threshold (value <op> threshold passes)."""

    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


class ControlCommand(enum.StrEnum):
    KILL_SWITCH_ON = "kill_switch_on"
    KILL_SWITCH_OFF = "kill_switch_off"
    SET_LIMIT = "set_limit"
    ROLLOUT_PROMOTE = "rollout_promote"
    ROLLOUT_ROLLBACK = "rollout_rollback"


class ModelStage(enum.StrEnum):
    REGISTERED = "registered"
    SHADOW = "shadow"
    CANARY_10 = "canary_10"
    CANARY_30 = "canary_30"
    ACTIVE = "active"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"


class JobType(enum.StrEnum):
    TRAIN = "train"
    INFERENCE = "inference"
    BACKTEST = "backtest"
    TUNE = "tune"


class JobStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ControlOutcome(enum.StrEnum):
    """What a component did with a control command (values of
    ``agents.control.signing.AuditOutcome``; records do not import agents)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    #: Authentic but not addressed to this component (e.g. a rollout at risk).
    IGNORED = "ignored"


class RolloutAction(enum.StrEnum):
    """What model governance decided for one rollout (see ``agents.governance``)."""

    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"
    MANUAL_PROMOTE = "manual_promote"
    MANUAL_ROLLBACK = "manual_rollback"
    #: A manual command that failed verification or named an impossible transition.
    REJECTED = "rejected"


class RolloutTrigger(enum.StrEnum):
    GATES = "gates"
    CONTROL = "control"


# ---------------------------------------------------------------------------
# Market data
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Record):
    """One public trade from a venue. Keyed by symbol."""

    KIND: ClassVar[str] = "tick"
    IDENTITY: ClassVar[tuple[str, ...]] = ("venue", "symbol", "trade_id")

    venue: str
    symbol: Symbol
    trade_id: str
    price: Price
    quantity: Quantity
    aggressor: AggressorSide

    def key(self) -> bytes:
        return self.symbol.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar(Record):
    """An OHLCV time bar. ``ts_event`` is the bar's close time.

    Revisions (a late tick, a re-download) share (venue, symbol, timeframe,
    open_time) and carry a higher ``revision``: readers keep the highest.
    ``source`` (``csv:<file>``, ``ccxt:<exchange>``, ``ticks``) is part of the
    identity: two sources observing the same bar are two events.
    ``trade_count`` is null when the source does not report it (never a fake 0).
    """

    KIND: ClassVar[str] = "bar"
    IDENTITY: ClassVar[tuple[str, ...]] = ("venue", "symbol", "timeframe", "open_time", "revision", "source")

    venue: str
    symbol: Symbol
    timeframe: Timeframe
    open_time: Timestamp
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Quantity
    trade_count: Annotated[int, NonNegative()] | None
    is_closed: bool
    revision: Annotated[int, NonNegative()]
    source: str

    def key(self) -> bytes:
        return f"{self.symbol}|{self.timeframe.value}".encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class DataQualityEvent(Record):
    """A data-quality finding on a bar or a symbol stream."""

    KIND: ClassVar[str] = "data_quality"
    IDENTITY: ClassVar[tuple[str, ...]] = ("venue", "symbol", "timeframe", "check", "ref_time")

    venue: str
    symbol: Symbol
    timeframe: Timeframe
    check: str
    severity: Severity
    ref_time: Timestamp
    value: float | None
    detail: str
    blocking: bool

    def key(self) -> bytes:
        return self.symbol.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureVector(Record):
    """Features of one symbol at one bar close; ``names`` and ``values`` align."""

    KIND: ClassVar[str] = "features"
    IDENTITY: ClassVar[tuple[str, ...]] = (
        "symbol",
        "timeframe",
        "bar_open_time",
        "feature_set_version",
        "data_version",
    )

    venue: str
    symbol: Symbol
    timeframe: Timeframe
    bar_open_time: Timestamp
    feature_set_version: str
    data_version: str
    lineage_id: str
    names: tuple[str, ...]
    values: tuple[float, ...]

    def key(self) -> bytes:
        return self.symbol.encode()

    def validate(self) -> None:
        if len(self.names) != len(self.values):
            raise RecordError(
                ErrorReason.INVALID_VALUE,
                f"{len(self.names)} names but {len(self.values)} values",
            )


# ---------------------------------------------------------------------------
# Signals and trading
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal(Record):
    """A model's view of one symbol's next-horizon return. Public contract.

    ``key_id`` / ``signature``: who vouches for it (the inference agent signs with a key
    derived per model version; the trading agent verifies before sizing). Null: unsigned.
    Not part of the identity.
    """

    KIND: ClassVar[str] = "signal"
    SCHEMA_VERSION: ClassVar[int] = 2
    IDENTITY: ClassVar[tuple[str, ...]] = ("model_id", "model_version", "symbol", "feature_event_id")
    UPGRADES: ClassVar[Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]]] = MappingProxyType(
        {1: lambda obj: _signal_v1_to_v2(obj)}
    )

    symbol: Symbol
    model_id: str
    model_version: str
    horizon: str
    p_up: Annotated[float, NonNegative()]
    p_flat: Annotated[float, NonNegative()]
    p_down: Annotated[float, NonNegative()]
    expected_return: float
    score: float
    shadow: bool
    feature_event_id: str
    lineage_id: str
    key_id: str | None = None
    signature: str | None = None

    def key(self) -> bytes:
        return self.symbol.encode()

    def validate(self) -> None:
        total = self.p_up + self.p_flat + self.p_down
        if abs(total - 1.0) > 1e-6:
            raise RecordError(ErrorReason.INVALID_VALUE, f"probabilities sum to {total}, not 1")


def _signal_v1_to_v2(obj: dict[str, Any]) -> dict[str, Any]:
    """A v1 signal as v2: unsigned. A v1 object that already names the new fields is left as is
    (the codec then refuses its version)."""
    if "key_id" in obj or "signature" in obj:
        return obj
    return {**obj, "schema_version": 2, "key_id": None, "signature": None}


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderIntent(Record):
    """What the strategy wants to trade; every intent gets a risk decision.

    ``reason`` is null for a strategy intent (its signal is the reason) and
    names the trigger of a protective exit (``stop_loss``, ``take_profit``);
    it is not part of the identity.
    """

    KIND: ClassVar[str] = "order_intent"
    SCHEMA_VERSION: ClassVar[int] = 2
    IDENTITY: ClassVar[tuple[str, ...]] = ("strategy_id", "symbol", "signal_event_id")

    strategy_id: str
    track: str
    symbol: Symbol
    side: Side
    quantity: Quantity
    order_type: OrderType
    limit_price: Price | None
    reduce_only: bool
    target_position: float
    signal_event_id: str
    reason: str | None = None

    def key(self) -> bytes:
        return self.symbol.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskDecision(Record):
    """The risk engine's verdict on one intent, with every reason."""

    KIND: ClassVar[str] = "risk_decision"
    IDENTITY: ClassVar[tuple[str, ...]] = ("intent_event_id",)

    intent_event_id: str
    strategy_id: str
    symbol: Symbol
    verdict: RiskVerdict
    requested_quantity: Quantity
    approved_quantity: Quantity
    reasons: tuple[str, ...]

    def key(self) -> bytes:
        return self.symbol.encode()

    def validate(self) -> None:
        if self.approved_quantity > self.requested_quantity:
            raise RecordError(ErrorReason.INVALID_VALUE, "approved_quantity exceeds requested")
        if self.verdict is RiskVerdict.REJECTED and self.approved_quantity != 0:
            raise RecordError(ErrorReason.INVALID_VALUE, "rejected decision approves quantity")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderUpdate(Record):
    """One order lifecycle transition; ``client_order_id`` is deterministic.

    ``unknown``: the placement timed out or lost its connection on every try;
    the order may be live at the venue and counts as in flight until a query
    by its client order id resolves it (placed: its fills follow; not found:
    ``rejected``).
    """

    KIND: ClassVar[str] = "order_update"
    SCHEMA_VERSION: ClassVar[int] = 2
    IDENTITY: ClassVar[tuple[str, ...]] = ("client_order_id", "status", "filled_quantity")

    client_order_id: str
    venue_order_id: str | None
    adapter: str
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Quantity
    filled_quantity: Quantity
    avg_fill_price: Price | None
    status: OrderStatus
    reason: str | None

    def key(self) -> bytes:
        return self.client_order_id.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill(Record):
    """One execution. ``fee_estimated``: the venue reported no usable fee, so
    ``fee`` is an estimate (quantity x price x the market's fee rate), never a
    silent zero."""

    KIND: ClassVar[str] = "fill"
    SCHEMA_VERSION: ClassVar[int] = 2
    IDENTITY: ClassVar[tuple[str, ...]] = ("adapter", "client_order_id", "fill_id")

    client_order_id: str
    fill_id: str
    adapter: str
    symbol: Symbol
    side: Side
    price: Price
    quantity: Quantity
    fee: float
    fee_currency: str
    liquidity: Liquidity
    slippage_bps: float
    impact_bps: float
    fee_estimated: bool = False

    def key(self) -> bytes:
        return self.symbol.encode()


# ---------------------------------------------------------------------------
# Gates, control, models, jobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GateResult(Record):
    """A gate's verdict. ``value`` None means *not observed*, never zero."""

    KIND: ClassVar[str] = "gate_result"
    IDENTITY: ClassVar[tuple[str, ...]] = ("gate", "track", "metric", "window_start", "window_end", "config_hash")

    gate: str
    track: str
    metric: str
    status: GateStatus
    value: float | None
    threshold: float
    comparator: Comparator
    window_start: Timestamp
    window_end: Timestamp
    observations: Annotated[int, NonNegative()]
    blockers: tuple[str, ...]
    config_hash: str

    def key(self) -> bytes:
        return f"{self.gate}|{self.track}|{self.metric}".encode()

    def validate(self) -> None:
        if self.status is not GateStatus.INSUFFICIENT_OBSERVATION and self.value is None:
            raise RecordError(ErrorReason.INVALID_VALUE, "a decided gate needs a value")


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlEvent(Record):
    """A signed operator command. ``signature`` covers every other field."""

    KIND: ClassVar[str] = "control"
    IDENTITY: ClassVar[tuple[str, ...]] = ("key_id", "nonce")

    command: ControlCommand
    scope: str
    target: str
    params: dict[str, JsonScalar]
    reason: str
    operator: str
    key_id: str
    nonce: str
    expires_at: Timestamp | None
    signature: str

    def key(self) -> bytes:
        return f"{self.scope}|{self.target}".encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlAudit(Record):
    """What one component did with one control command (accepted or not).

    ``event_id`` is the audit id: a hash of (component, control event id,
    outcome, reason), so a redelivered command dedupes onto its row while a
    replay after acceptance is its own ``rejected``/``replayed`` row. Fields
    copied from a rejected command are unauthenticated: they say what the
    message *claimed*. ``ts_event`` is the command's own event time;
    ``ts_init`` the time the component verified it at. ``alert`` marks
    security-relevant rejections (anything that failed verification); each
    also raises an ``ops.alerts`` record.
    """

    KIND: ClassVar[str] = "control_audit"
    IDENTITY: ClassVar[tuple[str, ...]] = ("component", "control_event_id", "outcome", "reason")

    component: str
    control_event_id: str
    command: str
    scope: str
    target: str
    operator: str
    key_id: str
    nonce: str
    outcome: ControlOutcome
    reason: str
    detail: str
    alert: bool
    changes: tuple[str, ...]
    config_hash_before: str
    config_hash_after: str

    def key(self) -> bytes:
        return self.control_event_id.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioSnapshot(Record):
    """One account's portfolio and risk state after one event (latest per key wins).

    Amounts are in ``quote_currency``. Per-symbol figures are maps keyed by
    unified symbol, holding every symbol with a position, realized PnL or
    fees; ``opened_at_ns`` only has the symbols with an open position.
    ``as_of_event_id`` is the event (a bar) after which this is the state.
    """

    KIND: ClassVar[str] = "portfolio_snapshot"
    IDENTITY: ClassVar[tuple[str, ...]] = ("account", "as_of_ns", "as_of_event_id")

    account: str
    as_of_ns: Timestamp
    as_of_event_id: str
    quote_currency: str
    cash: float
    equity: float
    peak_equity: float
    drawdown: Annotated[float, NonNegative()]
    day_start_ns: Timestamp
    day_start_equity: float
    day_peak_equity: float
    intraday_drawdown: Annotated[float, NonNegative()]
    daily_pnl: float
    daily_return: float
    realized_pnl: float
    unrealized_pnl: float
    fees_paid: float
    consecutive_losses: Annotated[int, NonNegative()]
    closed_trades: Annotated[int, NonNegative()]
    losing_trades: Annotated[int, NonNegative()]
    fills_applied: Annotated[int, NonNegative()]
    foreign_fee_fills: Annotated[int, NonNegative()]
    #: Signed position (base units; short < 0).
    quantities: dict[str, float]
    avg_prices: dict[str, Annotated[float, NonNegative()]]
    mark_prices: dict[str, Annotated[float, NonNegative()]]
    mark_ts_ns: dict[str, int]
    realized_pnls: dict[str, float]
    unrealized_pnls: dict[str, float]
    fees: dict[str, float]
    opened_at_ns: dict[str, int]
    config_hash: str

    def key(self) -> bytes:
        return self.account.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRegistryEvent(Record):
    KIND: ClassVar[str] = "model_registry"
    IDENTITY: ClassVar[tuple[str, ...]] = ("model_id", "version", "stage")

    model_id: str
    version: str
    stage: ModelStage
    feature_set_version: str
    config: dict[str, JsonScalar]
    data_start: Timestamp
    data_end: Timestamp
    seed: int
    metrics: dict[str, float]
    checkpoint_path: str
    checkpoint_sha256: str

    def key(self) -> bytes:
        return f"{self.model_id}|{self.version}".encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutDecision(Record):
    """One model-governance decision on one rollout (model_id, symbol): the audit trail.

    ``trigger`` ``gates``: a gate window was complete; ``window_*`` and
    ``window_status`` describe it, ``gates`` maps ``gate:metric`` to the status
    of each required result considered and ``gate_result_ids`` names them.
    ``trigger`` ``control``: a signed operator command (``cause_event_id`` is
    the control event id); window fields are null. ``passing_windows`` /
    ``failing_windows`` are the consecutive-window counters *after* this
    decision, next to the thresholds and ``config_hash`` they were compared
    with. ``from_stage``/``to_stage`` equal on a hold; null only when a
    rejected command named a version governance does not know (then
    ``symbol`` is null too). ``restored_version`` is the previously active
    version a rollback put back to ``active`` (null: there was none).
    Fields of a ``rejected`` command are what the message *claimed*.
    """

    KIND: ClassVar[str] = "rollout_decision"
    IDENTITY: ClassVar[tuple[str, ...]] = ("model_id", "symbol", "version", "trigger", "cause_event_id")

    model_id: str
    version: str
    symbol: Symbol | None
    from_stage: ModelStage | None
    to_stage: ModelStage | None
    action: RolloutAction
    trigger: RolloutTrigger
    window_start: Timestamp | None
    window_end: Timestamp | None
    window_status: GateStatus | None
    gates: dict[str, str]
    gate_result_ids: tuple[str, ...]
    passing_windows: Annotated[int, NonNegative()]
    failing_windows: Annotated[int, NonNegative()]
    windows_to_promote: Annotated[int, NonNegative()]
    windows_to_rollback: Annotated[int, NonNegative()]
    config_hash: str
    actor: str
    reason: str
    restored_version: str | None
    cause_event_id: str

    def key(self) -> bytes:
        return f"{self.model_id}|{self.symbol or '*'}".encode()

    def validate(self) -> None:
        if self.trigger is RolloutTrigger.GATES and (self.window_end is None or self.window_status is None):
            raise RecordError(ErrorReason.INVALID_VALUE, "a gate-triggered decision names its window and status")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainJob(Record):
    KIND: ClassVar[str] = "train_job"
    IDENTITY: ClassVar[tuple[str, ...]] = ("job_id",)

    job_id: str
    model_family: str
    symbols: tuple[str, ...]
    timeframe: Timeframe
    data_start: Timestamp
    data_end: Timestamp
    feature_set_version: str
    seed: int
    hyperparams: dict[str, JsonScalar]

    def key(self) -> bytes:
        return self.job_id.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceJob(Record):
    KIND: ClassVar[str] = "inference_job"
    IDENTITY: ClassVar[tuple[str, ...]] = ("job_id",)

    job_id: str
    model_id: str
    version: str
    symbols: tuple[str, ...]
    data_start: Timestamp
    data_end: Timestamp

    def key(self) -> bytes:
        return self.job_id.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult(Record):
    KIND: ClassVar[str] = "job_result"
    IDENTITY: ClassVar[tuple[str, ...]] = ("job_id", "status")

    job_id: str
    job_type: JobType
    status: JobStatus
    reason: str | None
    metrics: dict[str, float]
    artifacts: dict[str, str]

    def key(self) -> bytes:
        return self.job_id.encode()

    def validate(self) -> None:
        if self.status is JobStatus.FAILED and not self.reason:
            raise RecordError(ErrorReason.INVALID_VALUE, "a failed job needs a reason")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter(Record):
    """A message that could not be processed, with the reason and its bytes.

    ``original_b64`` is the original value, base64; nothing is lost.
    """

    KIND: ClassVar[str] = "dead_letter"
    #: Room for a base64 copy of an oversize original (producers allow 8 MiB).
    MAX_BYTES: ClassVar[int] = 8 * 1024 * 1024
    IDENTITY: ClassVar[tuple[str, ...]] = ("consumer", "source_topic", "source_partition", "source_offset")

    consumer: str
    source_topic: str
    source_partition: Annotated[int, NonNegative()]
    source_offset: Annotated[int, NonNegative()]
    reason: str
    detail: str
    original_key_b64: str | None
    original_b64: str
    original_size: Annotated[int, NonNegative()]

    def key(self) -> bytes:
        return self.source_topic.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert(Record):
    """Something an operator must see (a refused checkpoint, a forged command...).

    Alertmanager-style: ``code`` is the stable alert name, ``labels`` route it,
    ``dedupe_key`` makes a repeated condition one event.
    """

    KIND: ClassVar[str] = "alert"
    IDENTITY: ClassVar[tuple[str, ...]] = ("source", "code", "dedupe_key")

    severity: Severity
    source: str
    code: str
    message: str
    dedupe_key: str
    labels: dict[str, str]

    def key(self) -> bytes:
        return self.code.encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class OpeningStatus(Record):
    """Whether one account may open exposure, and every rule that blocks it (latest per account wins).

    One blocker per index of the ``blocker_*`` arrays (equal lengths): its reason ``code`` (the code
    risk decisions carry), ``scope`` (``global`` / ``track`` / ``strategy`` / ``symbol`` /
    ``account``) and ``target``, a ``detail``, its exclusive end ``until_ns`` (null: until released,
    or until the limit is back) on the clock its ``domain`` names (``market``: event time of market
    data; ``wall``: arrival time, operator kill switches), and the time ``remaining_ns`` from
    ``market_ns`` / ``wall_ns`` (null when no end). Published when the set of blockers or an end
    changes, and after each traded bar.
    """

    KIND: ClassVar[str] = "opening_status"
    IDENTITY: ClassVar[tuple[str, ...]] = ("account", "market_ns", "wall_ns", "blocker_codes", "blocker_until_ns")

    account: str
    allowed: bool
    #: Market time (the account's event time; 0 before its first market input) and wall time of the status.
    market_ns: Annotated[int, NonNegative()]
    wall_ns: Annotated[int, NonNegative()]
    blocker_codes: tuple[str, ...]
    blocker_scopes: tuple[str, ...]
    blocker_targets: tuple[str, ...]
    blocker_details: tuple[str, ...]
    blocker_until_ns: tuple[int | None, ...]
    blocker_domains: tuple[str, ...]
    blocker_remaining_ns: tuple[int | None, ...]
    #: The risk configuration the status was computed under.
    config_hash: str

    def key(self) -> bytes:
        return self.account.encode()

    def validate(self) -> None:
        n = len(self.blocker_codes)
        arrays = (
            self.blocker_scopes,
            self.blocker_targets,
            self.blocker_details,
            self.blocker_until_ns,
            self.blocker_domains,
            self.blocker_remaining_ns,
        )
        if any(len(a) != n for a in arrays):
            raise RecordError(ErrorReason.INVALID_VALUE, "blocker_* arrays differ in length")
        if self.allowed != (n == 0):
            raise RecordError(ErrorReason.INVALID_VALUE, "allowed must be true exactly when there is no blocker")
        if any(d not in ("market", "wall") for d in self.blocker_domains):
            raise RecordError(ErrorReason.INVALID_VALUE, "blocker_domains must be market or wall")
        if any(r is not None and r < 0 for r in self.blocker_remaining_ns):
            raise RecordError(ErrorReason.OUT_OF_RANGE, "blocker_remaining_ns must be >= 0")


ALL_RECORDS: tuple[type[Record], ...] = (
    Tick,
    Bar,
    DataQualityEvent,
    FeatureVector,
    Signal,
    OrderIntent,
    RiskDecision,
    OrderUpdate,
    Fill,
    GateResult,
    ControlEvent,
    ModelRegistryEvent,
    TrainJob,
    InferenceJob,
    JobResult,
    DeadLetter,
    Alert,
    ControlAudit,
    PortfolioSnapshot,
    RolloutDecision,
    OpeningStatus,
)
