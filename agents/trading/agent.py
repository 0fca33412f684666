"""Trading agent: ``signals`` + ``market.bars`` + ``control`` + ``models.registry``
-> intents, risk decisions, order updates, fills, portfolio state, control
audits, alerts. Execution is paper (in the core) or a ccxt venue (live or dry
run, awaited here between the core's steps).

Thin: decode (or dead-letter), call :class:`~agents.trading.core.TradingCore`,
send what it returns, count it. The order of operations lives in the core,
not here, so live and replay cannot drift apart.

Shape
-----
One faust agent consumes the four input topics as *one* stream
(``app.topic(signals, market.bars, control, models.registry)``; the registry
gives each model version's rollout stage, hence its share of capital) and
dispatches on the
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
downstream sinks dedupe. Outputs go straight to faust's producer inside the
micro-batch; each checkpoint flushes it and checks every delivery before it
saves the offsets that cover them.

External execution (``TRADEFLOW_EXECUTION_ADAPTER=ccxt``)
--------------------------------------------------------
The core runs in ``external`` mode (:mod:`agents.trading.core`): each step
returns the approved orders in ``Step.to_submit``; after publishing the
step's records the agent awaits
:meth:`~agents.execution.ccxt_live.CcxtExecutionAdapter.submit` for each, in
order, and feeds every answer (order updates, fills) through
``core.on_execution``, publishing what that returns (the answer itself,
stamped with the core's clock: the adapter's clock *is* the core's clock).
Rejected decisions never reach the adapter: the core emits paper's
``rejected``/``risk_blocked`` record for them, labelled with the adapter's
name (``ccxt:<venue>:<market>``), so a kill switch blocks every order
whatever the adapter. The venue's answers are inputs of the decision
process, so they are journaled like the broker inputs (topic
``orders.updates`` / ``fills``, their event ids, arrival ``NULL``; partition
and offset ``-1``: they were not consumed from the broker, the columns are
``NOT NULL``) and ``tradeflow audit`` replays them through ``on_execution``.

Start-up, before the first message is consumed: the venue's markets are
loaded from ``TRADEFLOW_EXECUTION_MARKETS_FILE`` (dry run only) or from the
venue on a private event loop within the adapter's connect timeout; an
unreachable venue logs ``trading_execution_unavailable`` (critical) and
exits 3. The markets file is a *ccxt markets dump*: the JSON object
``exchange.markets`` after ``load_markets()`` (unified symbol -> unified
market; :func:`~agents.execution.ccxt_live.dump_markets_snapshot` writes
it), so dry-run validation runs offline against pinned precision and limits
and gives the same answers on every run and every replay.

Recovery in external mode: re-processing the inputs after the checkpoint
submits their orders again. In a dry run that gives byte-identical answers
(validation is a pure function of the pinned markets). Live, the client
order id is the same, so the venue refuses a second order and the adapter
reports ``acknowledged``/``already_placed``; fills of the first placement
that were not checkpointed are not fetched back (no reconciliation yet).

Configuration (environment)
---------------------------
``TRADEFLOW_TRADING_ACCOUNT`` (``paper``), ``TRADEFLOW_EXECUTION_ADAPTER``
(``paper`` or ``ccxt``; ccxt reads ``TRADEFLOW_EXECUTION_VENUE``
(``binance``/``bitget``/``coinbase``, required), ``TRADEFLOW_EXECUTION_MARKET``
(``spot``/``swap``, default spot), ``TRADEFLOW_EXECUTION_DRY_RUN`` (default
``1``; orders are sent only with an explicit ``0``, which also needs
credentials), ``TRADEFLOW_EXECUTION_LEVERAGE`` / ``_MARGIN_MODE`` /
``_POSITION_MODE`` (perpetuals), ``TRADEFLOW_EXECUTION_MARKETS_FILE`` (see
above), credentials ``TRADEFLOW_EXCHANGE_API_KEY`` / ``_SECRET`` /
``_PASSWORD`` or the same names with ``_FILE``, never logged),
``TRADEFLOW_TRADING_SYMBOLS`` (comma list: the risk
engine's allowed symbols; default BTC/ETH USDT spot and perpetuals),
``TRADEFLOW_TRADING_TIMEFRAMES`` (``1h``),
``TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S`` (``60``: how long a signal that
arrived before its bar waits for it, see :mod:`agents.trading.core`), and the control keys
``TRADEFLOW_CONTROL_KEY_<ID>`` / ``_FILE`` (see
:mod:`agents.control.signing`). Without a control key the agent refuses to
start: a trading process no operator can halt must not run.

Restart recovery (exact)
------------------------
The engines' state is checkpointed to PostgreSQL (``trading_checkpoints``,
one row per account, :mod:`agents.trading.checkpoint`) together with the
next offset of every input partition it covers: after a micro-batch when
``CHECKPOINT_EVERY_S`` passed since the last checkpoint and at least
``1 / CHECKPOINT_MAX_SHARE`` times the last checkpoint's duration (so saving
state takes at most that share of the time, whatever its size), otherwise as
soon as the input pauses for ``CHECKPOINT_IDLE_S`` (a debounce task); with
external execution after every micro-batch. Why not after every batch: the
snapshot pickles the whole core (its size grows with the engines' bounded
caches and the orders in flight to ~1 MB and more, tens to hundreds of ms),
and with the producer flush and the commit it was most of the agent's time
under load (issue #5). A longer interval costs nothing in correctness: after
a crash the inputs since the checkpoint are re-processed, to the same
outputs with the same ids. Order per checkpoint, under one
lock with the batches (never mid-message): snapshot core + offsets
(synchronous) -> flush the producer (every output of those inputs is on
the broker) -> journal rows of every input since the last checkpoint +
upsert the row in one transaction. A failed write raises: the worker crashes
(non-zero exit) instead of going on with state it could not save. faust acks
each batch when the next is taken, so its committed offsets may run ahead of
the checkpoint; they are advisory (next paragraph): inputs after the
checkpoint are re-read and re-processed after a crash.

On every partition assignment faust seeks the inputs to the group's
committed offsets (``consumer.perform_seek``, run by its recovery after the
``on_partitions_assigned`` signal and again when flow resumes); the agent
wraps that method so each input partition is then sought to the position of
the state in memory: at the first assignment that state is the checkpoint
(no row: a flat core at offset 0, i.e. the account's whole input history,
which is what a new consumer group with ``earliest`` reads anyway). The
committed offsets therefore never decide where this agent resumes: a commit
behind the checkpoint re-reads inputs the state already holds (skipped by
offset), one ahead of it cannot skip inputs the state lacks. Inputs after the
checkpoint are re-processed by the restored core, which is the uninterrupted
run's state, so they give byte-identical outputs with the same event ids and
the sinks drop the copies: a SIGKILL at any point changes no row
(``tests/integration/test_trading_recovery.py``). A message whose offset is
below the in-memory position (a redelivery after an in-process rebalance) is
skipped (``tradeflow_trading_inputs_skipped_total``).

The arrival bound of the core's clock is the message's broker timestamp (end
of its millisecond), not the worker's wall clock: a re-processed message
then meets the same bound as the first time, which exact recovery needs.

Input journal: with each checkpoint, in the same transaction, the decoded
inputs since the previous one are appended to ``trading_input_journal`` (migration 012) in
the order they were applied, with their arrival bound: the interleaving of
the three input topics is the one fact of a live run not in the records, and
``tradeflow audit`` replays exactly that order (:mod:`backtest.audit`).

A checkpoint is refused (exit 2) when it was built with another trading
configuration, another format, a control key no longer in the keyring, or
its MAC fails; delete the account's row to start it flat. Cost: the whole
core is pickled per checkpoint (its caches are bounded by the engines'
``max_*`` settings), see ``ops/bench/trading.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from agents.clock import FunctionClock
from agents.confighash import stable_config_hash
from agents.control.signing import Keyring, load_keyring
from agents.execution.paper import PaperConfig
from agents.risk.config import RiskConfig
from agents.trading.checkpoint import CheckpointError, load_checkpoint, open_checkpoint, save_checkpoint, seal
from agents.trading.core import ExecutionMode, Step, TradingConfig, TradingCore
from runtime.agent import AgentContext, crash_worker_on_bug, decode_or_dead_letter
from runtime.metrics import PROCESS_LATENCY, RECORDS_OUT
from topics.catalogue import DEFAULT_TOPIC, spec
from topics.records import (
    Alert,
    Bar,
    ControlEvent,
    ModelRegistryEvent,
    OrderUpdate,
    RiskDecision,
    Severity,
    Signal,
    Timeframe,
)
from topics.schema import Record, codec_for

if TYPE_CHECKING:
    from agents.execution.ccxt_live import CcxtExecutionAdapter, LiveExecutionConfig

__all__ = ["NAME", "ExecutionSettings", "TradingSettings", "load_exchange_credentials", "register"]

log = structlog.get_logger("agents.trading")

NAME = "trading"
BATCH_MAX = 200
BATCH_WAIT_S = 0.005
#: Under sustained input a checkpoint is taken at most this often (paper execution; see "Restart recovery").
CHECKPOINT_EVERY_S = 0.25
#: ... and at most this share of the time: the next one waits at least ``last duration / share``.
CHECKPOINT_MAX_SHARE = 0.2
#: ... and once the input pauses this long, so a quiet stream's state is saved right behind it.
CHECKPOINT_IDLE_S = 0.05
#: seconds a checkpoint statement may wait for PostgreSQL before the worker gives up (and crashes)
CHECKPOINT_DB_TIMEOUT_S = 30.0
EXIT_CONFIG = 2
EXIT_INFRA = 3

INPUTS = ("signals", "market.bars", "control", "models.registry")
OUTPUTS = (
    "orders.intents",
    "risk.decisions",
    "orders.updates",
    "fills",
    "portfolio.state",
    "control.audit",
    "ops.alerts",
)
ADAPTERS = ("paper", "ccxt")
#: Journal partition/offset of an execution answer: it came from the adapter, not from the broker.
NOT_CONSUMED = -1

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
    "tradeflow_trading_checkpoint_seconds", "Snapshot + producer flush + upsert of one checkpoint", ["account"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CHECKPOINT_BYTES = Gauge("tradeflow_trading_checkpoint_bytes", "Size of the last checkpoint's state", ["account"])
DRAWDOWN = Gauge("tradeflow_portfolio_drawdown", "Peak-to-now drawdown (fraction)", ["account"])
EXECUTION_SUBMIT_SECONDS = Histogram(
    "tradeflow_execution_submit_seconds", "One order through an external execution adapter", ["account", "adapter"],
    buckets=(0.0005, 0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)

#: ccxt credential key -> environment variable (each also readable from ``<NAME>_FILE``).
_CREDENTIAL_VARS = {
    "apiKey": "TRADEFLOW_EXCHANGE_API_KEY",
    "secret": "TRADEFLOW_EXCHANGE_SECRET",
    "password": "TRADEFLOW_EXCHANGE_PASSWORD",
}


def load_exchange_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """The exchange credentials from the environment or files (``{}`` when none is set).

    Errors name variables and paths, never values.
    """
    out: dict[str, str] = {}
    for key, var in _CREDENTIAL_VARS.items():
        value, path = env.get(var, "").strip(), env.get(var + "_FILE", "").strip()
        if value and path:
            raise ValueError(f"set {var} or {var}_FILE, not both")
        if path:
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{var}_FILE: cannot read {path} ({exc.strerror})") from None
            if not value:
                raise ValueError(f"{var}_FILE: {path} is empty")
        if value:
            out[key] = value
    return out


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{name}={text!r}: expected 1 or 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionSettings:
    """The ccxt adapter's environment (``TRADEFLOW_EXECUTION_*``), credentials excluded.

    Dry run is the default: orders reach a venue only with an explicit
    ``TRADEFLOW_EXECUTION_DRY_RUN=0``. A markets file pins the market rules a
    dry run validates against; live sending always loads the venue's current
    markets (stale precision or limits would reject or mis-size real orders).
    """

    venue: str
    market: str = "spot"
    dry_run: bool = True
    leverage: int | None = None
    margin_mode: str = "cross"
    position_mode: str = "one_way"
    markets_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExecutionSettings:
        venue = env.get("TRADEFLOW_EXECUTION_VENUE", "").strip()
        if not venue:
            raise ValueError("TRADEFLOW_EXECUTION_ADAPTER=ccxt: ccxt execution is not wired to a venue; set "
                             "TRADEFLOW_EXECUTION_VENUE (binance, bitget or coinbase)")
        leverage_text = env.get("TRADEFLOW_EXECUTION_LEVERAGE", "").strip()
        try:
            leverage = int(leverage_text) if leverage_text else None
        except ValueError:
            raise ValueError(f"TRADEFLOW_EXECUTION_LEVERAGE={leverage_text!r}: expected an integer") from None
        settings = cls(
            venue=venue,
            market=env.get("TRADEFLOW_EXECUTION_MARKET", "").strip() or "spot",
            dry_run=_flag(env, "TRADEFLOW_EXECUTION_DRY_RUN", True),
            leverage=leverage,
            margin_mode=env.get("TRADEFLOW_EXECUTION_MARGIN_MODE", "").strip() or "cross",
            position_mode=env.get("TRADEFLOW_EXECUTION_POSITION_MODE", "").strip() or "one_way",
            markets_file=env.get("TRADEFLOW_EXECUTION_MARKETS_FILE", "").strip() or None,
        )
        if settings.markets_file is not None and not settings.dry_run:
            raise ValueError("TRADEFLOW_EXECUTION_MARKETS_FILE pins market rules for dry runs only; live sending "
                             "(TRADEFLOW_EXECUTION_DRY_RUN=0) loads the venue's current markets")
        settings.live_config()  # the adapter's own validation (venue x market, leverage, modes)
        return settings

    def live_config(self) -> LiveExecutionConfig:
        from agents.execution.ccxt_live import LiveExecutionConfig, MarginMode, PositionMode, VenueMarket

        try:
            return LiveExecutionConfig(
                exchange_id=self.venue, market_type=VenueMarket(self.market), dry_run=self.dry_run,
                leverage=self.leverage, margin_mode=MarginMode(self.margin_mode),
                position_mode=PositionMode(self.position_mode),
            )
        except ValueError as exc:
            raise ValueError(f"TRADEFLOW_EXECUTION_*: {exc}") from None

    @property
    def adapter(self) -> str:
        """The adapter's name on its records and metrics: ``ccxt:<venue>:<market>``."""
        return f"ccxt:{self.venue}:{self.market}"


