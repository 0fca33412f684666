"""Keyword-override builders of valid records for tests, one per record type.

Every argument has a default that makes a valid record, and ids are
deterministic (``Record.new`` derives them from the identity fields), so a
test names only what it is about. A file whose records differ pins its own
defaults once (``functools.partial`` or a thin wrapper that keeps its call
sites). ``Numbered`` gives a file its own id sequence (``sig-1``, ``sig-2``..).
Random, type-driven records are :mod:`tests.factories`' job.
"""

from __future__ import annotations

from agents.execution.interface import client_order_id_for
from topics.records import (
    AggressorSide,
    Bar,
    Comparator,
    FeatureVector,
    Fill,
    GateResult,
    GateStatus,
    Liquidity,
    ModelRegistryEvent,
    ModelStage,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RiskDecision,
    RiskVerdict,
    Side,
    Signal,
    Tick,
    Timeframe,
)
from topics.schema import JsonScalar
from topics.units import NS_PER_DAY

__all__ = [
    "BTC",
    "T0",
    "Numbered",
    "bar",
    "decision",
    "fill",
    "gate_result",
    "intent",
    "registry_event",
    "signal",
    "tick",
    "update",
    "vector",
]

T0 = 1_609_459_200_000_000_000  # 2021-01-01 00:00 UTC
BTC = "BTC/USDT"


class Numbered:
    """``prefix1``, ``prefix2``, ... one per call: a file's own deterministic id sequence.

    ``last`` is the number handed out last; set it to replay a run's ids.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.last = 0

    def __call__(self) -> str:
        self.last += 1
        return f"{self.prefix}{self.last}"


def bar(
    *,
    symbol: str = BTC,
    open_time: int = T0,
    timeframe: Timeframe = Timeframe.H1,
    open: float = 100.0,
    high: float | None = None,
    low: float | None = None,
    close: float | None = None,
    volume: float = 1.0,
    trade_count: int | None = None,
    is_closed: bool = True,
    revision: int = 0,
    venue: str = "binance",
    source: str = "test",
    ts_event: int | None = None,
    ts_init: int | None = None,
) -> Bar:
    """A bar opening at ``open_time``; ``ts_event`` its close, ``ts_init`` = ``ts_event`` unless given.

    ``close`` defaults to ``open``, ``high`` / ``low`` to the larger / smaller of the two.
    """
    close = open if close is None else close
    ts_event = open_time + timeframe.nanos if ts_event is None else ts_event
    return Bar.new(
        ts_init=ts_event if ts_init is None else ts_init,
        ts_event=ts_event,
        venue=venue,
        symbol=symbol,
        timeframe=timeframe,
        open_time=open_time,
        open=open,
        high=max(open, close) if high is None else high,
        low=min(open, close) if low is None else low,
        close=close,
        volume=volume,
        trade_count=trade_count,
        is_closed=is_closed,
        revision=revision,
        source=source,
    )


def tick(
    *,
    trade_id: str = "t1",
    ts: int = T0,
    price: float = 100.0,
    quantity: float = 1.0,
    symbol: str = BTC,
    aggressor: AggressorSide = AggressorSide.BUY,
    venue: str = "binance",
    ts_init: int | None = None,
) -> Tick:
    """A trade at ``ts`` (``ts_event``; ``ts_init`` too unless given)."""
    return Tick.new(
        ts_init=ts if ts_init is None else ts_init,
        ts_event=ts,
        venue=venue,
        symbol=symbol,
        trade_id=trade_id,
        price=price,
        quantity=quantity,
        aggressor=aggressor,
    )


def signal(
    *,
    score: float = 0.0,
    symbol: str = BTC,
    ts: int = T0,
    model_id: str = "m",
    model_version: str = "1",
    horizon: str = "1h",
    p_up: float | None = None,
    p_flat: float = 0.0,
    p_down: float | None = None,
    expected_return: float = 0.0,
    shadow: bool = False,
    feature_event_id: str = "f",
    lineage_id: str = "l",
    ts_init: int | None = None,
) -> Signal:
    """A signal at ``ts``; ``p_up`` = 0.5 + score / 2 (within [0, 1]) and ``p_down`` the rest unless given."""
    up = max(0.0, min(1.0, 0.5 + score / 2)) if p_up is None else p_up
    return Signal.new(
        ts_init=ts if ts_init is None else ts_init,
        ts_event=ts,
        symbol=symbol,
        model_id=model_id,
        model_version=model_version,
        horizon=horizon,
        p_up=up,
        p_flat=p_flat,
        p_down=1.0 - up - p_flat if p_down is None else p_down,
        expected_return=expected_return,
        score=score,
        shadow=shadow,
        feature_event_id=feature_event_id,
        lineage_id=lineage_id,
    )


def intent(
    *,
    side: Side = Side.BUY,
    quantity: float = 0.1,
    symbol: str = BTC,
    strategy_id: str = "s1",
    track: str = "paper",
    limit_price: float | None = None,
    order_type: OrderType | None = None,
    reduce_only: bool = False,
    target_position: float = 0.0,
    signal_event_id: str = "sig-1",
    reason: str | None = None,
    ts: int = T0,
    ts_init: int | None = None,
) -> OrderIntent:
    """An intent at ``ts``; a limit order when ``limit_price`` is set, else a market order."""
    if order_type is None:
        order_type = OrderType.LIMIT if limit_price else OrderType.MARKET
    return OrderIntent.new(
        ts_init=ts if ts_init is None else ts_init,
        ts_event=ts,
        strategy_id=strategy_id,
        track=track,
        symbol=symbol,
        side=side,
        quantity=quantity,
        order_type=order_type,
        limit_price=limit_price,
        reduce_only=reduce_only,
        target_position=target_position,
        signal_event_id=signal_event_id,
        reason=reason,
    )


def decision(
    of: OrderIntent,
    *,
    verdict: RiskVerdict = RiskVerdict.APPROVED,
    approved: float | None = None,
    reasons: tuple[str, ...] = (),
    ts: int | None = None,
    ts_init: int | None = None,
) -> RiskDecision:
    """Risk's verdict on ``of`` (at its time unless ``ts``): all of it approved, nothing when rejected."""
    ts = of.ts_event if ts is None else ts
    granted = of.quantity if approved is None else approved
    return RiskDecision.new(
        ts_init=ts if ts_init is None else ts_init,
        ts_event=ts,
        causation_id=of.event_id,
        intent_event_id=of.event_id,
        strategy_id=of.strategy_id,
        symbol=of.symbol,
        verdict=verdict,
        requested_quantity=of.quantity,
        approved_quantity=0.0 if verdict is RiskVerdict.REJECTED else granted,
        reasons=reasons,
    )


