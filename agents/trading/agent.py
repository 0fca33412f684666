"""Trading agent: ``signals`` + ``market.bars`` + ``control`` -> intents,
risk decisions, order updates, fills, portfolio state, control audits, alerts.

Thin: decode (or dead-letter), call :class:`~agents.trading.core.TradingCore`,
send what it returns, count it. The order of operations lives in the core,
not here, so live and replay cannot drift apart.

Shape
-----
One faust agent consumes the three input topics as *one* stream
(``app.topic(signals, market.bars, control)``) and dispatches on the
message's topic: one ordered sequence of events per account, handled one at
a time by synchronous engines. Intents are decided and executed in-process
in the same call that sized them (``orders.intents`` is an output, the audit
trail, not a hop), so a kill switch applied by one message is in force for
the very next message, and a redelivered signal meets its own decision
instead of racing it.

Out: ``orders.intents``, ``risk.decisions``, ``orders.updates``, ``fills``,
``portfolio.state`` (key = account), ``control.audit``, ``ops.alerts``,
dead letters for undecodable input (plus an alert when that input was on
``control``: garbage on the control topic may be an attack).

Singleton per account
---------------------
Risk state is global to an account (drawdown, kill switches, order rate,
exposure across symbols), so partitions give no parallelism here: exactly
one worker runs ``--agents trading`` for an account, in its own consumer
group (the worker's app id). A second instance would split the partitions
and with them the risk state; to make that loud rather than silently wrong,
the agent checks every assignment and crashes the worker unless it owns
*every* partition of its three input topics. The check runs in faust's
assignment callback, before the fetcher resumes, so a partial owner never
consumes a message: with two instances, the one handed half the partitions
exits non-zero and the other gets everything at the next rebalance (checked
by hand with two workers on the embedded broker). Scale by account, not by
partition.

Delivery
--------
At-least-once in, idempotent out: a redelivered signal is a duplicate in the
strategy (no intent), an intent redelivered to risk gets its cached decision
and paper execution ignores a client order id it has seen; a redelivered
bar is skipped by the core; every output has a deterministic event id, so
downstream sinks dedupe. Outputs go out with ``send_soon`` inside the
micro-batch; faust flushes the producer before it commits offsets.

Configuration (environment)
---------------------------
``TRADEFLOW_TRADING_ACCOUNT`` (``paper``), ``TRADEFLOW_EXECUTION_ADAPTER``
(``paper``; the only adapter wired into the agent so far: anything else
refuses to start), ``TRADEFLOW_TRADING_SYMBOLS`` (comma list: the risk
engine's allowed symbols; default BTC/ETH USDT spot and perpetuals),
``TRADEFLOW_TRADING_TIMEFRAMES`` (``1h``), and the control keys
``TRADEFLOW_CONTROL_KEY_<ID>`` / ``_FILE`` (see
:mod:`agents.control.signing`). Without a control key the agent refuses to
start: a trading process no operator can halt must not run.

Restart (known gap): engine state is in memory and not rebuilt on start. A
restarted worker resumes from its committed offsets with a flat book, no
kill switches and an empty nonce cache; the deterministic ids still keep a
redelivered *output* from doubling a row, but the paper engine would accept
an intent it had seen before the restart. Rebuilding the state (replaying
the input topics through the core, which is deterministic) is open work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from agents.control.signing import load_keyring
from agents.risk.config import RiskConfig
from agents.runtime import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from agents.trading.core import Step, TradingConfig, TradingCore
from ops.metrics import PROCESS_LATENCY, RECORDS_OUT
from topics.catalogue import DEFAULT_TOPIC, spec
from topics.records import Alert, Bar, ControlEvent, OrderUpdate, RiskDecision, Severity, Signal, Timeframe
from topics.schema import Record, codec_for

__all__ = ["NAME", "TradingSettings", "register"]

log = structlog.get_logger("agents.trading")

NAME = "trading"
BATCH_MAX = 200
BATCH_WAIT_S = 0.005
EXIT_CONFIG = 2

INPUTS = ("signals", "market.bars", "control")
OUTPUTS = (
    "orders.intents",
    "risk.decisions",
    "orders.updates",
    "fills",
    "portfolio.state",
    "control.audit",
    "ops.alerts",
)
ADAPTERS = ("paper",)

SIZING = Counter("tradeflow_sizing_decisions_total", "Signals by sizing outcome", ["account", "reason"])
RISK_VERDICTS = Counter("tradeflow_risk_decisions_total", "Risk decisions by verdict", ["account", "verdict"])
RISK_REASONS = Counter("tradeflow_risk_reasons_total", "Reasons on risk decisions", ["account", "reason"])
ORDER_UPDATES = Counter(
    "tradeflow_order_updates_total", "Order lifecycle transitions", ["account", "adapter", "status", "reason"]
)
CONTROL = Counter("tradeflow_control_commands_total", "Control commands handled", ["account", "outcome", "reason"])
BARS_SKIPPED = Counter("tradeflow_trading_bars_skipped_total", "Bars not traded on", ["account", "reason"])
KILL_SWITCHES = Gauge("tradeflow_kill_switches_active", "Kill switches in force", ["account"])
EQUITY = Gauge("tradeflow_portfolio_equity", "Account equity (quote currency)", ["account"])
DRAWDOWN = Gauge("tradeflow_portfolio_drawdown", "Peak-to-now drawdown (fraction)", ["account"])


@dataclass(frozen=True, slots=True)
class TradingSettings:
    """The agent's environment, parsed once at start-up."""

    account: str = "paper"
    adapter: str = "paper"
    symbols: tuple[str, ...] = ()
    timeframes: tuple[Timeframe, ...] = (Timeframe.H1,)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TradingSettings:
        def items(name: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())

        adapter = env.get("TRADEFLOW_EXECUTION_ADAPTER", "paper").strip() or "paper"
        if adapter not in ADAPTERS:
            raise ValueError(
                f"TRADEFLOW_EXECUTION_ADAPTER={adapter!r}: the trading agent supports {list(ADAPTERS)} "
                "(live ccxt execution is not wired into the agent yet)"
            )
        try:
            timeframes = tuple(Timeframe(t) for t in items("TRADEFLOW_TRADING_TIMEFRAMES")) or (Timeframe.H1,)
        except ValueError as exc:
            raise ValueError(f"TRADEFLOW_TRADING_TIMEFRAMES: {exc}") from None
        return cls(
            account=env.get("TRADEFLOW_TRADING_ACCOUNT", "paper").strip() or "paper",
            adapter=adapter,
            symbols=items("TRADEFLOW_TRADING_SYMBOLS"),
            timeframes=timeframes,
        )

    def config(self) -> TradingConfig:
        risk = RiskConfig(allowed_symbols=self.symbols) if self.symbols else RiskConfig()
        return TradingConfig(account=self.account, timeframes=self.timeframes, risk=risk)


