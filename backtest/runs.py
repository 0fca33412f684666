"""Backtest runs: a request in, a run record with fills, equity and metrics in Postgres out.

``run_backtest(request, dsn) -> run_id`` (sync) / ``await arun_backtest(request, dsn)``:
``run_id`` is the sha256 of the request's canonical JSON (a re-run gets
``<sha256>-<attempt>``; a request whose latest attempt succeeded returns that run, idempotent);
the run is inserted ``running`` with config and lineage; bars are read (Postgres, or the
``market.bars`` topic with Postgres for what retention dropped); the model comes from the
registry (hash-verified) or :mod:`backtest.walkforward`; then :func:`backtest.replay.replay`
and :func:`backtest.metrics.compute_metrics`; results and ``succeeded`` in one transaction.

Any exception after the insert marks the run ``failed`` and is raised again:
:class:`BacktestRequestError` (a ``ValueError``) for a bad request, :class:`BacktestFailed`
otherwise, both with ``run_id``. Bars with ``start <= open_time < end`` are traded; up to
``warmup_bars`` before ``start`` only feed features and model windows.

Design: docs/replay.md#backtest-runs
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import asyncpg

from agents.execution.paper import PaperConfig
from agents.features.spec import DEFAULT_SPEC
from agents.portfolio.engine import PortfolioConfig
from agents.risk.config import RiskConfig
from agents.strategy.config import StrategyConfig
from agents.trading.core import TradingConfig
from backtest.metrics import LineageKeys, compute_metrics, fill_costs
from backtest.replay import INVERTED_SUFFIX, ReplayConfig, ReplayModel, ReplayResult, order_bars, replay
from backtest.source import read_topic_bars
from backtest.walkforward import PolarityMode, WalkForwardSpec, train_walk_forward
from models.config import InvalidConfig, ModelConfig
from models.dataset import DatasetError, SplitError, closes_by_open_time
from models.inference import Predictor
from runtime.errors import BadInput, NeedsOperator
from storage import backtests
from storage.bars import bars_in_range, symbol_venues
from storage.connection import Conn
from storage.registry import registry_entry
from topics.records import Bar, Timeframe

__all__ = [
    "DATA_SOURCES",
    "SOURCES",
    "STRATEGIES",
    "BacktestFailed",
    "BacktestRequest",
    "BacktestRequestError",
    "areplay_request",
    "arun_backtest",
    "code_digest",
    "run_backtest",
]

SOURCES = ("prod", "maintenance", "smoke", "async_test")
DATA_SOURCES = ("postgres", "broker")
#: Known strategy ids -> their sizing config (one today; more are new entries here).
STRATEGIES: Mapping[str, StrategyConfig] = MappingProxyType({"tanh-sizer": StrategyConfig()})
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}(:[A-Z0-9]{1,20})?$")
_ROOT = Path(__file__).resolve().parent.parent
_CODE_DIRS = ("agents", "backtest", "models", "topics", "gpu_workers")


class BacktestRequestError(BadInput, ValueError):
    """A request that cannot be run as asked; the run record says ``failed`` with this message."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class BacktestFailed(NeedsOperator, RuntimeError):
    """The run broke for another reason (a bug, a lost database ...); the run record says ``failed``."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id


# ---------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestRequest:
    """What to backtest. Every field is part of the run id (canonical JSON)."""

    symbols: tuple[str, ...]
    start_ns: int
    end_ns: int
    timeframe: Timeframe = Timeframe.H1
    venue: str | None = None
    source: str = "prod"
    #: What gates group by; default ``<strategy>:<model label>``.
    track: str | None = None
    strategy: str = "tanh-sizer"
    fee_bps: float = 10.0
    slippage_bps: float = 2.0
    impact_coefficient_bps: float = 100.0
    initial_cash: float = 100_000.0
    #: Registry models ``model_id@version``, one per symbol (the registry config names its symbol).
    models: tuple[str, ...] = ()
    #: > 0: train this many walk-forward windows in-process instead of loading models.
    walk_forward_windows: int = 0
    #: :class:`~models.config.ModelConfig` overrides for walk-forward training.
    model_params: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    polarity: str = PolarityMode.NORMAL.value
    #: Bars before ``start`` read for warm-up; None = feature window + model window.
    warmup_bars: int | None = None
    #: ``postgres`` (the ``bars`` table) or ``broker`` (the ``market.bars`` topic, Postgres for what
    #: retention has dropped).
    data_source: str = "postgres"

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "model_params", MappingProxyType(dict(self.model_params)))
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {self.source!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "symbols": list(self.symbols),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "timeframe": self.timeframe.value,
            "venue": self.venue,
            "source": self.source,
            "track": self.track,
            "strategy": self.strategy,
            "fee_bps": self.fee_bps,
            "slippage_bps": self.slippage_bps,
            "impact_coefficient_bps": self.impact_coefficient_bps,
            "initial_cash": self.initial_cash,
            "models": list(self.models),
            "walk_forward_windows": self.walk_forward_windows,
            "model_params": dict(sorted(self.model_params.items())),
            "polarity": self.polarity,
            "warmup_bars": self.warmup_bars,
            "data_source": self.data_source,
        }

    def request_hash(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def model_label(self) -> str:
        if self.walk_forward_windows > 0:
            family = str(self.model_params.get("family", "mlp"))
            return f"wf{self.walk_forward_windows}-{family}-{self.polarity}"
        return ",".join(sorted(self.models)) or "no-model"

    @property
    def track_name(self) -> str:
        return self.track or f"{self.strategy}:{self.model_label()}"

    def problems(self) -> list[str]:
        """Every reason the request cannot run, checked before any data is read."""
        out: list[str] = []
        if self.start_ns >= self.end_ns:
            out.append(f"inverted or empty date range: start {self.start_ns} >= end {self.end_ns}")
        if not self.symbols:
            out.append("no symbols")
        bad = [s for s in self.symbols if not _SYMBOL.match(s)]
        if bad:
            out.append(f"malformed symbols {bad} (expected BASE/QUOTE or BASE/QUOTE:SETTLE)")
        if len(set(self.symbols)) != len(self.symbols):
            out.append("duplicate symbols")
        if self.strategy not in STRATEGIES:
            out.append(f"unknown strategy {self.strategy!r}; known: {sorted(STRATEGIES)}")
        for name in ("fee_bps", "slippage_bps", "impact_coefficient_bps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                out.append(f"{name} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(self.initial_cash) and self.initial_cash > 0):
            out.append("initial_cash must be > 0")
        if self.polarity not in {p.value for p in PolarityMode}:
            out.append(f"polarity must be one of {[p.value for p in PolarityMode]}, got {self.polarity!r}")
        if (self.walk_forward_windows > 0) == bool(self.models):
            out.append("name registry models (model_id@version) or walk_forward_windows > 0, exactly one of them")
        if self.walk_forward_windows < 0:
            out.append("walk_forward_windows must be >= 0")
        if self.models and self.polarity != PolarityMode.NORMAL.value:
            out.append("auto polarity modes choose the sign on a training span: they need walk-forward windows")
        if self.models and self.model_params:
            out.append("model_params apply to walk-forward training only")
        if any("@" not in m for m in self.models):
            out.append("models must be model_id@version")
        if self.warmup_bars is not None and self.warmup_bars < 0:
            out.append("warmup_bars must be >= 0")
        if self.data_source not in DATA_SOURCES:
            out.append(f"data_source must be one of {list(DATA_SOURCES)}, got {self.data_source!r}")
        return out

    def trading_config(self) -> TradingConfig:
        # A backtest simulates every symbol it names, a monitor-only (vc) track's too: that
        # simulation is the evidence the vc track's gates report (docs/trading.md#tracks).
        base = STRATEGIES[self.strategy]
        monitor = tuple(sym for sym in base.monitor_only_symbols if sym not in self.symbols)
        strategy = dataclasses.replace(
            base, fee_bps=self.fee_bps, slippage_bps=self.slippage_bps, monitor_only_symbols=monitor
        )
        risk_monitor = tuple(sym for sym in RiskConfig().monitor_only_symbols if sym not in self.symbols)
        return TradingConfig(
            account="backtest",
            timeframes=(self.timeframe,),
            strategy=strategy,
            risk=RiskConfig(allowed_symbols=self.symbols, monitor_only_symbols=risk_monitor),
            paper=PaperConfig(
                fee_bps=self.fee_bps, slippage_bps=self.slippage_bps, impact_coefficient_bps=self.impact_coefficient_bps
            ),
            portfolio=PortfolioConfig(initial_cash=self.initial_cash),
        )

    def walk_forward_model(self) -> ModelConfig:
        params: dict[str, Any] = {
            "window": 16,
            "hidden_sizes": "32",
            "max_epochs": 20,
            "seed": 7,
            **self.model_params,
            "device": "cpu",
            "num_threads": 1,
        }
        if type(params["hidden_sizes"]) is int:  # one layer, as a CLI "--hp hidden_sizes=16" parses
            params["hidden_sizes"] = str(params["hidden_sizes"])
        return ModelConfig.from_dict(params)


# ---------------------------------------------------------------------------
# Lineage helpers
# ---------------------------------------------------------------------------


def code_digest() -> str:
    """sha256 (16 hex) of the engine and backtest source files: which code produced a run."""
    h = hashlib.sha256()
    for d in _CODE_DIRS:
        for path in sorted((_ROOT / d).rglob("*.py")):
            h.update(str(path.relative_to(_ROOT)).encode() + b"\x00" + path.read_bytes())
    return h.hexdigest()[:16]


def _config_doc(request: BacktestRequest) -> dict[str, Any]:
    tc = request.trading_config()
    return {
        "request": request.to_json(),
        "engines": {
            "strategy": {"version": tc.strategy.version, "config_hash": tc.strategy.config_hash()},
            "risk": {"config_hash": tc.risk.config_hash()},
            "paper": {"version": tc.paper.version, "config_hash": tc.paper.config_hash()},
            "portfolio": {"version": tc.portfolio.version, "config_hash": tc.portfolio.config_hash()},
            "feature_set_version": DEFAULT_SPEC.version,
        },
    }


def _hash_json(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def run_backtest(
    request: BacktestRequest, dsn: str, *, rerun: bool = False, broker: tuple[str, str] | None = None
) -> str:
    """Synchronous :func:`arun_backtest` (not from inside a running event loop)."""
    return asyncio.run(arun_backtest(request, dsn, rerun=rerun, broker=broker))


async def arun_backtest(
    request: BacktestRequest, dsn: str, *, rerun: bool = False, broker: tuple[str, str] | None = None
) -> str:
    """Run (or return the finished run of) ``request``; the run id. See the module docstring.

    ``broker`` = (bootstrap, namespace), needed when ``request.data_source == "broker"``.
    """
    rhash = request.request_hash()
    config = _config_doc(request)
    lineage: dict[str, Any] = {
        "code_digest": code_digest(),
        "feature_set_version": DEFAULT_SPEC.version,
        "data_source": "postgres:bars",
    }
    conn = await asyncpg.connect(dsn)
    try:
        last = await backtests.latest_attempt(conn, rhash)
        if last is not None and last[1] == "succeeded" and not rerun:
            return last[0]
        attempt = 1 if last is None else last[2] + 1
        run_id = rhash if attempt == 1 else f"{rhash}-{attempt}"
        row = backtests.RunRow(
            run_id=run_id,
            request_hash=rhash,
            attempt=attempt,
            source=request.source,
            track=request.track_name,
            symbols=request.symbols,
            range_start_ns=request.start_ns,
            range_end_ns=request.end_ns,
            config=config,
            config_hash=_hash_json(config),
            lineage=lineage,
        )
        problems = request.problems()
        if problems:
            message = "bad backtest request: " + "; ".join(problems)
            await backtests.insert_run(conn, row, status="failed", error=message)
            raise BacktestRequestError(run_id, message)
        if not await backtests.insert_run(conn, row):
            raise BacktestFailed(run_id, f"run {run_id} was started concurrently by another process")
        try:
            await _execute(conn, request, run_id, lineage, broker)
        except (ValueError, InvalidConfig, DatasetError, SplitError) as exc:
            await backtests.mark_failed(conn, run_id, str(exc), lineage)
            raise BacktestRequestError(run_id, str(exc)) from exc
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            # if the database is what failed, the row stays 'running' (stale): supersede it later
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await backtests.mark_failed(conn, run_id, message, lineage)
            raise BacktestFailed(run_id, message) from exc
        return run_id
    finally:
        await conn.close()


async def _load_bars(
    conn: Conn, request: BacktestRequest, warmup: int, lineage: dict[str, Any], broker: tuple[str, str] | None
) -> list[Bar]:
    """Per symbol: topic bars where the broker holds them, Postgres bars before that (or all of them)."""
    tf = request.timeframe
    lo = request.start_ns - warmup * tf.nanos
    topic: list[Bar] = []
    if request.data_source == "broker":
        if broker is None:
            raise ValueError("data_source 'broker' needs the broker's bootstrap address")
        read = await read_topic_bars(broker[0], broker[1], request.symbols, tf, lo, request.end_ns)
        topic = read.bars
        lineage["broker_read"] = {
            "messages": read.messages,
            "undecodable": read.undecodable,
            "partitions": read.partitions,
            "matching_bars": len(read.bars),
        }
    bars: list[Bar] = []
    data: dict[str, Any] = {}
    for sym in request.symbols:
        mine = [b for b in topic if b.symbol == sym]
        venues = sorted(set(await symbol_venues(conn, sym, tf)) | {b.venue for b in mine})
        if not venues:
            raise ValueError(
                f"unknown symbol {sym!r}: no {tf.value} bars of it in Postgres"
                + (" or on the broker" if request.data_source == "broker" else "")
            )
        if request.venue is not None:
            if request.venue not in venues:
                raise ValueError(f"no {tf.value} bars of {sym} from venue {request.venue!r} (venues: {venues})")
            venue = request.venue
        elif len(venues) > 1:
            raise ValueError(f"{sym} has bars from several venues {venues}: name one (venue)")
        else:
            venue = venues[0]
        mine = [b for b in mine if b.venue == venue]
        cut = min((b.open_time for b in mine), default=request.end_ns)
        rows = await bars_in_range(conn, venue, sym, tf, lo, cut) if cut > lo else []
        sym_bars = order_bars([*mine, *rows])
        in_range = sum(1 for b in sym_bars if b.open_time >= request.start_ns)
        if in_range == 0:
            raise ValueError(
                f"empty range: no {tf.value} bars of {sym} with {request.start_ns} <= open_time < {request.end_ns}"
            )
        data[sym] = {
            "venue": venue,
            "bars_in_range": in_range,
            "warmup_bars": len(sym_bars) - in_range,
            "from_broker": len(mine),
            "from_postgres": len(rows),
            "sources": sorted({b.source for b in sym_bars}),
            "bar_digest": _hash_json(sorted(b.event_id for b in sym_bars))[:16],
        }
        bars.extend(sym_bars)
    lineage["data"] = data
    lineage["data_source"] = "broker+postgres" if request.data_source == "broker" else "postgres:bars"
    return bars


async def _registry_model(conn: Conn, request: BacktestRequest, lineage: dict[str, Any]) -> ReplayModel:
    predictors: dict[str, tuple[Predictor, str, str, str]] = {}
    models = []
    for ref in request.models:
        model_id, _, version = ref.partition("@")
        entry = await registry_entry(conn, model_id, version)
        if entry is None:
            raise ValueError(f"model {ref} is not in the registry")
        cfg = entry["config"]
        sym = cfg.get("symbol")
        if sym not in request.symbols:
            raise ValueError(f"model {ref} serves {sym!r}, which the request does not name")
        if sym in predictors:
            raise ValueError(f"two models for {sym}")
        if cfg.get("timeframe") != request.timeframe.value:
            raise ValueError(
                f"model {ref} is for {cfg.get('timeframe')} bars, the request for {request.timeframe.value}"
            )
        pred = await asyncio.to_thread(
            Predictor.from_checkpoint, Path(entry["checkpoint_path"]), entry["checkpoint_sha256"]
        )
        predictors[sym] = (pred, model_id, version, f"{cfg['horizon_bars']}x{cfg['timeframe']}")
        models.append(
            {
                "model_id": model_id,
                "version": version,
                "symbol": sym,
                "stage": entry["stage"],
                "checkpoint_sha256": entry["checkpoint_sha256"],
                "feature_set_version": pred.feature_set_version,
                "polarity": 1,
            }
        )
    missing = [s for s in request.symbols if s not in predictors]
    if missing:
        raise ValueError(f"no model named for {missing}")
    lineage["models"] = models
    return ReplayModel.fixed(predictors)


def _warmup(request: BacktestRequest) -> int:
    if request.warmup_bars is not None:
        return request.warmup_bars
    window = request.walk_forward_model().window if request.walk_forward_windows > 0 else 64
    return DEFAULT_SPEC.window + window


async def _prepare(
    conn: Conn, request: BacktestRequest, lineage: dict[str, Any], broker: tuple[str, str] | None
) -> tuple[list[Bar], ReplayConfig, ReplayModel]:
    """Bars (one query per symbol) and the model; raises ValueError for a bad request."""
    problems = request.problems()
    if problems:
        raise ValueError("bad backtest request: " + "; ".join(problems))
    bars = await _load_bars(conn, request, _warmup(request), lineage, broker)
    config = ReplayConfig(trading=request.trading_config(), trade_from_ns=request.start_ns)
    if request.walk_forward_windows > 0:
        spec = WalkForwardSpec(
            n_windows=request.walk_forward_windows,
            model=request.walk_forward_model(),
            polarity=PolarityMode(request.polarity),
        )
        closes = {s: closes_by_open_time(b for b in bars if b.symbol == s) for s in request.symbols}
        horizon = f"{spec.model.horizon_bars}x{request.timeframe.value}"
        model, windows = await asyncio.to_thread(train_walk_forward, bars, closes, spec, config.spec, horizon)
        lineage["models"] = [{**w.to_json(), "feature_set_version": config.spec.version} for w in windows]
        lineage["model_config"] = spec.model.to_dict()
    else:
        model = await _registry_model(conn, request, lineage)
    return bars, config, model


async def areplay_request(
    request: BacktestRequest, dsn: str, *, broker: tuple[str, str] | None = None
) -> tuple[ReplayResult, dict[str, Any]]:
    """Replay a request's bars and model without writing a run (``tradeflow replay``): (result, lineage)."""
    lineage: dict[str, Any] = {
        "code_digest": code_digest(),
        "feature_set_version": DEFAULT_SPEC.version,
        "data_source": "postgres:bars",
    }
    conn = await asyncpg.connect(dsn)
    try:
        bars, config, model = await _prepare(conn, request, lineage, broker)
    finally:
        await conn.close()
    result = await asyncio.to_thread(replay, bars, config, model)
    return result, lineage


