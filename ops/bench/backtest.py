"""Reference-strategy benchmark (``tradeflow bench backtest``): bars/s vs backtesting.py and vectorbt.

Goal: the reference strategy (:mod:`backtest.reference`) at least 2x faster than
backtesting.py while identical in results. On the bundled Binance BTC/USDT 1h file (42,287
bars, read once into ``Bar`` records), for each parameter set: ``reference`` (on a prepared
:class:`~backtest.reference.PriceSeries`), ``reference_from_bars`` (building it from the
records each time), ``backtesting.py`` and ``vectorbt``.

Timed: the strategy run from an in-memory input. Not timed: imports, CSV parsing
(``load_s`` is reported separately), building the DataFrame, one warm-up run per engine.
``bars/s`` = bars / median seconds of ``--repeats`` runs (default 5). Results are compared
after timing (final equity to the cent, trade count, fees, every fill); a mismatch exits 1.
JSON goes to ``artifacts/bench_backtest.json``.

Method: docs/benchmarks.md#reference-strategy-benchmark
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.market.csv_import import import_csv_file
from backtest.reference import PriceSeries, ReferenceResult, SmaCrossParams, run_sma_cross
from runtime.exits import EXIT_FAIL, EXIT_OK
from topics.records import Bar, Side, Timeframe
from topics.schema import TS_MIN_NS

DATA = Path(__file__).resolve().parents[1] / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
OUT = Path("artifacts/bench_backtest.json")
PARAM_SETS = ((10, 30), (20, 50), (50, 200))
GOAL_RATIO = 2.0
CENT = 0.005

Fill = tuple[int, float, float]  # (ts ns, price, signed size)


@dataclass(frozen=True, slots=True)
class Outcome:
    """An engine's result reduced to what the comparison needs."""

    final_equity: float
    trade_count: int
    fees: float
    fills: tuple[Fill, ...]


def _reference_outcome(r: ReferenceResult) -> Outcome:
    fills = tuple((f.ts, f.price, f.quantity if f.side is Side.BUY else -f.quantity) for f in r.fills)
    return Outcome(r.final_equity, r.trade_count, r.total_fees, fills)


def _frame(bars: tuple[Bar, ...]) -> Any:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    return pd.DataFrame(
        {
            "Open": [b.open for b in bars],
            "High": [b.high for b in bars],
            "Low": [b.low for b in bars],
            "Close": [b.close for b in bars],
            "Volume": [b.volume for b in bars],
        },
        index=pd.to_datetime([b.open_time for b in bars], unit="ns", utc=True),
    )


