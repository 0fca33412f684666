"""Trading core: strategy -> risk -> execution -> portfolio for one account,
composed in one fixed order. Pure and synchronous.

The one place that says in which order the engines see each event: the live agent
(:mod:`agents.trading.agent`), a backtest and an audit replay drive this same composition, so
the same input sequence gives byte-identical records (pinned by
``tests/unit/test_trading_determinism.py``). Each ``on_*`` call returns a :class:`Step`
with its output records in publish order:

- ``on_bar``: clock to the close; paper fills at this bar's open; portfolio mark; risk mark
  (volatility breaker, stop-loss / take-profit exits). A bar not after the last one is skipped.
- ``on_signal``: verified when a signal verifier is given (a refusal changes nothing), then sized,
  decided and submitted in the same call. A signal that overtook its own bar is held until that
  bar arrives (bounded by ``signal_bar_wait_ns`` / ``max_held_signals``).
- ``on_registry`` / ``on_control``: rollout stage (share of capital) / verified control.
- ``execution="external"``: approved orders leave in ``Step.to_submit``; the venue's answers
  come back through ``on_execution`` as inputs.
- ``opening_update``: the account's opening status (every blocker, :mod:`agents.risk.opening`) as a
  ``risk.opening`` record when it changed; the agent asks after each input. A closed round trip
  is credited to the strategy whose order opened it (the risk engine's per-strategy loss count).

Two time domains: market time (:class:`StreamClock`, moved by bars and signals only: never
backwards, never past ``arrival_ns``; it stamps the outputs of market inputs) and wall/arrival
time (:class:`ArrivalClock`, moved by arrivals and authentic commands; control verification,
operator kill switches and control audits). A command never moves market time.

Design: docs/trading_engines.md#trading-core
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.clock import ArrivalClock, StreamClock
from agents.control.audit import audit_record, rejected_alert
from agents.control.signing import ControlAudit as EngineAudit
from agents.control.signing import ControlVerifier, Keyring, VerifierConfig, compute_signature
from agents.execution.interface import TERMINAL_STATUSES, ExecutionRecord, MarketContext, OpenOrder, client_order_id_for
from agents.execution.paper import PaperConfig, PaperExecutionEngine
from agents.governance.config import GovernanceConfig
from agents.portfolio.engine import PortfolioConfig, PortfolioEngine, PortfolioState
from agents.risk.config import RiskConfig
from agents.risk.engine import DelegatedLimits, RiskEngine
from agents.risk.killswitch import KillSwitch
from agents.risk.opening import OpeningReport
from agents.signals.signing import SignalVerdict, SignalVerifier
from agents.strategy.config import LIMIT_PREFIX, SETTABLE_PARAMS, StrategyConfig
from agents.strategy.engine import SizingDecision, StrategyEngine
from agents.trading.signal_gate import refused_signal
from topics.records import (
    Alert,
    Bar,
    ControlEvent,
    Fill,
    ModelRegistryEvent,
    ModelStage,
    OpeningStatus,
    OrderIntent,
    OrderUpdate,
    PortfolioSnapshot,
    RiskDecision,
    RiskVerdict,
    Severity,
    Signal,
    Timeframe,
)
from topics.schema import TS_MIN_NS, Record, event_id_for, keyword_constructor, positional_constructor
from topics.units import NS_PER_SECOND

__all__ = [
    "BarSkip",
    "ExecutionMode",
    "Step",
    "Submission",
    "TradingConfig",
    "TradingCore",
    "alert_for_audit",
    "opening_record",
    "snapshot_record",
]


class BarSkip:
    """Why a bar was not traded on (metric label values)."""

    NOT_CLOSED = "not_closed"
    TIMEFRAME_NOT_TRADED = "timeframe_not_traded"
    NOT_NEWER = "not_newer"


# ---------------------------------------------------------------------------
# Configuration and output
# ---------------------------------------------------------------------------


class ExecutionMode(enum.StrEnum):
    """Who executes approved orders (see the module docstring)."""

    PAPER = "paper"
    EXTERNAL = "external"


#: One order for an external adapter: the intent, its decision and the arrival price context.
Submission = tuple[OrderIntent, RiskDecision, MarketContext | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class TradingConfig:
    """One account's trading composition. The engines' configs carry their own versions."""

    account: str = "paper"
    #: Bar timeframes traded on (fills, marks, breaker). One per symbol: two
    #: timeframes of one symbol would give paper orders two fill chances per hour.
    timeframes: tuple[Timeframe, ...] = (Timeframe.H1,)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    portfolio: PortfolioConfig = field(default_factory=PortfolioConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    #: Rollout stages -> share of capital (shadow 0, canary 10 % / 30 %, active 100 %).
    rollout: GovernanceConfig = field(default_factory=GovernanceConfig)
    #: ``paper`` fills in-process; ``external`` hands approved orders to the caller
    #: (``Step.to_submit``) and takes the venue's answers back through ``on_execution``.
    #: In external mode ``paper.adapter`` names the external adapter: it labels the
    #: refusal records the core emits itself for orders never sent.
    execution: ExecutionMode = ExecutionMode.PAPER
    #: A signal that arrived before its bar waits for that bar at most
    #: this long in arrival time (see "Event-time alignment" above).
    signal_bar_wait_ns: int = 60 * NS_PER_SECOND
    #: At most this many signals wait for their bars; beyond, the oldest is applied.
    max_held_signals: int = 10_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "execution", ExecutionMode(self.execution))
        if self.signal_bar_wait_ns < 0:
            raise ValueError("signal_bar_wait_ns must be >= 0")
        if self.max_held_signals < 0:
            raise ValueError("max_held_signals must be >= 0")
        if not self.account or "|" in self.account:
            raise ValueError("account must be a non-empty name without '|'")
        if not self.timeframes:
            raise ValueError("at least one timeframe must be traded")

    @property
    def component(self) -> str:
        """``source`` of this account's alerts."""
        return f"trading:{self.account}"