async def _execute(
    conn: Conn, request: BacktestRequest, run_id: str, lineage: dict[str, Any], broker: tuple[str, str] | None
) -> None:
    bars, config, model = await _prepare(conn, request, lineage, broker)
    result = await asyncio.to_thread(replay, bars, config, model)
    keys = _lineage_keys(lineage["models"])
    metrics = compute_metrics(result, symbols=request.symbols, initial_cash=request.initial_cash, lineage=keys)
    lineage["replay"] = {
        "n_bars": result.n_bars,
        "n_traded_bars": result.n_traded_bars,
        "n_records": len(result.records),
        "n_signals": len(result.signals),
        "n_fills": len(result.fills),
    }
    await backtests.write_success(
        conn,
        run_id,
        fills=_fill_rows(result),
        equity=[(p.ts_ns, p.equity, p.drawdown) for p in result.equity],
        metrics=metrics,
        lineage=lineage,
        decision_hash=result.hash,
        n_records=len(result.records),
        n_bars=result.n_bars,
    )


def _lineage_keys(models: Sequence[Mapping[str, Any]]) -> LineageKeys:
    out: dict[tuple[str, str], str] = {}
    for m in models:
        version = str(m.get("model_version", m.get("version")))
        if m.get("polarity") == -1:
            version += INVERTED_SUFFIX
        out[(str(m["model_id"]), version)] = str(m["feature_set_version"])
    return LineageKeys(out)


def _fill_rows(result: ReplayResult) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for seq, f in enumerate(result.fills):
        c = fill_costs(f)
        rows.append(
            (
                seq,
                f.symbol,
                f.side.value,
                f.ts_event,
                f.quantity,
                f.price,
                c.notional,
                c.fee,
                c.slippage,
                c.impact,
                f.client_order_id,
                f.event_id,
            )
        )
    return rows
