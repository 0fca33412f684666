"""``tradeflow tune grid|optuna``: search the reference strategy's parameters, persist the study.

::

    tradeflow tune grid   --fast 5,10,20 --slow 30:200:10 [common options]
    tradeflow tune optuna --fast-range 2:100 --slow-range 10:400 --trials 60 --seed 7 [--optuna-storage postgres]

Common options: ``--file`` (default the bundled Binance BTC/USDT 1h file), ``--fee-rate``,
``--initial-cash``, ``--lot-size`` (``1`` whole units, ``fractional``), ``--min-trades`` /
``--min-turnover``, ``--workers``, ``--study-id`` (default: derived from the config),
``--dsn`` and ``--no-persist``. Candidates are run by :mod:`backtest.tuning`; one JSON
document is printed (study id, data fingerprint, feasibility counts, winner, leaderboard).

The file goes through the importer's row rules (rejected rows and rows that conflict
about an open time are not used, and are listed on stderr) and the pipeline's
data-quality checks and policy (``agents/market/quality.py``), reported under
``data_quality``. The vectorised search cannot withhold the bars the policy blocks,
so it says so on stderr when there are any; ``--require-clean`` refuses such a file.

Exit codes: 0 a feasible winner was found (and persisted); 1 the search ran
but no candidate is feasible, or the study id is taken by another config;
2 usage (bad arguments, unreadable or non-candle file, a file with blocked bars
under ``--require-clean``); 3 PostgreSQL unreachable or not migrated.

Design: docs/reference_strategy.md#tradeflow-tune
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from agents.market.csv_import import CsvFormatError, ParseResult, import_csv_file
from agents.market.quality import BarsAudit, audit_bars
from backtest.reference import PriceSeries, ReferenceInputError
from backtest.tuning import (
    Constraints,
    StudyConflictError,
    StudySpec,
    TrialResult,
    TuningCosts,
    persist,
    price_fingerprint,
    run_grid,
    run_optuna,
    study_config,
    summary,
)
from ops.cli.usage import UsageError
from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_OK, EXIT_USAGE
from topics.records import Timeframe
from topics.schema import TS_MIN_NS

__all__ = ["add_parsers", "cmd_tune"]

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"


def parse_int_list(text: str) -> list[int]:
    """``5,10,20`` and/or inclusive ranges ``30:200:10`` (step default 1), comma-separated."""
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if ":" in part:
                bits = [int(b) for b in part.split(":")]
                if len(bits) not in (2, 3) or (len(bits) == 3 and bits[2] < 1) or bits[1] < bits[0]:
                    raise UsageError(f"range {part!r} must be LO:HI[:STEP] with LO <= HI, STEP >= 1")
                out.extend(range(bits[0], bits[1] + 1, bits[2] if len(bits) == 3 else 1))
            else:
                out.append(int(part))
    except ValueError as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"{text!r} is not a list of integers / LO:HI[:STEP] ranges") from None
    if not out or min(out) < 1:
        raise UsageError(f"{text!r}: need at least one window, all >= 1")
    return out


def parse_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(b) for b in text.split(":"))
    except ValueError:
        raise UsageError(f"{text!r} must be LO:HI (integers)") from None
    if not 1 <= lo < hi:
        raise UsageError(f"{text!r}: need 1 <= LO < HI")
    return lo, hi


def _lot_size(text: str) -> float | None:
    if text == "fractional":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--lot-size must be a number or 'fractional', got {text!r}") from None


def _load(a: argparse.Namespace) -> tuple[PriceSeries, dict[str, Any], dict[str, Any]]:
    path = Path(a.file)
    try:
        parsed = import_csv_file(
            path, venue=a.venue, symbol=a.symbol, timeframe=Timeframe(a.timeframe), ts_init=TS_MIN_NS
        )
        prices = PriceSeries.from_bars(parsed.bars)
    except (OSError, CsvFormatError, ReferenceInputError, ValueError) as exc:
        raise UsageError(f"cannot use {path}: {exc}") from None
    source = {
        "file": path.name,
        **price_fingerprint(prices),
        "rejected_rows": len(parsed.rejects),
        "duplicate_rows": len(parsed.duplicates),
    }
    audit = audit_bars(parsed.bars)
    _warn_quality(path, parsed, audit)
    if a.require_clean and (audit.blocking or parsed.conflicts or parsed.rejects):
        raise UsageError(
            f"{path}: --require-clean: {len(parsed.rejects)} rejected rows, {len(parsed.conflicts)} conflicting "
            f"open times, {len(audit.blocking)} blocking data-quality findings"
        )
    quality = {
        "policy": "pipeline defaults (agents/market/quality.py)",
        "applied_to_search": False,
        **audit.summary(),
        "rejected_rows": [f"line {r.line_no}: {r.reason.value}: {r.detail}" for r in parsed.rejects[:20]],
        "conflicting_rows": [c.detail for c in parsed.conflicts[:20]],
    }
    return prices, source, quality


def _warn_quality(path: Path, parsed: ParseResult, audit: BarsAudit) -> None:
    """Say on stderr what the file's rows and the data-quality policy found."""
    for r in parsed.rejects[:10]:
        print(
            f"tradeflow tune: {path.name} line {r.line_no}: row not used: {r.reason.value}: {r.detail}", file=sys.stderr
        )
    if len(parsed.rejects) > 10:
        print(f"tradeflow tune: {path.name}: {len(parsed.rejects)} rows not used in all", file=sys.stderr)
    for c in parsed.conflicts[:10]:
        print(f"tradeflow tune: {path.name}: {c.detail} (nor used here)", file=sys.stderr)
    if len(parsed.conflicts) > 10:
        print(f"tradeflow tune: {path.name}: {len(parsed.conflicts)} conflicting open times in all", file=sys.stderr)
    if audit.blocking:
        checks = ", ".join(f"{k} x{v}" for k, v in sorted(audit.findings.items()))
        print(
            f"tradeflow tune: WARNING: the pipeline's data-quality policy blocks {audit.withheld} of {audit.bars} "
            f"bars of {path.name} ({len(audit.blocking)} blocking findings; all findings: {checks}). The pipeline "
            "would not trade on them, but this search cannot withhold bars: its results include them "
            "(details under data_quality; --require-clean refuses such a file)",
            file=sys.stderr,
        )