@dataclass(frozen=True, slots=True)
class Step:
    """What one input caused: records to publish, in order, plus facts for metrics."""

    records: tuple[Record, ...] = ()
    #: Sizing of every signal applied in this step (a bar can release held signals).
    sizings: tuple[SizingDecision, ...] = ()
    audit: EngineAudit | None = None
    engaged: tuple[KillSwitch, ...] = ()
    bar_skipped: str | None = None
    #: External execution only: approved / reduced orders to send, in decision order.
    to_submit: tuple[Submission, ...] = ()
    #: The input signal was held until its bar arrives (it produced nothing yet).
    held: bool = False
    #: Held signals applied in this step without their bar (wait or capacity exceeded).
    released_unaligned: int = 0

    @property
    def sizing(self) -> SizingDecision | None:
        """The last sizing of the step (the input signal's own, for ``on_signal``)."""
        return self.sizings[-1] if self.sizings else None


#: ``Step(...)`` without the frozen ``__init__``'s per-field cost (one per bar).
_make_step = keyword_constructor(Step)


# ---------------------------------------------------------------------------
# The core
# ---------------------------------------------------------------------------


class TradingCore:
    """Strategy, risk, paper execution and portfolio of one account, in one order."""

    #: Checks each signal before sizing (None: every signal is trusted). Holds secrets, so it is
    #: never in a checkpoint: restore re-attaches it (a class default for cores pickled without one).
    signal_verifier: SignalVerifier | None = None

    def __init__(self, config: TradingConfig, keyring: Keyring, signal_verifier: SignalVerifier | None = None) -> None:
        self.config = config
        self.signal_verifier = signal_verifier
        #: Market time (bars, signals); see the module docstring.
        self.clock = StreamClock()
        #: Wall/arrival time (arrivals, operator commands); never behind ``clock``.
        self.wall_clock = ArrivalClock(self.clock)
        self._keyring = keyring
        self.strategy = StrategyEngine(config.strategy, self.clock)
        self.risk = RiskEngine(
            config.risk, self.clock, ControlVerifier(keyring, config.verifier), wall_clock=self.wall_clock
        )
        self.paper = PaperExecutionEngine(config.paper, self.clock)
        self.portfolio = PortfolioEngine(config.portfolio)
        self._last_bar: dict[str, Bar] = {}
        self._timeframes = frozenset(config.timeframes)
        #: Latest registry event per (model_id, version): the rollout stage of each version.
        self._versions: dict[tuple[str, str], ModelRegistryEvent] = {}
        #: Signals waiting for their bar, in arrival order, with their arrival bound.
        self._held: list[tuple[Signal, int | None]] = []
        #: External execution: orders handed out and not terminal yet, by client order id.
        self._open: dict[str, OpenOrder] = {}
        #: client order id -> strategy of its intent (bounded), and symbol -> strategy that opened the
        #: position held now: a closed round trip counts for that strategy (:meth:`RiskEngine.on_round_trip`).
        self._order_strategy: OrderedDict[str, str] = OrderedDict()
        self._opened_by: dict[str, str] = {}
        #: What the last published opening status said (:meth:`opening_update`).
        self._opening_sent: tuple[object, ...] | None = None

    # -- inputs -----------------------------------------------------------------

    def on_bar(self, bar: Bar, arrival_ns: int | None = None) -> Step:
        self.wall_clock.arrived(arrival_ns)
        out: list[Record] = []
        submit: list[Submission] = []
        sizings: list[SizingDecision] = []
        overdue = self._release_overdue(arrival_ns, out, submit, sizings) if self._held else 0
        skipped = None
        if not bar.is_closed:
            skipped = BarSkip.NOT_CLOSED
        elif bar.timeframe not in self._timeframes:
            skipped = BarSkip.TIMEFRAME_NOT_TRADED
        else:
            last = self._last_bar.get(bar.symbol)
            if last is not None and bar.open_time <= last.open_time:
                skipped = BarSkip.NOT_NEWER
        if skipped is not None:
            return Step(
                records=tuple(out),
                sizings=tuple(sizings),
                bar_skipped=skipped,
                to_submit=tuple(submit),
                released_unaligned=overdue,
            )
        self._last_bar[bar.symbol] = bar
        self.clock.advance(bar.ts_event, arrival_ns)
        if self.config.execution is ExecutionMode.PAPER:
            for rec in self.paper.on_bar(bar):
                self._executed(rec, out)
        state = self.portfolio.on_bar(bar)
        out.append(snapshot_record(state, config=self.config, cause=bar, ts_init=self.clock.now_ns()))
        self.strategy.on_portfolio(state)
        self.risk.on_portfolio(state)
        self.strategy.on_bar(bar)
        marked = self.risk.on_mark(bar)
        now = self.clock.now_ns()
        for switch in marked.engaged:
            out.append(_breaker_alert(switch, self.config, bar, now))
        for exit_ in marked.exits:
            self._decide(dataclasses.replace(exit_.intent, reason=exit_.reason.value), out, submit)
        # the signals that waited for this bar, in arrival order
        if self._held:
            self._apply_held(
                lambda sig, _: sig.symbol == bar.symbol and sig.ts_event <= bar.ts_event, out, submit, sizings
            )
        return _make_step(
            records=tuple(out),
            sizings=tuple(sizings),
            engaged=marked.engaged,
            to_submit=tuple(submit),
            released_unaligned=overdue,
        )

    def on_signal(self, signal: Signal, arrival_ns: int | None = None) -> Step:
        if self.signal_verifier is not None:  # a refused signal changes no state, not even the clocks
            verdict = self.signal_verifier.verify(signal)
            if not verdict.ok:
                return self._refuse_signal(signal, verdict)
        self.wall_clock.arrived(arrival_ns)
        out: list[Record] = []
        submit: list[Submission] = []
        sizings: list[SizingDecision] = []
        overdue = self._release_overdue(arrival_ns, out, submit, sizings)
        if self._awaits_bar(signal):
            self._held.append((signal, arrival_ns))
            if len(self._held) > self.config.max_held_signals:
                excess = len(self._held) - self.config.max_held_signals
                oldest, self._held = self._held[:excess], self._held[excess:]
                for held, held_arrival in oldest:
                    self._apply_signal(held, held_arrival, out, submit, sizings)
                overdue += excess
            # the input itself is the newest: never among the excess (max_held_signals > 0 here)
            return Step(
                records=tuple(out),
                sizings=tuple(sizings),
                to_submit=tuple(submit),
                held=True,
                released_unaligned=overdue,
            )
        self._apply_signal(signal, arrival_ns, out, submit, sizings)
        return Step(records=tuple(out), sizings=tuple(sizings), to_submit=tuple(submit), released_unaligned=overdue)

    def _refuse_signal(self, signal: Signal, verdict: SignalVerdict) -> Step:
        pos = self.portfolio.state().positions.get(signal.symbol)
        decision, alert = refused_signal(
            signal,
            verdict,
            account=self.config.account,
            source=self.config.component,
            position=0.0 if pos is None else pos.quantity,
            ts_init=self.clock.now_ns(),
        )
        return Step(records=(alert,), sizings=(decision,))

    def _awaits_bar(self, signal: Signal) -> bool:
        """True when the signal is stamped at a close of its symbol's traded bar series that has not arrived.

        Signals derived from bars carry the bar's close as ``ts_event``: on the
        grid of the symbol's traded bars (the last bar's close plus whole bar
        periods), a coarser timeframe's closes included. A signal off that grid
        (a sub-bar or external source) has no bar to wait for. With no bar of
        the symbol yet, the grid is unknown: the signal waits for the first one.
        """
        if self.config.max_held_signals == 0:
            return False
        last = self._last_bar.get(signal.symbol)
        if last is None:
            return True
        period = last.ts_event - last.open_time
        ahead = signal.ts_event - last.ts_event
        return ahead > 0 and period > 0 and ahead % period == 0

    def held_signals(self) -> tuple[Signal, ...]:
        """Signals waiting for their bar, in arrival order."""
        return tuple(s for s, _ in self._held)

    def _apply_signal(
        self,
        signal: Signal,
        arrival_ns: int | None,
        out: list[Record],
        submit: list[Submission],
        sizings: list[SizingDecision],
    ) -> None:
        self.clock.advance(signal.ts_event, arrival_ns)
        sizing = self.strategy.on_signal(signal, self.capital_fraction(signal.model_id, signal.model_version))
        sizings.append(sizing)
        if sizing.intent is not None:
            self._decide(sizing.intent, out, submit)

    def _release_overdue(
        self, arrival_ns: int | None, out: list[Record], submit: list[Submission], sizings: list[SizingDecision]
    ) -> int:
        """Apply the held signals that waited longer than ``signal_bar_wait_ns`` (arrival time) for their bar."""
        if arrival_ns is None or not self._held:
            return 0
        limit = arrival_ns - self.config.signal_bar_wait_ns
        return self._apply_held(lambda _, arrived: arrived is not None and arrived < limit, out, submit, sizings)

    def _apply_held(
        self,
        release: Callable[[Signal, int | None], bool],
        out: list[Record],
        submit: list[Submission],
        sizings: list[SizingDecision],
    ) -> int:
        """Apply (in arrival order) and drop the held signals ``release`` picks; how many."""
        ready = [h for h in self._held if release(*h)]
        if ready:
            self._held = [h for h in self._held if not release(*h)]
            for signal, arrival_ns in ready:
                self._apply_signal(signal, arrival_ns, out, submit, sizings)
        return len(ready)

    def on_execution(self, record: ExecutionRecord) -> Step:
        """An external adapter's answer to an order of ``Step.to_submit`` (external mode only).

        Applied like a paper record (risk and strategy in-flight tracking,
        fills to the portfolio) and returned as the step's output, re-stamped
        with this core's clock. An answer for an order this core never handed
        out is refused (``ValueError``): it would move positions no decision
        of this account explains. An answer already applied to an open order
        (a fill id or an update it holds: a follow-up query or a restart's
        reconciliation repeating the venue's state) changes nothing and
        returns an empty step.
        """
        if self.config.execution is not ExecutionMode.EXTERNAL:
            raise ValueError("on_execution needs external execution; paper execution fills in-process")
        if not self.paper.seen(record.client_order_id):
            raise ValueError(
                f"{type(record).__name__} {record.event_id} is for client order id "
                f"{record.client_order_id}, which this core never submitted"
            )
        if self._already_applied(record):
            return Step()
        now = self.clock.now_ns()
        stamped = record if record.ts_init == now else dataclasses.replace(record, ts_init=now)
        out: list[Record] = []
        self._executed(stamped, out)
        self._follow(stamped)
        return Step(records=tuple(out))

    def open_orders(self) -> tuple[OpenOrder, ...]:
        """External orders handed out and not terminal yet, in the order they were handed out."""
        return tuple(self._open.values())

    def _already_applied(self, record: ExecutionRecord) -> bool:
        order = self._open.get(record.client_order_id)
        if order is None:
            return False
        if isinstance(record, Fill):
            return record.fill_id in order.fill_ids
        return record.event_id in order.update_ids

    def _follow(self, record: ExecutionRecord) -> None:
        """What an applied answer tells of its open order (removed once terminal)."""
        coid = record.client_order_id
        order = self._open.get(coid)
        if order is None:
            return
        if isinstance(record, Fill):
            self._open[coid] = dataclasses.replace(
                order,
                filled=order.filled + record.quantity,
                notional=order.notional + record.price * record.quantity,
                fill_ids=order.fill_ids | {record.fill_id},
            )
        elif isinstance(record, OrderUpdate):
            if record.status in TERMINAL_STATUSES:
                del self._open[coid]
                return
            self._open[coid] = dataclasses.replace(
                order,
                status=record.status,
                quantity=record.quantity,
                venue_order_id=record.venue_order_id or order.venue_order_id,
                update_ids=order.update_ids | {record.event_id},
            )

    def on_control(self, event: ControlEvent, arrival_ns: int | None = None) -> Step:
        """A signed command, in wall time: it moves the wall clock (when authentic), never market time.

        ``set_limit`` names the risk engine's limits or the strategy's (``strategy.<name>``).
        """
        authentic = self._signature_authentic(event)
        before = self.wall_clock.own_ns()
        if authentic:  # its arrival is wall time: a command that arrives after it expired is refused as expired
            self.wall_clock.arrived(arrival_ns)
        self.wall_clock.advance(event.ts_event, arrival_ns)
        strategy_limits = DelegatedLimits(LIMIT_PREFIX, SETTABLE_PARAMS, self._strategy_config, self._set_strategy)
        audit = self.risk.on_control(event, strategy_limits)
        if not authentic:
            self.wall_clock.restore(before)
        record = audit_record(audit, event)
        out: list[Record] = [record]
        if audit.alert:
            out.append(alert_for_audit(audit, self.config))
        return Step(records=tuple(out), audit=audit)

    def on_registry(self, event: ModelRegistryEvent, arrival_ns: int | None = None) -> Step:
        """Follow a model version's rollout stage (no output; the clock does not move:
        registry time is not market time). Latest per version by (ts_event, event_id)."""
        key = (event.model_id, event.version)
        cur = self._versions.get(key)
        if cur is None or (cur.ts_event, cur.event_id) < (event.ts_event, event.event_id):
            self._versions[key] = event
        return Step()

    def capital_fraction(self, model_id: str, version: str) -> float:
        """Share of capital signals of this version may trade.

        A version the registry announced trades at its stage's fraction
        (:class:`~agents.governance.config.GovernanceConfig`); one it never
        announced (a signal source outside the registry, e.g. an external
        model) trades at 1.0: governance covers the models it governs.
        """
        ev = self._versions.get((model_id, version))
        if ev is None:
            return 1.0
        return self.config.rollout.capital_fraction(ModelStage(ev.stage))

    # -- state queries ------------------------------------------------------------

    def portfolio_state(self) -> PortfolioState:
        return self.portfolio.state()

    def active_kill_switches(self) -> tuple[KillSwitch, ...]:
        return self.risk.kill_switches.active(self.clock.now_ns(), self.wall_clock.now_ns())

    def pauses(self) -> dict[str, str]:
        """Risk limits pausing opening exposure now (limit -> why): :meth:`RiskEngine.pauses`."""
        return self.risk.pauses()

    def opening_report(self) -> OpeningReport:
        """Every rule blocking new exposure now: :meth:`RiskEngine.opening_report`."""
        return self.risk.opening_report()

    def opening_update(self, cause_event_id: str | None = None) -> OpeningStatus | None:
        """The opening status as a ``risk.opening`` record when it differs from the last one returned:
        another set of blockers or ends, or market time moved (a traded bar: the remaining times
        changed). None when unchanged, or before any input gave a time."""
        report = self.risk.opening_report()
        mark = (report.market_ns, report.signature())
        if mark == self._opening_sent or report.wall_ns <= 0:
            return None
        if self._opening_sent is not None and report.signature() == self._opening_sent[1] and report.allowed:
            self._opening_sent = mark  # still allowed, only time moved: nothing new to say
            return None
        record = opening_record(report, config=self.config, cause_event_id=cause_event_id)
        if record is None:
            return None
        self._opening_sent = mark
        return record

    # -- internals ------------------------------------------------------------------

    def _strategy_config(self) -> StrategyConfig:
        return self.strategy.config

    def _set_strategy(self, config: StrategyConfig) -> None:
        self.strategy.config = config

    def _signature_authentic(self, event: ControlEvent) -> bool:
        secret = self._keyring.secret(event.key_id)
        if secret is None or not event.signature:
            return False
        return hmac.compare_digest(compute_signature(event, secret), event.signature)

    def _executed(self, rec: ExecutionRecord, out: list[Record]) -> None:
        out.append(rec)
        self.risk.on_execution(rec)
        self.strategy.on_execution(rec)
        if isinstance(rec, Fill):
            before = self.portfolio.state()
            self._credit_round_trip(rec, before, self.portfolio.on_fill(rec))

    def _credit_round_trip(self, fill: Fill, before: PortfolioState, after: PortfolioState) -> None:
        """A round trip this fill closed counts for the strategy that opened it; one it opened (or the
        remainder of a flip) is this order's strategy's."""
        strategy = self._order_strategy.get(fill.client_order_id)
        closed = after.closed_trades > before.closed_trades
        if closed:
            opener = self._opened_by.pop(fill.symbol, strategy)
            if opener is not None:
                self.risk.on_round_trip(opener, after.losing_trades > before.losing_trades)
        opened = after.quantity(fill.symbol) != 0.0 and (closed or before.quantity(fill.symbol) == 0.0)
        if opened and strategy is not None:
            self._opened_by[fill.symbol] = strategy

    def _decide(self, intent: OrderIntent, out: list[Record], submit: list[Submission] | None = None) -> None:
        """Intent -> decision -> paper execution, or (external mode) -> ``submit``.

        ``submit`` may be omitted in paper mode only (nothing is ever submitted there).
        """
        out.append(intent)
        self._order_strategy[client_order_id_for(intent.event_id)] = intent.strategy_id
        while len(self._order_strategy) > _MAX_ORDER_STRATEGIES:
            self._order_strategy.popitem(last=False)
        decision = self.risk.on_intent(intent)
        out.append(decision)
        bar = self._last_bar.get(intent.symbol)
        market = None if bar is None else MarketContext(symbol=bar.symbol, last_price=bar.close, ts_ns=bar.ts_event)
        if self.config.execution is ExecutionMode.EXTERNAL and _sendable(intent, decision):
            coid = client_order_id_for(intent.event_id)
            if submit is None:
                raise ValueError("external execution: _decide needs a submission list")
            if not self.paper.seen(coid):  # at most once per client order id, like paper's own dedupe
                self.paper.remember(coid)
                submit.append((intent, decision, market))
                self._open[coid] = OpenOrder(intent=intent, decision=decision, market=market)
            return
        # paper execution; in external mode only the refusals of orders that are never sent
        for rec in self.paper.submit(intent, decision, market):
            out.append(rec)
            self.risk.on_execution(rec)
            self.strategy.on_execution(rec)