def register(app: Any, ctx: AgentContext, environ: Mapping[str, str] | None = None) -> Any:
    env = os.environ if environ is None else environ
    try:
        settings = TradingSettings.from_env(env)
        keyring = load_keyring(env)
        core = TradingCore(settings.config(), keyring)
    except ValueError as exc:  # messages name variables and key ids, never secrets
        hint = ("; TRADEFLOW_CONTROL_KEY_ID defines a key named 'id' (the CLI's key id variable is "
                "TRADEFLOW_CONTROL_SIGNING_KEY_ID)" if "TRADEFLOW_CONTROL_KEY_ID" in env else "")
        log.critical("trading_agent_refused_to_start", reason=str(exc) + hint)
        raise SystemExit(EXIT_CONFIG) from None
    account = settings.account
    log.info("trading_agent_configured", account=account, adapter=settings.adapter,
             timeframes=[t.value for t in settings.timeframes], symbols=list(core.config.risk.allowed_symbols),
             control_key_ids=list(keyring.key_ids))

    handlers: dict[str, tuple[str, type[Record], Callable[[Any, int], Step]]] = {
        ctx.topic("signals"): ("signals", Signal, core.on_signal),
        ctx.topic("market.bars"): ("market.bars", Bar, core.on_bar),
        ctx.topic("control"): ("control", ControlEvent, core.on_control),
    }
    src = app.topic(*handlers)
    outs = {name: app.topic(ctx.topic(name)) for name in OUTPUTS}
    out_counters = {name: RECORDS_OUT.labels(NAME, name) for name in OUTPUTS}
    latency = PROCESS_LATENCY.labels(NAME)
    expected = {ctx.topic(n): spec(n).partitions for n in INPUTS}

    @app.on_partitions_assigned.connect  # type: ignore[untyped-decorator]
    async def require_every_partition(sender: Any, assigned: Any = None, **_: Any) -> None:
        owned: dict[str, int] = dict.fromkeys(expected, 0)
        for tp in assigned or ():
            if tp.topic in owned:
                owned[tp.topic] += 1
        missing = {t: f"{owned[t]}/{n}" for t, n in expected.items() if owned[t] != n}
        if missing:
            log.critical("trading_agent_not_singleton", account=account, owned=missing,
                         hint="exactly one worker may run the trading agent of an account")
            await app.crash(RuntimeError(f"trading agent must own every input partition, owns {missing}"))

    def publish(rec: Record) -> None:
        name = DEFAULT_TOPIC[type(rec)]
        outs[name].send_soon(key=rec.key(), value=codec_for(type(rec)).encode(rec))
        out_counters[name].inc()
        if isinstance(rec, RiskDecision):
            RISK_VERDICTS.labels(account, rec.verdict.value).inc()
            for reason in rec.reasons:
                RISK_REASONS.labels(account, reason).inc()
        elif isinstance(rec, OrderUpdate):
            ORDER_UPDATES.labels(account, rec.adapter, rec.status.value, rec.reason or "").inc()

    def observe(step: Step) -> None:
        if step.sizing is not None:
            SIZING.labels(account, step.sizing.reason.value).inc()
        if step.audit is not None:
            CONTROL.labels(account, step.audit.outcome.value, step.audit.reason).inc()
            emit = log.error if step.audit.alert else log.info
            emit("control_command", account=account, outcome=step.audit.outcome.value, reason=step.audit.reason,
                 command=step.audit.command, scope=step.audit.scope, target=step.audit.target,
                 claimed_key_id=step.audit.key_id, control_event_id=step.audit.control_event_id,
                 changes=list(step.audit.changes))
        for switch in step.engaged:
            log.warning("kill_switch_engaged", account=account, switch=switch.describe())
        if step.bar_skipped is not None:
            BARS_SKIPPED.labels(account, step.bar_skipped).inc()

    def undecodable_control(event: Any) -> Alert:
        now = ctx.wall_clock()
        msg = event.message
        return Alert.new(
            ts_init=now,
            ts_event=now,
            severity=Severity.ERROR,
            source=core.config.component,
            code="control_undecodable",
            message=f"undecodable message on the control topic (partition {msg.partition}, offset {msg.offset}); "
            "see the dead-letter topic",
            dedupe_key=f"{msg.topic}|{msg.partition}|{msg.offset}",
            labels={"account": account, "topic": "control"},
        )

    @app.agent(src, name=NAME)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, NAME)
    async def trade(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WAIT_S):
            t0 = time.perf_counter()
            for event in events:
                name, cls, handle = handlers[event.message.topic]
                rec = await decode_or_dead_letter(ctx, NAME, name, cls, event)
                if rec is None:
                    if name == "control":
                        publish(undecodable_control(event))
                    continue
                step = handle(rec, ctx.wall_clock())
                for out in step.records:
                    publish(out)
                observe(step)
            state = core.portfolio_state()
            EQUITY.labels(account).set(state.equity)
            DRAWDOWN.labels(account).set(state.drawdown)
            KILL_SWITCHES.labels(account).set(len(core.active_kill_switches()))
            latency.observe(time.perf_counter() - t0)

    return trade