def update(
    of: OrderIntent | None = None,
    *,
    status: OrderStatus = OrderStatus.NEW,
    quantity: float = 0.1,
    filled: float = 0.0,
    avg_fill_price: float | None = None,
    client_order_id: str | None = None,
    symbol: str | None = None,
    side: Side | None = None,
    order_type: OrderType | None = None,
    adapter: str = "paper",
    venue_order_id: str | None = None,
    reason: str | None = None,
    ts: int = T0,
    ts_init: int | None = None,
) -> OrderUpdate:
    """An order update; the order (client order id, symbol, side, type) is ``of``'s unless given."""
    if of is not None:
        client_order_id = client_order_id_for(of.event_id) if client_order_id is None else client_order_id
        symbol = of.symbol if symbol is None else symbol
        side = of.side if side is None else side
        order_type = of.order_type if order_type is None else order_type
    return OrderUpdate.new(
        ts_init=ts if ts_init is None else ts_init,
        ts_event=ts,
        client_order_id="c1" if client_order_id is None else client_order_id,
        venue_order_id=venue_order_id,
        adapter=adapter,
        symbol=BTC if symbol is None else symbol,
        side=Side.BUY if side is None else side,
        order_type=OrderType.MARKET if order_type is None else order_type,
        quantity=quantity,
        filled_quantity=filled,
        avg_fill_price=avg_fill_price,
        status=status,
        reason=reason,
    )