#: Orders whose strategy is remembered for crediting round trips (far more than are ever open at once).
_MAX_ORDER_STRATEGIES = 100_000


def _sendable(intent: OrderIntent, decision: RiskDecision) -> bool:
    """Whether a decision lets an order reach a venue (else paper's refusal record stands for it)."""
    qty = decision.approved_quantity
    return (
        decision.intent_event_id == intent.event_id
        and decision.verdict is not RiskVerdict.REJECTED
        and math.isfinite(qty)
        and qty > 0
    )


# ---------------------------------------------------------------------------
# Records at the edge of the engines
# ---------------------------------------------------------------------------


def snapshot_record(state: PortfolioState, *, config: TradingConfig, cause: Bar, ts_init: int) -> PortfolioSnapshot:
    """The portfolio state after ``cause`` as a ``portfolio.state`` record.

    Built once per traded bar, so built directly: the per-symbol maps in one pass over the
    positions (same keys, same order as a comprehension per map) and the record through
    :func:`~topics.schema.positional_constructor` (the same record as ``PortfolioSnapshot.new``).
    """
    quantities: dict[str, float] = {}
    avg_prices: dict[str, float] = {}
    mark_prices: dict[str, float] = {}
    mark_ts_ns: dict[str, int] = {}
    realized_pnls: dict[str, float] = {}
    unrealized_pnls: dict[str, float] = {}
    fees: dict[str, float] = {}
    opened_at_ns: dict[str, int] = {}
    for s, p in state.positions.items():
        quantities[s] = p.quantity
        avg_prices[s] = p.avg_price
        mark_prices[s] = p.mark_price
        mark_ts_ns[s] = p.mark_ts_ns
        realized_pnls[s] = p.realized_pnl
        unrealized_pnls[s] = p.unrealized_pnl
        fees[s] = p.fees
        if p.opened_at_ns is not None:
            opened_at_ns[s] = p.opened_at_ns
    account = config.account
    as_of_ns = state.as_of_ns
    cause_id = cause.event_id
    # positional, in _SNAPSHOT_FIELDS order (checked at import)
    return _make_snapshot(
        event_id_for(PortfolioSnapshot.KIND, account, as_of_ns, cause_id),
        PortfolioSnapshot.SCHEMA_VERSION,
        as_of_ns,  # ts_event
        ts_init,
        cause.correlation_id,
        cause_id,  # causation_id
        account,
        as_of_ns,
        cause_id,  # as_of_event_id
        config.portfolio.quote_currency,
        state.cash,
        state.equity,
        state.peak_equity,
        state.drawdown,
        state.day_start_ns,
        state.day_start_equity,
        state.day_peak_equity,
        state.intraday_drawdown,
        state.daily_pnl,
        state.daily_return,
        state.realized_pnl,
        state.unrealized_pnl,
        state.fees_paid,
        state.consecutive_losses,
        state.closed_trades,
        state.losing_trades,
        state.fills_applied,
        state.foreign_fee_fills,
        quantities,
        avg_prices,
        mark_prices,
        mark_ts_ns,
        realized_pnls,
        unrealized_pnls,
        fees,
        opened_at_ns,
        config.portfolio.config_hash(),
    )