def _search(
    a: argparse.Namespace, prices: PriceSeries, source: dict[str, Any], costs: TuningCosts, constraints: Constraints
) -> tuple[StudySpec, list[TrialResult]]:
    if a.tune_method == "grid":
        fasts, slows = parse_int_list(a.fast), parse_int_list(a.slow)
        spec = StudySpec.derive(
            "grid",
            study_config(costs, constraints, {"fast": sorted(set(fasts)), "slow": sorted(set(slows))}),
            source,
            a.study_id or None,
        )
        try:
            return spec, run_grid(prices, costs, constraints, fasts, slows, workers=a.workers)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    fast_range, slow_range = parse_range(a.fast_range), parse_range(a.slow_range)
    if a.trials < 1:
        raise UsageError("--trials must be >= 1")
    space = {
        "fast": list(fast_range),
        "slow": list(slow_range),
        "n_trials": a.trials,
        "seed": a.seed,
        "batch": a.workers,
    }  # the batch size shapes TPE's proposals, so it is part of the study
    spec = StudySpec.derive("optuna", study_config(costs, constraints, space), source, a.study_id or None)
    storage = _optuna_url(a.dsn) if a.optuna_storage == "postgres" else None
    return spec, run_optuna(
        prices,
        costs,
        constraints,
        fast_range=fast_range,
        slow_range=slow_range,
        n_trials=a.trials,
        seed=a.seed,
        workers=a.workers,
        storage_url=storage,
        study_name=spec.study_id,
    )


def _optuna_url(dsn: str) -> str:
    """asyncpg DSN -> SQLAlchemy URL (optuna's RDB storage uses psycopg2)."""
    return "postgresql+psycopg2://" + dsn.split("://", 1)[1]