def fill(
    *,
    side: Side = Side.BUY,
    quantity: float = 0.1,
    price: float = 100.0,
    fee: float = 0.0,
    fee_currency: str = "USDT",
    symbol: str = BTC,
    client_order_id: str = "c1",
    fill_id: str = "f1",
    adapter: str = "paper",
    liquidity: Liquidity = Liquidity.TAKER,
    slippage_bps: float = 0.0,
    impact_bps: float = 0.0,
    ts: int = T0,
    ts_init: int | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Fill:
    """A fill at ``ts``."""
    return Fill.new(
        ts_init=ts if ts_init is None else ts_init,
        ts_event=ts,
        correlation_id=correlation_id,
        causation_id=causation_id,
        client_order_id=client_order_id,
        fill_id=fill_id,
        adapter=adapter,
        symbol=symbol,
        side=side,
        price=price,
        quantity=quantity,
        fee=fee,
        fee_currency=fee_currency,
        liquidity=liquidity,
        slippage_bps=slippage_bps,
        impact_bps=impact_bps,
    )


def vector(
    *,
    bar_open_time: int = T0,
    names: tuple[str, ...] = ("x",),
    values: tuple[float, ...] = (0.0,),
    symbol: str = BTC,
    timeframe: Timeframe = Timeframe.H1,
    venue: str = "binance",
    feature_set_version: str = "fs1",
    data_version: str = "d1",
    lineage_id: str = "l",
    ts_event: int | None = None,
    ts_init: int | None = None,
    causation_id: str | None = None,
) -> FeatureVector:
    """Features of the bar opening at ``bar_open_time``, stamped at its close unless ``ts_event`` is given."""
    ts_event = bar_open_time + timeframe.nanos if ts_event is None else ts_event
    return FeatureVector.new(
        ts_init=ts_event if ts_init is None else ts_init,
        ts_event=ts_event,
        causation_id=causation_id,
        venue=venue,
        symbol=symbol,
        timeframe=timeframe,
        bar_open_time=bar_open_time,
        feature_set_version=feature_set_version,
        data_version=data_version,
        lineage_id=lineage_id,
        names=names,
        values=values,
    )


def registry_event(
    *,
    version: str = "1",
    stage: ModelStage = ModelStage.REGISTERED,
    ts: int = T0,
    model_id: str = "m",
    feature_set_version: str = "fs1",
    config: dict[str, JsonScalar] | None = None,
    data_start: int | None = None,
    data_end: int | None = None,
    seed: int = 1,
    metrics: dict[str, float] | None = None,
    checkpoint_path: str = "/m/1.ckpt",
    checkpoint_sha256: str = "ab" * 32,
) -> ModelRegistryEvent:
    """A model version at ``stage``, announced at ``ts``; trained on the 100 days before it unless given."""
    return ModelRegistryEvent.new(
        ts_init=ts,
        ts_event=ts,
        model_id=model_id,
        version=version,
        stage=stage,
        feature_set_version=feature_set_version,
        config={} if config is None else config,
        data_start=ts - 100 * NS_PER_DAY if data_start is None else data_start,
        data_end=ts if data_end is None else data_end,
        seed=seed,
        metrics={} if metrics is None else metrics,
        checkpoint_path=checkpoint_path,
        checkpoint_sha256=checkpoint_sha256,
    )


def gate_result(
    *,
    status: GateStatus = GateStatus.PASSED,
    value: float | None = 2.0,
    gate: str = "readiness",
    track: str = "paper",
    metric: str = "sharpe_daily",
    threshold: float = 1.5,
    comparator: Comparator = Comparator.GE,
    window_end: int = T0,
    window_start: int | None = None,
    observations: int = 30,
    blockers: tuple[str, ...] = (),
    config_hash: str = "gates-cfg",
    ts: int | None = None,
    ts_init: int | None = None,
) -> GateResult:
    """A gate's verdict on the 30 days up to ``window_end`` (unless ``window_start``), stamped at its end."""
    ts = window_end if ts is None else ts
    return GateResult.new(
        ts_init=ts if ts_init is None else ts_init,
        ts_event=ts,
        gate=gate,
        track=track,
        metric=metric,
        status=status,
        value=value,
        threshold=threshold,
        comparator=comparator,
        window_start=window_end - 30 * NS_PER_DAY if window_start is None else window_start,
        window_end=window_end,
        observations=observations,
        blockers=blockers,
        config_hash=config_hash,
    )