#: The order :func:`snapshot_record` passes a snapshot's fields in: a field added to or moved in
#: ``PortfolioSnapshot`` fails at import (:func:`~topics.schema.positional_constructor`), never shifts values.
_SNAPSHOT_FIELDS = (
    "event_id",
    "schema_version",
    "ts_event",
    "ts_init",
    "correlation_id",
    "causation_id",
    "account",
    "as_of_ns",
    "as_of_event_id",
    "quote_currency",
    "cash",
    "equity",
    "peak_equity",
    "drawdown",
    "day_start_ns",
    "day_start_equity",
    "day_peak_equity",
    "intraday_drawdown",
    "daily_pnl",
    "daily_return",
    "realized_pnl",
    "unrealized_pnl",
    "fees_paid",
    "consecutive_losses",
    "closed_trades",
    "losing_trades",
    "fills_applied",
    "foreign_fee_fills",
    "quantities",
    "avg_prices",
    "mark_prices",
    "mark_ts_ns",
    "realized_pnls",
    "unrealized_pnls",
    "fees",
    "opened_at_ns",
    "config_hash",
)
_make_snapshot = positional_constructor(PortfolioSnapshot, _SNAPSHOT_FIELDS)


def opening_record(
    report: OpeningReport, *, config: TradingConfig, cause_event_id: str | None = None
) -> OpeningStatus | None:
    """``report`` as a ``risk.opening`` record (None before the wall clock holds a real time)."""
    market, wall = report.market_ns, report.wall_ns
    stamp = max(market, wall)
    if stamp < TS_MIN_NS:
        return None
    b = report.blockers
    return OpeningStatus.new(
        ts_init=stamp,
        causation_id=cause_event_id,
        ts_event=stamp,
        account=config.account,
        allowed=report.allowed,
        market_ns=market,
        wall_ns=wall,
        blocker_codes=tuple(x.code for x in b),
        blocker_scopes=tuple(x.scope for x in b),
        blocker_targets=tuple(x.target for x in b),
        blocker_details=tuple(x.detail for x in b),
        blocker_until_ns=tuple(x.until_ns for x in b),
        blocker_domains=tuple(x.domain.value for x in b),
        blocker_remaining_ns=tuple(x.remaining_ns(market, wall) for x in b),
        config_hash=config.risk.config_hash(),
    )


def alert_for_audit(audit: EngineAudit, config: TradingConfig) -> Alert:
    """A control command that failed verification, labelled with the account."""
    return rejected_alert(audit, source=config.component, ts_event=audit.ts_event, labels={"account": config.account})


def _breaker_alert(switch: KillSwitch, config: TradingConfig, bar: Bar, now: int) -> Alert:
    return Alert.new(
        ts_init=now,
        correlation_id=bar.correlation_id,
        causation_id=bar.event_id,
        ts_event=bar.ts_event,
        severity=Severity.WARNING,
        source=config.component,
        code="kill_switch_engaged",
        message=f"kill switch engaged: {switch.describe()}",
        dedupe_key=f"{switch.scope.value}|{switch.target}|{switch.set_by}|{switch.set_at_ns}",
        labels={
            "account": config.account,
            "scope": switch.scope.value,
            "target": switch.target,
            "set_by": switch.set_by,
        },
    )