@dataclass(frozen=True, slots=True)
class TradingSettings:
    """The agent's environment, parsed once at start-up.

    ``adapter``: ``paper`` (in-process fills) or ``ccxt`` (``execution`` set:
    the core runs in external mode, see the module docstring). The audit
    builds its configuration from the same variables, so it replays in the
    mode that traded.
    """

    account: str = "paper"
    adapter: str = "paper"
    symbols: tuple[str, ...] = ()
    timeframes: tuple[Timeframe, ...] = (Timeframe.H1,)
    execution: ExecutionSettings | None = None
    #: How long a signal that arrived before its bar waits for it (arrival time, seconds).
    signal_bar_wait_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TradingSettings:
        def items(name: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())

        adapter = env.get("TRADEFLOW_EXECUTION_ADAPTER", "paper").strip() or "paper"
        if adapter not in ADAPTERS:
            raise ValueError(f"TRADEFLOW_EXECUTION_ADAPTER={adapter!r}: the trading agent supports {list(ADAPTERS)}")
        execution = ExecutionSettings.from_env(env) if adapter == "ccxt" else None
        try:
            timeframes = tuple(Timeframe(t) for t in items("TRADEFLOW_TRADING_TIMEFRAMES")) or (Timeframe.H1,)
        except ValueError as exc:
            raise ValueError(f"TRADEFLOW_TRADING_TIMEFRAMES: {exc}") from None
        raw_wait = env.get("TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S", "60").strip() or "60"
        try:
            wait_s = float(raw_wait)
        except ValueError:
            raise ValueError(f"TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S={raw_wait!r} is not a number of seconds") from None
        if not (math.isfinite(wait_s) and wait_s >= 0):
            raise ValueError(f"TRADEFLOW_TRADING_SIGNAL_BAR_WAIT_S={raw_wait!r} must be a finite number >= 0")
        return cls(
            account=env.get("TRADEFLOW_TRADING_ACCOUNT", "paper").strip() or "paper",
            adapter=adapter,
            symbols=items("TRADEFLOW_TRADING_SYMBOLS"),
            timeframes=timeframes,
            execution=execution,
            signal_bar_wait_s=wait_s,
        )

    def config(self) -> TradingConfig:
        risk = RiskConfig(allowed_symbols=self.symbols) if self.symbols else RiskConfig()
        config = TradingConfig(account=self.account, timeframes=self.timeframes, risk=risk,
                               signal_bar_wait_ns=round(self.signal_bar_wait_s * 1e9))
        if self.execution is None:
            return config
        # paper.adapter labels the refusals the core emits for orders it never sends
        return dataclasses.replace(config, execution=ExecutionMode.EXTERNAL,
                                   paper=PaperConfig(adapter=self.execution.adapter))