def cmd_tune(a: argparse.Namespace) -> int:
    import asyncpg
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if a.workers < 1:
            raise UsageError("--workers must be >= 1")
        costs = TuningCosts(fee_rate=a.fee_rate, initial_cash=a.initial_cash, lot_size=_lot_size(a.lot_size))
        constraints = Constraints(min_trades=a.min_trades, min_turnover=a.min_turnover)
        costs.params(1, 2)  # validates the costs before any work
        prices, source, quality = _load(a)
        spec, trials = _search(a, prices, source, costs, constraints)
    except (UsageError, ReferenceInputError, ValueError) as exc:
        print(f"tradeflow tune: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # optuna's RDB storage: SQLAlchemy errors do not subclass OSError
        if type(exc).__module__.startswith("sqlalchemy"):
            print(f"tradeflow tune: optuna storage unreachable: {type(exc).__name__}", file=sys.stderr)
            return EXIT_INFRA
        raise
    out: dict[str, Any] = {
        "study_id": spec.study_id,
        "method": spec.method,
        "config": spec.config,
        "data_source": source,
        "data_quality": quality,
        **summary(trials, top=a.top),
    }
    if not a.no_persist:
        try:
            out["persisted"] = asyncio.run(persist(a.dsn, spec, trials))
        except StudyConflictError as exc:
            print(f"tradeflow tune: {exc}", file=sys.stderr)
            return EXIT_FAIL
        except asyncpg.UndefinedTableError:
            print("tradeflow tune: tuning tables missing: run `tradeflow migrate` first", file=sys.stderr)
            return EXIT_INFRA
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InvalidCatalogNameError) as exc:
            print(f"tradeflow tune: PostgreSQL unreachable: {type(exc).__name__}", file=sys.stderr)
            return EXIT_INFRA
    print(json.dumps(out, indent=2, sort_keys=False))
    if out["best"] is None:
        print("tradeflow tune: no candidate satisfies the activity constraints; no winner", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def add_parsers(sub: Any, infra: Any) -> None:
    """Add ``tune`` and its subcommands to the ``tradeflow`` parser."""
    sp = sub.add_parser(
        "tune",
        help="grid / optuna search over the reference strategy's parameters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = sp.add_subparsers(dest="tune_method", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        infra(p, dsn=True)
        p.add_argument("--file", default=str(DEFAULT_FILE), help="candle CSV (default: bundled BTC/USDT 1h)")
        p.add_argument("--venue", default="binance")
        p.add_argument("--symbol", default="BTC/USDT")
        p.add_argument("--timeframe", default="1h", choices=[t.value for t in Timeframe])
        p.add_argument("--fee-rate", type=float, default=0.001, help="fee per fill, fraction of notional")
        p.add_argument("--initial-cash", type=float, default=1_000_000.0)
        p.add_argument("--lot-size", default="1", help="order size granularity, or 'fractional' (default 1)")
        p.add_argument("--min-trades", type=int, default=10, help="fewer round trips: infeasible")
        p.add_argument(
            "--min-turnover", type=float, default=1.0, help="traded notional / mean equity below this: infeasible"
        )
        p.add_argument(
            "--workers",
            type=int,
            default=min(2, os.cpu_count() or 1),
            help="parallel worker processes (optuna: also its batch size)",
        )
        p.add_argument("--study-id", default="", help="default: derived from the config (re-runs are idempotent)")
        p.add_argument("--top", type=int, default=5, help="leaderboard length in the output")
        p.add_argument("--no-persist", action="store_true", help="do not write the study to PostgreSQL")
        p.add_argument(
            "--require-clean",
            action="store_true",
            help="refuse (exit 2) a file with rejected or conflicting rows or bars the data-quality policy blocks",
        )
        p.set_defaults(fn=cmd_tune)

    g = tsub.add_parser("grid", help="exhaustive search over fast x slow (pairs with fast < slow)")
    g.add_argument("--fast", required=True, help="e.g. 5,10,20 or 5:50:5 (inclusive)")
    g.add_argument("--slow", required=True, help="e.g. 30,50,100 or 30:300:10 (inclusive)")
    common(g)

    o = tsub.add_parser("optuna", help="seeded TPE search (parallel batches)")
    o.add_argument("--fast-range", default="2:100", help="LO:HI inclusive")
    o.add_argument("--slow-range", default="10:400", help="LO:HI inclusive")
    o.add_argument("--trials", type=int, default=50)
    o.add_argument("--seed", type=int, default=7)
    o.add_argument(
        "--optuna-storage",
        choices=["memory", "postgres"],
        default="memory",
        help="where optuna keeps the study itself (postgres: the --dsn database, resumable)",
    )
    common(o)