def _backtesting_py(frame: Any, p: SmaCrossParams) -> tuple[Callable[[], Any], Callable[[Any], Outcome]]:
    """(timed run, result -> Outcome) for backtesting.py's canonical SmaCross, long-only."""
    import backtesting.backtesting as bt_core  # type: ignore[import-untyped,unused-ignore]
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]
    from backtesting import Backtest, Strategy  # type: ignore[import-untyped,unused-ignore]
    from backtesting.lib import crossover  # type: ignore[import-untyped,unused-ignore]

    bt_core._tqdm = lambda seq, **_: seq  # no progress bar: it only slows the peer down

    def pandas_sma(values: Any, n: int) -> Any:
        return pd.Series(values).rolling(n).mean()

    class SmaCross(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.sma_fast = self.I(pandas_sma, self.data.Close, p.fast)
            self.sma_slow = self.I(pandas_sma, self.data.Close, p.slow)

        def next(self) -> None:
            if crossover(self.sma_fast, self.sma_slow):
                if not self.position:
                    self.buy()
            elif crossover(self.sma_slow, self.sma_fast) and self.position:
                self.position.close()

    def run() -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some trades remain open")
            return Backtest(frame, SmaCross, cash=p.initial_cash, commission=p.fee_rate).run()

    def outcome(stats: Any) -> Outcome:
        closed = stats["_trades"]
        still_open = list(stats["_strategy"].trades)
        fills: list[Fill] = []
        for row in closed.itertuples():
            fills += [
                (row.EntryTime.value, float(row.EntryPrice), float(row.Size)),
                (row.ExitTime.value, float(row.ExitPrice), -float(row.Size)),
            ]
        fees = float(closed["Commission"].sum())
        for t in still_open:
            fills.append((t.entry_time.value, float(t.entry_price), float(t.size)))
            fees += t.size * t.entry_price * p.fee_rate
        return Outcome(float(stats["Equity Final [$]"]), len(closed) + len(still_open), fees, tuple(sorted(fills)))

    return run, outcome


def _vectorbt(frame: Any, p: SmaCrossParams) -> tuple[Callable[[], Any], Callable[[Any], Outcome]]:
    import vectorbt as vbt  # type: ignore[import-untyped,unused-ignore]

    close, open_ = frame["Close"], frame["Open"]

    def run() -> Any:
        fast = vbt.MA.run(close, p.fast)
        slow = vbt.MA.run(close, p.slow)
        entries = fast.ma_crossed_above(slow).shift(1, fill_value=False)
        exits = fast.ma_crossed_below(slow).shift(1, fill_value=False)
        pf = vbt.Portfolio.from_signals(
            close,
            entries,
            exits,
            price=open_,
            fees=p.fee_rate,
            init_cash=p.initial_cash,
            size=np.inf,
            direction="longonly",
            size_granularity=np.nan if p.lot_size is None else p.lot_size,
        )
        return pf, float(pf.final_value())

    def outcome(res: Any) -> Outcome:
        pf, final = res
        o = pf.orders.records_readable
        fills = tuple(
            (ts.value, float(px), float(sz) if side == "Buy" else -float(sz))
            for ts, px, sz, side in zip(o["Timestamp"], o["Price"], o["Size"], o["Side"], strict=True)
        )
        return Outcome(final, int((o["Side"] == "Buy").sum()), float(o["Fees"].sum()), fills)

    return run, outcome


def _time(run: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    result = run()  # warm-up (numba compilation, caches): not timed
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = run()
        runs.append(time.perf_counter() - t)
    return runs, result


def compare(ours: Outcome, peer: Outcome) -> dict[str, Any]:
    """Field-by-field verdict; ``identical`` only when every check holds."""
    first_diff = next((k for k, (a, b) in enumerate(zip(ours.fills, peer.fills, strict=False)) if a != b), None)
    checks: dict[str, Any] = {
        "final_equity_abs_diff": abs(ours.final_equity - peer.final_equity),
        "fees_abs_diff": abs(ours.fees - peer.fees),
        "trade_count": [ours.trade_count, peer.trade_count],
        "fill_count": [len(ours.fills), len(peer.fills)],
        "first_differing_fill": first_diff,
    }
    checks["identical"] = (
        checks["final_equity_abs_diff"] < CENT
        and checks["fees_abs_diff"] < CENT
        and ours.trade_count == peer.trade_count
        and ours.fills == peer.fills
    )
    return checks


def bench_params(
    bars: tuple[Bar, ...], prices: PriceSeries, frame: Any, p: SmaCrossParams, repeats: int
) -> dict[str, Any]:
    n = len(prices)
    engines: dict[str, tuple[Callable[[], Any], Callable[[Any], Outcome]]] = {
        "reference": (lambda: run_sma_cross(prices, p), _reference_outcome),
        "reference_from_bars": (lambda: run_sma_cross(PriceSeries.from_bars(bars), p), _reference_outcome),
        "backtesting.py": _backtesting_py(frame, p),
        "vectorbt": _vectorbt(frame, p),
    }
    timings: dict[str, Any] = {}
    outcomes: dict[str, Outcome] = {}
    for name, (run, outcome) in engines.items():
        runs, result = _time(run, repeats)
        med = statistics.median(runs)
        timings[name] = {"median_s": med, "bars_per_s": n / med, "runs_s": runs}
        outcomes[name] = outcome(result)
    ref = timings["reference"]["median_s"]
    return {
        "fast": p.fast,
        "slow": p.slow,
        "fee_rate": p.fee_rate,
        "initial_cash": p.initial_cash,
        "lot_size": p.lot_size,
        "trades": outcomes["reference"].trade_count,
        "final_equity": outcomes["reference"].final_equity,
        "engines": timings,
        "speedup_vs_backtesting_py": timings["backtesting.py"]["median_s"] / ref,
        "speedup_vs_vectorbt": timings["vectorbt"]["median_s"] / ref,
        "speedup_from_bars_vs_backtesting_py": timings["backtesting.py"]["median_s"]
        / timings["reference_from_bars"]["median_s"],
        "identical_vs_backtesting_py": compare(outcomes["reference"], outcomes["backtesting.py"]),
        "identical_vs_vectorbt": compare(outcomes["reference"], outcomes["vectorbt"]),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("numpy", "pandas", "backtesting", "vectorbt", "numba")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tradeflow bench backtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per engine (median reported); >= 5")
    ap.add_argument("--fee-rate", type=float, default=0.001)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    if a.repeats < 5:
        ap.error("--repeats must be >= 5")

    t = time.perf_counter()
    parsed = import_csv_file(DATA, venue="binance", symbol="BTC/USDT", timeframe=Timeframe.H1, ts_init=TS_MIN_NS)
    load_s = time.perf_counter() - t
    bars = parsed.bars
    prices = PriceSeries.from_bars(bars)
    frame = _frame(bars)
    results = [
        bench_params(bars, prices, frame, SmaCrossParams(f, s, fee_rate=a.fee_rate), a.repeats) for f, s in PARAM_SETS
    ]
    identical = all(
        r["identical_vs_backtesting_py"]["identical"] and r["identical_vs_vectorbt"]["identical"] for r in results
    )
    min_speedup = min(r["speedup_vs_backtesting_py"] for r in results)
    report = {
        "benchmark": "reference SMA crossover vs backtesting.py vs vectorbt",
        "data": {"file": DATA.name, "bars": len(bars), "load_s": load_s, "load_included_in_bars_per_s": False},
        "timing": "median of repeats after one untimed warm-up; imports, CSV parsing and DataFrame building "
        "excluded; reference_from_bars includes Bar records -> PriceSeries",
        "repeats": a.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), **_versions()},
        "param_sets": results,
        "all_identical": identical,
        "min_speedup_vs_backtesting_py": min_speedup,
        "goal": f">= {GOAL_RATIO}x backtesting.py and identical",
        "goal_met": identical and min_speedup >= GOAL_RATIO,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    print(f"written {out}")
    return EXIT_OK if identical else EXIT_FAIL


def _print_table(report: dict[str, Any]) -> None:
    d = report["data"]
    print(
        f"{d['file']}: {d['bars']} bars (CSV load {d['load_s']:.2f}s, not in bars/s); "
        f"median of {report['repeats']} runs"
    )
    print(f"{'fast/slow':<10}{'engine':<22}{'median_s':>10}{'bars/s':>14}{'time vs ref':>14}  identical")
    for r in report["param_sets"]:
        ref = r["engines"]["reference"]["median_s"]
        for name, e in r["engines"].items():
            same = {
                "backtesting.py": r["identical_vs_backtesting_py"]["identical"],
                "vectorbt": r["identical_vs_vectorbt"]["identical"],
            }.get(name, "")
            print(
                f"{r['fast']}/{r['slow']:<7}{name:<22}{e['median_s']:>10.4f}{e['bars_per_s']:>14,.0f}"
                f"{e['median_s'] / ref:>14.1f}  {same}"
            )
    print(
        f"all identical: {report['all_identical']}; min speedup vs backtesting.py: "
        f"{report['min_speedup_vs_backtesting_py']:.1f}x; goal met: {report['goal_met']}"
    )