class _Live:
    """The core in force and the input position its state reflects.

    ``position[(topic, partition)]`` is the next offset whose message the
    state does *not* contain; it only moves forward, together with the core,
    one message at a time.
    """

    __slots__ = ("core", "events", "position")

    def __init__(self, core: TradingCore) -> None:
        self.core = core
        self.position: dict[tuple[str, int], int] = {}
        self.events = 0

    def offsets(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in sorted(self.position.items()):
            out.setdefault(topic, {})[partition] = offset
        return out


def _restore(live: _Live, dsn: str, keyring: Keyring, config_hash: str) -> None:
    """Load the account's checkpoint (if any) into ``live`` before the worker starts.

    Runs on a private event loop (faust's is not running yet and must not be
    replaced). Exit 2 on a refused checkpoint, 3 when PostgreSQL is unreachable.
    """
    account = live.core.config.account

    async def load() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            cp = await load_checkpoint(conn, account)
        finally:
            await conn.close()
        if cp is None:
            log.info("trading_checkpoint_none", account=account, resume="every input partition from offset 0")
            return
        live.core = open_checkpoint(cp, keyring, account=account, config_hash=config_hash)
        live.position = {(t, p): o for t, parts in cp.offsets.items() for p, o in parts.items()}
        live.events = cp.events_applied
        log.info("trading_checkpoint_restored", account=account, events_applied=cp.events_applied,
                 offsets=live.offsets(), state_bytes=len(cp.state), state_sha256=cp.state_sha256)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(load())
    except CheckpointError as exc:
        log.critical("trading_checkpoint_refused", account=account, reason=str(exc))
        raise SystemExit(EXIT_CONFIG) from None
    except (TimeoutError, OSError) as exc:
        log.critical("trading_checkpoint_unavailable", account=account, error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(EXIT_INFRA) from None
    finally:
        loop.close()


def _start_execution(settings: TradingSettings, env: Mapping[str, str], live: _Live) -> CcxtExecutionAdapter | None:
    """The ccxt adapter with its markets loaded, or ``None`` for paper execution.

    Markets come from the snapshot file or from the venue, fetched on a
    private event loop by a throw-away exchange instance (a ccxt async
    instance binds to the loop it first runs on; the trading instance must
    bind to faust's). Exit 2 on a configuration error, 3 when the venue
    cannot be reached. The adapter's clock is the core's clock, so venue
    records carry the core's event time (``live.core`` is replaced by a
    restored checkpoint: the clock follows it).
    """
    ex = settings.execution
    if ex is None:
        return None
    from agents.execution.ccxt_live import (
        CcxtExecutionAdapter,
        ExecutionUnavailable,
        load_markets_snapshot,
        make_execution_exchange,
    )

    account = settings.account
    config = ex.live_config()
    clock = FunctionClock(lambda: live.core.clock.now_ns())
    try:
        credentials = load_exchange_credentials(env)
        if not config.dry_run and not credentials:
            raise ValueError("TRADEFLOW_EXECUTION_DRY_RUN=0 sends orders and needs TRADEFLOW_EXCHANGE_API_KEY and "
                             "TRADEFLOW_EXCHANGE_SECRET (or their _FILE variants)")
        if ex.markets_file is not None:
            try:
                text = Path(ex.markets_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"TRADEFLOW_EXECUTION_MARKETS_FILE: cannot read {ex.markets_file} "
                                 f"({exc.strerror})") from None
            markets = load_markets_snapshot(text)
            source = f"file {ex.markets_file} sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    except ValueError as exc:  # names variables and paths, never credential values
        log.critical("trading_agent_refused_to_start", account=account, reason=str(exc))
        raise SystemExit(EXIT_CONFIG) from None
    if ex.markets_file is None:

        async def fetch() -> dict[str, Any]:
            probe = make_execution_exchange(config, credentials or None)
            try:
                await CcxtExecutionAdapter(probe, config, clock).connect()
                return dict(probe.markets)
            finally:
                await probe.close()

        loop = asyncio.new_event_loop()
        try:
            markets = loop.run_until_complete(fetch())
        except ExecutionUnavailable as exc:
            log.critical("trading_execution_unavailable", account=account, adapter=config.adapter,
                         dry_run=config.dry_run, error=str(exc))
            raise SystemExit(EXIT_INFRA) from None
        finally:
            loop.close()
        source = "venue"
    exchange = make_execution_exchange(config, credentials or None)
    exchange.set_markets(markets)
    log.info("trading_execution_ready", account=account, adapter=config.adapter, dry_run=config.dry_run,
             markets=len(markets), markets_source=source, credentials=bool(credentials))
    return CcxtExecutionAdapter(exchange, config, clock)


#: The input journal (migration 012): the order inputs were applied, for an exact audit replay.
JOURNAL_INSERT = (
    "INSERT INTO trading_input_journal (account, seq, topic, kafka_partition, kafka_offset, event_id, arrival_ns) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account, seq) DO NOTHING"
)


def _arrival_ns(msg: Any) -> int | None:
    """Upper bound of the message's arrival: the end of its broker timestamp's millisecond.

    A property of the message, so a re-processed message meets the same
    clock bound as the first time (the wall clock would not).
    """
    ts = msg.timestamp
    if not ts or ts <= 0:
        return None
    return round(float(ts) * 1000) * 1_000_000 + 999_999


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
    config_hash = stable_config_hash(settings.config())
    live = _Live(core)
    _restore(live, ctx.dsn, keyring, config_hash)
    adapter = _start_execution(settings, env, live)
    log.info("trading_agent_configured", account=account, adapter=settings.adapter,
             timeframes=[t.value for t in settings.timeframes], symbols=list(core.config.risk.allowed_symbols),
             control_key_ids=list(keyring.key_ids), config_hash=config_hash)

    handlers: dict[str, tuple[str, type[Record], Callable[[TradingCore, Any, int | None], Step]]] = {
        ctx.topic("signals"): ("signals", Signal, TradingCore.on_signal),
        ctx.topic("market.bars"): ("market.bars", Bar, TradingCore.on_bar),
        ctx.topic("control"): ("control", ControlEvent, TradingCore.on_control),
        ctx.topic("models.registry"): ("models.registry", ModelRegistryEvent, TradingCore.on_registry),
    }
    src = app.topic(*handlers)
    out_names = {name: ctx.topic(name) for name in OUTPUTS}
    deliveries: list[Any] = []  # the producer's delivery futures of the outputs since the last checkpoint
    out_counters = {name: RECORDS_OUT.labels(NAME, name) for name in OUTPUTS}
    latency = PROCESS_LATENCY.labels(NAME)
    checkpoint_seconds = CHECKPOINT_SECONDS.labels(account)
    submit_seconds = EXECUTION_SUBMIT_SECONDS.labels(account, adapter.name if adapter is not None else "paper")
    expected = {ctx.topic(n): spec(n).partitions for n in INPUTS}
    db: list[Any] = []

    async def seek_inputs(consumer: Any) -> None:
        """Every owned input partition to the in-memory state's position (see the module docstring)."""
        for tp in sorted(consumer.assignment()):
            if tp.topic not in expected:
                continue
            target = live.position.get((tp.topic, tp.partition), 0)
            await consumer.seek(tp, target)
            # faust only commits contiguously from its committed offset; after a seek *past* it, move its
            # bookkeeping along, or it would never commit this partition again (advisory for this agent).
            committed = consumer._committed_offset.get(tp)
            if committed is None or committed < target:
                consumer._committed_offset[tp] = target
        log.info("trading_inputs_sought", account=account, offsets=live.offsets())

    def hook_perform_seek() -> None:
        consumer = app.consumer
        if getattr(consumer, "_tradeflow_seek_hooked", False):
            return
        original = consumer.perform_seek

        async def perform_seek() -> None:
            await original()
            await seek_inputs(consumer)

        consumer.perform_seek = perform_seek
        consumer._tradeflow_seek_hooked = True

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
            return
        hook_perform_seek()  # faust's recovery calls it right after this signal

    gate = asyncio.Lock()  # a batch and a checkpoint never interleave: the snapshot is taken between messages
    pending: list[tuple[Any, ...]] = []  # journal rows of the inputs applied since the last checkpoint
    #: monotonic times of the last checkpoint and batch; inputs applied since the checkpoint; its duration (s)
    timing = {"last_checkpoint": 0.0, "last_batch": 0.0, "unsaved": 0.0, "last_cost": 0.0}
    idle_flush: list[asyncio.Task[None]] = []

    async def checkpoint_pending() -> None:
        """Checkpoint the inputs applied since the last one (caller holds ``gate``)."""
        timing["last_cost"] = await checkpoint(pending)
        pending.clear()
        timing["unsaved"] = 0
        timing["last_checkpoint"] = time.monotonic()

    async def flush_when_idle() -> None:
        """Checkpoint what is pending once no batch came for ``CHECKPOINT_IDLE_S`` (debounced)."""
        try:
            while True:
                wait = timing["last_batch"] + CHECKPOINT_IDLE_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                async with gate:
                    if time.monotonic() < timing["last_batch"] + CHECKPOINT_IDLE_S:
                        continue  # a batch ran while this task waited for the gate
                    if timing["unsaved"]:
                        await checkpoint_pending()
                return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a checkpoint that cannot be written: crash, as in the agent body
            log.critical("agent_crashed", agent=NAME, error=f"{type(exc).__name__}: {exc}", exc_info=True)
            await app.crash(exc)

    async def after_batch() -> None:
        """Checkpoint now, or leave it to the idle flush (caller holds ``gate``).

        External execution checkpoints every batch: orders re-submitted on recovery are the ones after
        the checkpoint, and live fills of a first placement are not fetched back (module docstring).
        """
        now = time.monotonic()
        timing["last_batch"] = now
        if not timing["unsaved"]:
            return
        every = max(CHECKPOINT_EVERY_S, timing["last_cost"] / CHECKPOINT_MAX_SHARE)
        if adapter is not None or now - timing["last_checkpoint"] >= every:
            await checkpoint_pending()
        elif not idle_flush or idle_flush[0].done():
            idle_flush[:] = [asyncio.ensure_future(flush_when_idle())]

    async def checkpoint(journal: list[tuple[Any, ...]]) -> float:
        """Snapshot -> flush outputs -> journal + upsert in one transaction; an exception here crashes
        the worker. Returns how long it took (s)."""
        t0 = time.perf_counter()
        cp = seal(live.core, config_hash=config_hash, offsets=live.offsets(), events_applied=live.events,
                  keyring=keyring)
        await app.producer.flush()
        sent, deliveries[:] = list(deliveries), []
        for done in sent:
            await done  # raises the send's error: this checkpoint must not cover an output that was lost
        if not db:
            import asyncpg

            # a checkpoint that gets no answer crashes the worker (restart resumes from the last one)
            db.append(await asyncpg.connect(ctx.dsn, command_timeout=CHECKPOINT_DB_TIMEOUT_S))
        async with db[0].transaction():
            if journal:
                await db[0].executemany(JOURNAL_INSERT, journal)
            await save_checkpoint(db[0], cp)
        took = time.perf_counter() - t0
        checkpoint_seconds.observe(took)
        CHECKPOINT_BYTES.labels(account).set(len(cp.state))
        return took

    async def publish(rec: Record) -> None:
        """Hand ``rec`` to the producer (in call order, keyed like every producer of its topic).

        Straight to faust's producer, not through ``Topic.send_soon``'s buffer: that per-message path
        was most of the agent's own CPU (a profile at 1,000 signals/s). Delivery is awaited by the next
        checkpoint, which fails (and crashes the worker before its offsets are saved) on any send error.
        """
        name = DEFAULT_TOPIC[type(rec)]
        deliveries.append(await app.producer.send(
            out_names[name], rec.key(), codec_for(type(rec)).encode(rec), None, None, None))
        out_counters[name].inc()
        if isinstance(rec, RiskDecision):
            RISK_VERDICTS.labels(account, rec.verdict.value).inc()
            for reason in rec.reasons:
                RISK_REASONS.labels(account, reason).inc()
        elif isinstance(rec, OrderUpdate):
            ORDER_UPDATES.labels(account, rec.adapter, rec.status.value, rec.reason or "").inc()

    def observe(step: Step) -> None:
        for sizing in step.sizings:
            SIZING.labels(account, sizing.reason.value).inc()
        if step.held:
            SIGNALS_ALIGNED.labels(account, "held").inc()
        if step.released_unaligned:
            SIGNALS_ALIGNED.labels(account, "released_without_bar").inc(step.released_unaligned)
            log.warning("signals_released_without_bar", account=account, count=step.released_unaligned)
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

    async def execute(step: Step, journal: list[tuple[Any, ...]]) -> None:
        """Send the step's orders; each answer is journaled, applied by the core and published, in order."""
        if not step.to_submit:
            return
        if adapter is None:  # pragma: no cover - a paper core never returns orders to submit
            raise RuntimeError("the core returned orders to submit but no external adapter is configured")
        for intent, decision, market in step.to_submit:
            t0 = time.perf_counter()
            answers = await adapter.submit(intent, decision, market)
            submit_seconds.observe(time.perf_counter() - t0)
            for answer in answers:
                journal.append((account, live.events, DEFAULT_TOPIC[type(answer)], NOT_CONSUMED, NOT_CONSUMED,
                                answer.event_id, None))
                for out in live.core.on_execution(answer).records:
                    await publish(out)
                live.events += 1

    def undecodable_control(event: Any) -> Alert:
        msg = event.message
        arrival = _arrival_ns(msg)
        now = ctx.wall_clock() if arrival is None else arrival  # the message's time: same on re-processing
        return Alert.new(
            ts_init=now,
            ts_event=now,
            severity=Severity.ERROR,
            source=live.core.config.component,
            code="control_undecodable",
            message=f"undecodable message on the control topic (partition {msg.partition}, offset {msg.offset}); "
            "see the dead-letter topic",
            dedupe_key=f"{msg.topic}|{msg.partition}|{msg.offset}",
            labels={"account": account, "topic": "control"},
        )

    async def apply_batch(events: list[Any]) -> None:
        """Each input through the core in order, outputs sent; journal rows go to ``pending``."""
        journal = pending
        for event in events:
            msg = event.message
            tp = (msg.topic, msg.partition)
            name, cls, handle = handlers[msg.topic]
            if msg.offset < live.position.get(tp, 0):
                INPUTS_SKIPPED.labels(account, name).inc()
                continue
            rec = await decode_or_dead_letter(ctx, NAME, name, cls, event)
            step = None
            if rec is None:
                if name == "control":
                    await publish(undecodable_control(event))
            else:
                arrival = _arrival_ns(msg)
                journal.append((account, live.events, name, msg.partition, msg.offset, rec.event_id, arrival))
                step = handle(live.core, rec, arrival)
                for out in step.records:
                    await publish(out)
                observe(step)
            live.position[tp] = msg.offset + 1
            live.events += 1
            timing["unsaved"] += 1
            if step is not None:
                await execute(step, journal)

    @app.agent(src, name=NAME)  # type: ignore[untyped-decorator]
    @crash_worker_on_bug(app, NAME)
    async def trade(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WAIT_S):
            t0 = time.perf_counter()
            async with gate:
                await apply_batch(events)
                await after_batch()
            state = live.core.portfolio_state()
            EQUITY.labels(account).set(state.equity)
            DRAWDOWN.labels(account).set(state.drawdown)
            KILL_SWITCHES.labels(account).set(len(live.core.active_kill_switches()))
            SIGNALS_HELD.labels(account).set(len(live.core.held_signals()))
            latency.observe(time.perf_counter() - t0)

    return trade
