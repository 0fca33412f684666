"""Gate engine: each gate must fail on bad evidence, say 'insufficient' when
evidence is missing, and treat a zero as a value. Named scenario_outcome.

The ``false green`` section holds one test per way the gates used to pass on bad
evidence (each fails on the engine that read only the newest run, took the reject
rate from the backtest and had no execution input)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from agents.gates.config import ENV_OVERRIDES, GateConfig, MetricThreshold, parse_duration_ns
from agents.gates.engine import (
    GATE_EXECUTION,
    GATE_HARD_METRICS,
    GATE_PARITY,
    GATE_READINESS,
    Attribution,
    BacktestFill,
    Evaluation,
    ExecutionUpdate,
    PaperFill,
    ParityOutcome,
    RunInfo,
    TrackInputs,
    evaluate_execution,
    evaluate_hard_metrics,
    evaluate_parity,
    evaluate_readiness,
    evaluate_track,
    parity_metric,
)
from runtime.env import VARIABLES, ConfigError
from topics.records import Comparator, GateResult, GateStatus
from topics.schema import codec_for
from topics.units import NS_PER_DAY, NS_PER_SECOND
from topics.units import NS_PER_HOUR as H

NOW = 1_767_225_600 * NS_PER_SECOND  # 2026-01-01 UTC
GOOD = {"sharpe_daily": 2.1, "max_drawdown": 0.05, "reject_rate": 0.0}
P, F, INS = GateStatus.PASSED, GateStatus.FAILED, GateStatus.INSUFFICIENT_OBSERVATION


def run(
    run_id: str,
    metrics: Mapping[str, float | None] = GOOD,
    *,
    age_days: float = 1.0,
    source: str = "prod",
    status: str = "succeeded",
    superseded_by: str | None = None,
    symbols: tuple[str, ...] = ("BTC/USDT",),
    track: str = "t1",
    span_days: int = 40,
    request_hash: str | None = None,
    initial_cash: float | None = 10_000.0,
) -> RunInfo:
    done = NOW - int(age_days * NS_PER_DAY)
    return RunInfo(
        run_id=run_id,
        track=track,
        source=source,
        status=status,
        superseded_by=superseded_by,
        symbols=symbols,
        range_start_ns=NOW - span_days * NS_PER_DAY,
        range_end_ns=NOW,
        created_at_ns=done - H,
        finished_at_ns=done,
        metrics=dict(metrics),
        request_hash=request_hash,
        initial_cash=initial_cash,
    )


def runs_n(n: int, metrics: Mapping[str, float | None] = GOOD, *, prefix: str = "r") -> tuple[RunInfo, ...]:
    """``n`` valid runs of distinct requests, one finished every 5 days (all inside 180 days)."""
    return tuple(run(f"{prefix}{i}", metrics, age_days=1 + 5 * i) for i in range(n))


def orders(
    n: int,
    rejected: int = 0,
    *,
    adapter: str = "paper",
    symbol: str = "BTC/USDT",
    days_ago: float = 3.0,
    reason: str | None = "venue_error",
    prefix: str = "o",
) -> list[ExecutionUpdate]:
    """``n`` real orders (one hour apart): the first ``rejected`` rejected, the rest new then filled."""
    out: list[ExecutionUpdate] = []
    for i in range(n):
        ts = NOW - int(days_ago * NS_PER_DAY) + i * H // 10
        coid = f"{prefix}{i:05d}"

        def u(status: str, at: int, why: str | None = None, coid: str = coid) -> ExecutionUpdate:
            return ExecutionUpdate(
                client_order_id=coid, adapter=adapter, symbol=symbol, status=status, reason=why, ts_ns=at
            )

        if i < rejected:
            out.append(u("rejected", ts, reason))
        else:
            out += [u("new", ts), u("filled", ts + NS_PER_SECOND)]
    return out


def execution(
    updates: list[ExecutionUpdate], cfg: GateConfig | None = None, symbols: tuple[str, ...] = ("BTC/USDT",)
) -> GateResult:
    return evaluate_execution("t1", updates, symbols, cfg or GateConfig(), NOW)


def by_metric(results: list[GateResult]) -> dict[str, GateResult]:
    return {r.metric: r for r in results}


def roundtrip(r: GateResult) -> GateResult:
    codec = codec_for(GateResult)
    return codec.decode(codec.encode(r))


# ---------------------------------------------------------------------------
# hard metrics
# ---------------------------------------------------------------------------


def test_good_run_all_hard_metrics_pass_with_thresholds_in_result() -> None:
    out = by_metric(evaluate_hard_metrics("t1", [run("r1")], GateConfig(), NOW))
    assert {m: r.status for m, r in out.items()} == {"sharpe_daily": P, "max_drawdown": P}
    assert (out["sharpe_daily"].threshold, out["sharpe_daily"].comparator) == (1.5, Comparator.GE)
    assert (out["max_drawdown"].threshold, out["max_drawdown"].comparator) == (0.12, Comparator.LT)
    assert out["sharpe_daily"].config_hash == GateConfig().config_hash()
    assert all(roundtrip(r) == r for r in out.values())


def test_negative_sharpe_fails() -> None:
    out = by_metric(evaluate_hard_metrics("t1", [run("r1", {**GOOD, "sharpe_daily": -0.8})], GateConfig(), NOW))
    assert out["sharpe_daily"].status is F and out["sharpe_daily"].value == -0.8
    assert any("sharpe_daily = -0.8 fails >= 1.5" in b for b in out["sharpe_daily"].blockers)


def test_design_last_status_sharpe_0456_fails_drawdown_and_real_reject_rate_pass() -> None:
    metrics = {"sharpe_daily": 0.456, "max_drawdown": 0.000178}
    out = by_metric(evaluate_hard_metrics("t1", [run("r1", metrics)], GateConfig(), NOW))
    assert (out["sharpe_daily"].status, out["max_drawdown"].status) == (F, P)
    rej = execution(orders(410, rejected=1))  # the replaced system's 0.00244 = 1 / 410
    assert rej.status is P and rej.value == pytest.approx(0.00244, abs=1e-5) and rej.observations == 410


@pytest.mark.parametrize("drawdown", [0.15, 0.12])
def test_drawdown_breach_fails_including_exactly_at_limit(drawdown: float) -> None:
    out = by_metric(evaluate_hard_metrics("t1", [run("r1", {**GOOD, "max_drawdown": drawdown})], GateConfig(), NOW))
    assert out["max_drawdown"].status is F and out["max_drawdown"].value == drawdown


def test_zero_drawdown_passes_as_a_value_not_missing() -> None:
    r = by_metric(evaluate_hard_metrics("t1", [run("r1", {**GOOD, "max_drawdown": 0.0})], GateConfig(), NOW))[
        "max_drawdown"
    ]
    assert r.status is P and r.value == 0.0 and r.value is not None and r.blockers == ()
    assert roundtrip(r).value == 0.0


@pytest.mark.parametrize(
    "metrics",
    [{**GOOD, "max_drawdown": None}, {"sharpe_daily": 2.0}, {**GOOD, "max_drawdown": math.nan}],
)
def test_missing_metric_is_insufficient_with_none_value(metrics: dict[str, float | None]) -> None:
    r = by_metric(evaluate_hard_metrics("t1", [run("r1", metrics)], GateConfig(), NOW))["max_drawdown"]
    assert r.status is INS and r.value is None
    assert any("max_drawdown: missing in run r1" in b for b in r.blockers)
    assert roundtrip(r).value is None


def test_metric_missing_in_one_of_several_runs_is_insufficient_not_pass() -> None:
    runs = [run("r1", age_days=1), run("r2", {"sharpe_daily": 2.0}, age_days=2)]
    r = by_metric(evaluate_hard_metrics("t1", runs, GateConfig(), NOW))["max_drawdown"]
    assert r.status is INS and r.value == 0.05 and r.observations == 1
    assert "max_drawdown: missing in run r2 (absent)" in r.blockers


def test_no_run_is_insufficient_for_every_metric() -> None:
    out = evaluate_hard_metrics("t1", [], GateConfig(), NOW)
    assert [r.status for r in out] == [INS, INS] and all(r.value is None and r.observations == 0 for r in out)
    assert all("no valid run" in r.blockers[0] for r in out)


def test_failed_running_and_non_prod_runs_never_count() -> None:
    great = {"sharpe_daily": 9.0, "max_drawdown": 0.0}
    runs = [
        run("bad", {**GOOD, "sharpe_daily": -1.0}, age_days=5),
        run("superseded", great, age_days=1, status="superseded", superseded_by="x"),
        run("superseded_by_set", great, age_days=1, superseded_by="y"),
        run("failed", great, age_days=1, status="failed"),
        run("smoke", great, age_days=1, source="smoke"),
        run("maint", great, age_days=1, source="maintenance"),
        run("running", great, age_days=0.5, status="running"),
    ]
    sharpe = by_metric(evaluate_hard_metrics("t1", runs, GateConfig(), NOW))["sharpe_daily"]
    assert sharpe.status is F and sharpe.value == -1.0 and sharpe.observations == 1
    excluded = [b for b in sharpe.blockers if b.startswith("excluded runs")]
    assert excluded == [
        "excluded runs in lookback: 1 failed, 1 running, 1 source maintenance, 1 source smoke, 2 superseded"
    ]


def test_only_excluded_runs_is_insufficient_not_pass() -> None:
    runs = [run("s", source="smoke"), run("f", status="failed")]
    out = evaluate_hard_metrics("t1", runs, GateConfig(), NOW)
    assert {r.status for r in out} == {INS}


def test_run_outside_180_day_lookback_is_not_evidence() -> None:
    assert GateConfig().lookback_ns == 180 * NS_PER_DAY
    out = evaluate_hard_metrics("t1", [run("old", age_days=181)], GateConfig(), NOW)
    assert {r.status for r in out} == {INS}
    out = evaluate_hard_metrics("t1", [run("old", age_days=150)], GateConfig(), NOW)
    assert {r.status for r in out} == {P}
    out = evaluate_hard_metrics("t1", [run("old", age_days=31)], GateConfig(lookback_ns=30 * NS_PER_DAY), NOW)
    assert {r.status for r in out} == {INS}


def test_newest_bad_run_fails_too() -> None:
    runs = [run("new", {**GOOD, "sharpe_daily": 0.2}, age_days=1), run("old", age_days=3)]
    assert by_metric(evaluate_hard_metrics("t1", runs, GateConfig(), NOW))["sharpe_daily"].status is F


def test_every_failing_run_is_named_and_the_value_is_the_worst() -> None:
    runs = [run(f"r{i}", {**GOOD, "sharpe_daily": s}, age_days=1 + i) for i, s in enumerate((2.0, 1.2, 0.4, 3.0))]
    r = by_metric(evaluate_hard_metrics("t1", runs, GateConfig(), NOW))["sharpe_daily"]
    assert r.status is F and r.value == 0.4 and r.observations == 4
    assert r.blockers[:3] == (
        "sharpe_daily: 2 of 4 valid runs fail",
        "sharpe_daily = 1.2 fails >= 1.5 (run r1)",
        "sharpe_daily = 0.4 fails >= 1.5 (run r2)",
    )
    d = by_metric(evaluate_hard_metrics("t1", runs, GateConfig(), NOW))["max_drawdown"]
    assert d.status is P and d.value == 0.05  # the worst (largest) drawdown, which passes


def test_older_attempts_of_a_request_count_once() -> None:
    runs = [run(f"a{i}", age_days=1 + i, request_hash="req-a") for i in range(3)] + [run("b", age_days=2)]
    r = by_metric(evaluate_hard_metrics("t1", runs, GateConfig(), NOW))["sharpe_daily"]
    assert r.observations == 2
    ev = evaluate_track(TrackInputs(track="t1", runs=tuple(runs)), GateConfig(), NOW)
    assert ev.readiness.value == 2.0 and ev.readiness.observations == 2


def test_threshold_override_is_recorded_in_result_and_hash() -> None:
    base = GateConfig()
    strict = base.with_overrides({"sharpe_daily": "2.5"})
    assert strict.config_hash() != base.config_hash()
    r = by_metric(evaluate_hard_metrics("t1", [run("r1")], strict, NOW))["sharpe_daily"]
    assert (r.status, r.threshold, r.config_hash) == (F, 2.5, strict.config_hash())


@pytest.mark.parametrize(
    "overrides",
    [
        {"nope": 1},
        {"sharpe_daily": "abc"},
        {"parity_return_floor": 0},
        {"parity_floor": 100},
        {"min_valid_runs": "1.5"},
        {"min_valid_runs": 0},
        {"reject_min_orders": 0},
        {"reject_rate_max": 0},
        {"reject_rate": "0.5"},
        {"lookback_ns": "3w"},
        {"sources": "prod,bogus"},
        {"max_drawdown": "inf"},
    ],
)
def test_bad_override_is_a_clear_error(overrides: dict[str, float | int | str]) -> None:
    with pytest.raises(ValueError):
        GateConfig().with_overrides(overrides)


def test_duration_override_and_defaults_of_the_replaced_system() -> None:
    cfg = GateConfig()
    assert (cfg.lookback_ns, cfg.min_valid_runs, cfg.parity_return_floor) == (180 * NS_PER_DAY, 20, 0.02)
    assert (cfg.reject_rate_max, cfg.reject_min_orders) == (0.01, 300)
    assert cfg.with_overrides({"lookback_ns": "90d"}).lookback_ns == 90 * NS_PER_DAY


def test_backtest_reject_rate_cannot_be_configured_as_a_hard_metric() -> None:
    with pytest.raises(ValueError, match="real execution"):
        GateConfig(hard_metrics=(MetricThreshold("reject_rate", Comparator.LT, 0.01),))
    with pytest.raises(ValueError, match="at least one"):
        GateConfig(hard_metrics=())


def test_config_from_env_then_applied_and_defaults_documented() -> None:
    documented = {v.name: v.default for v in VARIABLES}
    assert set(ENV_OVERRIDES) <= set(documented)
    assert GateConfig.from_env({}) == GateConfig()
    env = {var: documented[var] for var in ENV_OVERRIDES}
    assert GateConfig.from_env(env) == GateConfig()  # the documented defaults are the code's
    cfg = GateConfig.from_env(
        {
            "TRADEFLOW_GATES_LOOKBACK": "30d",
            "TRADEFLOW_GATES_MIN_VALID_RUNS": "5",
            "TRADEFLOW_GATES_REJECT_MIN_ORDERS": "50",
        }
    )
    assert (cfg.lookback_ns, cfg.min_valid_runs, cfg.reject_min_orders) == (30 * NS_PER_DAY, 5, 50)
    for var, bad in (("TRADEFLOW_GATES_LOOKBACK", "30"), ("TRADEFLOW_GATES_MIN_VALID_RUNS", "0")):
        with pytest.raises(ConfigError, match=var):
            GateConfig.from_env({var: bad})


def test_parse_duration() -> None:
    assert parse_duration_ns("30d") == 30 * NS_PER_DAY and parse_duration_ns("12h") == 12 * H
    for bad in ("", "30", "d", "-3d", "0d", "3w", "1.5d"):
        with pytest.raises(ValueError):
            parse_duration_ns(bad)


@pytest.mark.determinism
def test_same_inputs_give_identical_results_and_ids() -> None:
    inputs = TrackInputs(track="t1", runs=(run("r1"), run("r2", age_days=2)), order_updates=tuple(orders(5, 1)))
    a, b = evaluate_track(inputs, GateConfig(), NOW), evaluate_track(inputs, GateConfig(), NOW)
    assert a == b and len({r.event_id for r in a.results}) == len(a.results)


# ---------------------------------------------------------------------------
# execution reject rate (real orders)
# ---------------------------------------------------------------------------


def test_zero_real_rejects_over_enough_orders_passes_as_a_value() -> None:
    r = execution(orders(300))
    assert (r.gate, r.metric, r.status, r.value, r.observations) == (GATE_EXECUTION, "reject_rate", P, 0.0, 300)
    assert r.value is not None and r.blockers == () and (r.threshold, r.comparator) == (0.01, Comparator.LT)
    assert roundtrip(r).value == 0.0


def test_real_reject_rate_at_threshold_fails_with_reasons() -> None:
    r = execution(orders(300, rejected=2, reason="insufficient_funds") + orders(100, 1, prefix="x"))
    assert r.status is P and r.value == pytest.approx(3 / 400)
    r = execution(orders(300, rejected=3, reason="insufficient_funds"))
    assert r.status is F and r.value == 0.01 and r.observations == 300
    assert r.blockers[0] == "reject_rate = 0.01 (3/300 orders rejected) fails < 0.01"
    assert "rejects by reason: insufficient_funds 3" in r.blockers


def test_risk_blocked_and_dry_run_orders_count_in_neither_side() -> None:
    blocked = orders(50, rejected=50, reason="risk_blocked", prefix="rb")
    dry = [
        ExecutionUpdate(
            client_order_id=f"d{i}",
            adapter="ccxt:binance:spot",
            symbol="BTC/USDT",
            status=s,
            reason="dry_run",
            ts_ns=NOW - NS_PER_DAY,
        )
        for i in range(40)
        for s in ("new", "cancelled")
    ]
    r = execution(orders(300, rejected=1) + blocked + dry)
    assert r.status is P and r.observations == 300 and r.value == pytest.approx(1 / 300)


def test_only_paper_and_live_adapters_on_the_tracks_symbols_in_the_window_count() -> None:
    live = orders(200, rejected=4, adapter="ccxt:binance:spot", prefix="l")
    elsewhere = (
        orders(100, rejected=100, adapter="sim", prefix="s")  # not a paper/live adapter
        + orders(100, rejected=100, symbol="ETH/USDT", prefix="e")  # not the track's symbol
        + orders(100, rejected=100, days_ago=181, prefix="old")  # before the lookback
    )
    r = execution(orders(200, prefix="p") + live + elsewhere)
    assert r.observations == 400 and r.value == pytest.approx(4 / 400) and r.status is F


def test_order_counts_in_the_window_of_its_first_update() -> None:
    start = NOW - GateConfig().lookback_ns
    straddling = [
        ExecutionUpdate(
            client_order_id="x",
            adapter="paper",
            symbol="BTC/USDT",
            status="new",
            reason=None,
            ts_ns=start - NS_PER_SECOND,
        ),
        ExecutionUpdate(
            client_order_id="x",
            adapter="paper",
            symbol="BTC/USDT",
            status="rejected",
            reason="venue_error",
            ts_ns=start + NS_PER_SECOND,
        ),
    ]
    r = execution(orders(300) + straddling)
    assert r.observations == 300 and r.value == 0.0


def test_no_symbols_is_insufficient() -> None:
    r = execution(orders(300, rejected=30), symbols=())
    assert r.status is INS and r.value is None and "no valid run" in r.blockers[0]


# ---------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------


def fills(
    n: int,
    *,
    days_ago: float = 2.0,
    drift: float = 1.0,
    paper_adverse_bps: float = 0.0,
    paper_qty_scale: float = 1.0,
    symbol: str = "BTC/USDT",
    run_id: str = "r1",
    prefix: str = "tf",
) -> tuple[list[BacktestFill], list[PaperFill]]:
    """``n`` round trips (buy then sell) with slippage, impact and fees on both sides."""
    bt: list[BacktestFill] = []
    paper: list[PaperFill] = []
    for i in range(2 * n):
        side = "buy" if i % 2 == 0 else "sell"
        ts = NOW - int(days_ago * NS_PER_DAY) + i * H
        ref = 100.0 + drift * i  # the market moves up: every round trip earns ``drift`` per unit before costs
        q = 10.0
        d = 1 if side == "buy" else -1
        slip_bps, imp_bps, fee_bps = 2.0, 1.0, 10.0
        price = ref * (1 + d * (slip_bps + imp_bps) / 1e4)
        coid = f"{prefix}{symbol[:3]}{i:04d}"
        bt.append(
            BacktestFill(
                run_id=run_id,
                seq=i,
                client_order_id=coid,
                symbol=symbol,
                side=side,
                ts_ns=ts,
                quantity=q,
                price=price,
                notional=q * price,
                fee=q * price * fee_bps / 1e4,
                slippage_cost=q * ref * slip_bps / 1e4,
                impact_cost=q * ref * imp_bps / 1e4,
            )
        )
        pref, pq = ref * (1 + d * paper_adverse_bps / 1e4), q * paper_qty_scale
        pprice = pref * (1 + d * (slip_bps + 2 * imp_bps) / 1e4)
        paper.append(
            PaperFill(
                client_order_id=coid,
                fill_id=f"f{i}",
                symbol=symbol,
                side=side,
                ts_ns=ts + 60 * 10**9,
                quantity=pq,
                price=pprice,
                fee=pq * pprice * fee_bps / 1e4,
                slippage_bps=slip_bps,
                impact_bps=2 * imp_bps,
            )
        )
    return bt, paper


def parity(
    bt: list[BacktestFill],
    paper: list[PaperFill],
    cfg: GateConfig | None = None,
    runs: tuple[RunInfo, ...] | None = None,
) -> dict[str, ParityOutcome]:
    inputs = TrackInputs(track="t1", runs=runs or (run("r1"),), backtest_fills=tuple(bt), paper_fills=tuple(paper))
    return {o.result.metric: o for o in evaluate_parity(inputs, cfg or GateConfig(), NOW)}


def attribution(o: ParityOutcome) -> Attribution:
    assert o.attribution is not None, o.result.blockers
    return o.attribution


def test_parity_close_fills_pass_with_attribution_summing_to_gap() -> None:
    bt, paper = fills(12)
    out = parity(bt, paper)
    o = out[parity_metric(30 * NS_PER_DAY, "BTC/USDT")]
    assert o.result.status is P and o.result.observations == 24
    att = attribution(o)
    assert att.matched_orders == 24 and att.gap < 0  # paper pays twice the impact
    assert att.impact < 0 and abs(att.quantity) < 1e-9 and abs(att.price) < 1e-6
    assert sum(att.parts().values()) == pytest.approx(att.gap, abs=1e-6)
    assert o.result.value == pytest.approx(abs(att.gap) / max(abs(att.backtest_cash), 0.02 * 10_000))


def test_parity_price_gap_fails_and_is_attributed_to_price() -> None:
    bt, paper = fills(12, paper_adverse_bps=40.0)  # paper buys 40 bps higher and sells 40 bps lower
    o = parity(bt, paper)[parity_metric(30 * NS_PER_DAY, "BTC/USDT")]
    res, att = o.result, attribution(o)
    assert res.status is F and res.value is not None and res.value > 0.10
    assert abs(att.price) > 10 * abs(att.impact) and abs(att.quantity) < 1e-9
    assert sum(att.parts().values()) == pytest.approx(att.gap, abs=1e-6)
    assert res.blockers[0].startswith("relative deviation") and any(b.startswith("gap ") for b in res.blockers)


def test_parity_quantity_gap_is_attributed_to_quantity() -> None:
    bt, paper = fills(12, paper_qty_scale=0.5)
    att = attribution(parity(bt, paper)[parity_metric(30 * NS_PER_DAY, "BTC/USDT")])
    assert abs(att.quantity) > abs(att.price) and sum(att.parts().values()) == pytest.approx(att.gap, abs=1e-6)


def test_parity_below_min_matched_is_insufficient_and_says_so() -> None:
    bt, paper = fills(3)
    res = parity(bt, paper)[parity_metric(30 * NS_PER_DAY, "BTC/USDT")].result
    assert res.status is INS and res.value is not None and res.observations == 6
    assert res.blockers[0] == "insufficient matched orders: 6 < 10"


def test_parity_fills_older_than_7d_only_count_in_30d_window() -> None:
    bt, paper = fills(12, days_ago=10)
    out = parity(bt, paper)
    seven, thirty = out[parity_metric(7 * NS_PER_DAY, "BTC/USDT")], out[parity_metric(30 * NS_PER_DAY, "BTC/USDT")]
    assert seven.result.status is INS and seven.result.value is None and seven.attribution is None
    assert thirty.result.status is P
    assert seven.result.window_end - seven.result.window_start == 7 * NS_PER_DAY


def test_parity_unmatched_orders_are_listed_and_fail_above_fraction() -> None:
    bt, paper = fills(12)
    extra_bt, extra_paper = fills(3, prefix="xx")
    res = parity(bt + extra_bt, paper + extra_paper[:2])[parity_metric(30 * NS_PER_DAY, "BTC/USDT")].result
    assert res.status is F
    assert res.blockers[0] == "unmatched orders 4/30 exceed 0.1"
    assert sum(b.startswith("unmatched backtest order xxBTC") for b in res.blockers) == 4
    assert sum(b.startswith("unmatched paper order") for b in res.blockers) == 0
    assert res.observations == 26


def test_parity_return_floor_is_the_denominator_when_backtest_nets_near_zero() -> None:
    bt, paper = fills(12, drift=0.0)  # flat market: the backtest's cash is only its costs
    o = parity(bt, paper)[parity_metric(30 * NS_PER_DAY, "BTC/USDT")]
    capital = 10_000.0  # the run's initial cash: the floor is a 2 % return on it
    assert o.attribution is not None and abs(attribution(o).backtest_cash) < 0.02 * capital
    assert o.result.value == pytest.approx(abs(attribution(o).gap) / (0.02 * capital))
    unfloored = abs(attribution(o).gap) / abs(attribution(o).backtest_cash)
    assert o.result.value is not None and o.result.value < unfloored


def test_parity_return_floor_scales_with_capital_not_a_fixed_cash_amount() -> None:
    """The same cash gap is a 10x smaller return deviation on a 10x larger account."""
    bt, paper = fills(12, drift=0.0, paper_adverse_bps=20.0)
    metric = parity_metric(30 * NS_PER_DAY, "BTC/USDT")
    small = parity(bt, paper, runs=(run("r1", initial_cash=10_000.0),))[metric].result
    large = parity(bt, paper, runs=(run("r1", initial_cash=100_000.0),))[metric].result
    assert small.value is not None and large.value is not None
    assert small.value == pytest.approx(10 * large.value) and small.status is F and large.status is P
    both = (run("r1", initial_cash=100_000.0), run("r2", age_days=2, initial_cash=10_000.0))
    assert parity(bt, paper, runs=both)[metric].result.value == pytest.approx(small.value)  # the stricter base


@pytest.mark.parametrize("cash", [None, 0.0, math.nan])
def test_parity_without_a_known_capital_is_insufficient(cash: float | None) -> None:
    bt, paper = fills(12)
    res = parity(bt, paper, runs=(run("r1", initial_cash=cash),))[parity_metric(30 * NS_PER_DAY, "BTC/USDT")].result
    assert res.status is INS and res.value is None and res.blockers[0].startswith("capital unknown")


def test_parity_without_valid_run_is_insufficient_per_window() -> None:
    bt, paper = fills(12)
    out = parity(bt, paper, runs=(run("r1", status="superseded", superseded_by="r2"), run("s", source="smoke")))
    assert sorted(out) == [parity_metric(30 * NS_PER_DAY, "*"), parity_metric(7 * NS_PER_DAY, "*")]
    assert all(o.result.status is INS and o.result.value is None for o in out.values())


def test_parity_newest_run_wins_a_shared_order() -> None:
    bt_old, paper = fills(12, run_id="old")
    bt_new = [
        BacktestFill(
            **{
                **{f: getattr(b, f) for f in b.__slots__},
                "run_id": "new",
                "price": b.price * 1.01,
                "notional": b.notional * 1.01,
            }
        )
        for b in bt_old
    ]
    runs = (run("old", age_days=3), run("new", age_days=1))
    new_wins = parity(bt_old + bt_new, paper, runs=runs)[parity_metric(30 * NS_PER_DAY, "BTC/USDT")]
    only_old = parity(bt_old, paper, runs=runs[:1])[parity_metric(30 * NS_PER_DAY, "BTC/USDT")]
    assert attribution(new_wins).backtest_cash != attribution(only_old).backtest_cash


def test_parity_paper_fills_outside_backtest_range_are_not_unmatched() -> None:
    bt, paper = fills(12)
    _, late = fills(2, days_ago=0.01, prefix="late")
    short = RunInfo(**{**{f: getattr(run("r1"), f) for f in RunInfo.__slots__}, "range_end_ns": NOW - NS_PER_DAY})
    res = parity(bt, paper + late, runs=(short,))[parity_metric(30 * NS_PER_DAY, "BTC/USDT")].result
    assert res.status is P and not any("late" in b for b in res.blockers)


# ---------------------------------------------------------------------------
# readiness
# ---------------------------------------------------------------------------


def track(
    runs: tuple[RunInfo, ...],
    n_round_trips: int = 12,
    cfg: GateConfig | None = None,
    updates: list[ExecutionUpdate] | None = None,
) -> Evaluation:
    bt, paper = fills(n_round_trips)
    return evaluate_track(
        TrackInputs(
            track="t1",
            runs=runs,
            backtest_fills=tuple(bt),
            paper_fills=tuple(paper),
            order_updates=tuple(orders(300) if updates is None else updates),
        ),
        cfg or GateConfig(),
        NOW,
    )


def test_ready_when_all_gates_pass_and_20_runs_each_pass() -> None:
    ev = track(runs_n(20))
    assert ev.ready and ev.readiness.status is P and ev.readiness.blockers == ()
    assert ev.readiness.value == 20.0 and ev.readiness.threshold == 20.0 and ev.results[-1] is ev.readiness
    assert {(r.gate, r.metric) for r in ev.results if r.status is P} >= {
        (GATE_HARD_METRICS, "sharpe_daily"),
        (GATE_HARD_METRICS, "max_drawdown"),
        (GATE_EXECUTION, "reject_rate"),
        (GATE_PARITY, parity_metric(30 * NS_PER_DAY, "BTC/USDT")),
        (GATE_READINESS, "valid_runs"),
    }


def test_insufficient_runs_says_so() -> None:
    ev = track((*runs_n(19), run("f", status="failed"), run("s", source="smoke")))
    rd = ev.readiness
    assert rd.status is INS and rd.value == 19.0
    assert (
        "insufficient runs: 19 < 20 (valid runs in the lookback passing every hard metric, of 19 valid)" in rd.blockers
    )


def test_failing_gate_is_named_and_readiness_fails() -> None:
    runs = (run("r1", {**GOOD, "sharpe_daily": -0.3}), *runs_n(20, prefix="ok")[1:], run("r2", age_days=2))
    rd = track(runs).readiness
    assert rd.status is F
    assert rd.blockers == ("failed gate: hard_metrics/sharpe_daily = -0.3 (needs >= 1.5)",)


def test_every_blocker_listed_when_many_fail() -> None:
    runs = (run("r1", {"sharpe_daily": -1.0, "max_drawdown": 0.2}),)
    rd = track(runs, n_round_trips=2, updates=orders(20)).readiness
    assert rd.status is F
    text = "\n".join(rd.blockers)
    for needle in (
        "failed gate: hard_metrics/sharpe_daily",
        "failed gate: hard_metrics/max_drawdown",
        "insufficient observation: execution/reject_rate = 0 (needs < 0.01)",
        "insufficient observation: parity/relative_deviation_7d:BTC/USDT",
        "insufficient observation: parity/relative_deviation_30d:BTC/USDT",
        "insufficient runs: 0 < 20",
    ):
        assert needle in text


def test_missing_gate_is_a_blocker() -> None:
    cfg = GateConfig(min_valid_runs=3)
    latest = {(GATE_HARD_METRICS, "sharpe_daily"): evaluate_hard_metrics("t1", [run("r1")], cfg, NOW)[0]}
    required = [(GATE_HARD_METRICS, "sharpe_daily"), (GATE_PARITY, parity_metric(7 * NS_PER_DAY, "BTC/USDT"))]
    runs = [run("r1"), run("r2"), run("r3")]
    rd = evaluate_readiness("t1", latest, required, runs, cfg, NOW)
    assert rd.status is INS and rd.blockers == ("missing gate: parity/relative_deviation_7d:BTC/USDT",)


def test_non_prod_sources_can_never_be_ready() -> None:
    cfg = GateConfig(min_valid_runs=3).with_overrides({"sources": "prod,maintenance"})
    ev = track((run("r1"), run("r2", source="maintenance"), run("r3", age_days=3)), cfg=cfg)
    assert ev.readiness.status is F
    assert any("not prod-like" in b for b in ev.readiness.blockers)


def test_other_tracks_runs_are_ignored() -> None:
    ev = track((*runs_n(19), run("x1", track="t2"), run("x2", track="t2")))
    assert any(b.startswith("insufficient runs: 19 < 20") for b in ev.readiness.blockers)


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="parity_return_floor"):
        GateConfig(parity_return_floor=0.0)
    with pytest.raises(ValueError, match="sources"):
        GateConfig(sources=())


def test_every_gate_of_a_track_can_fail() -> None:
    """A gate that cannot fail is a defect: each gate, fed bad evidence, says failed."""
    bad = {"sharpe_daily": 0.3, "max_drawdown": 0.3, "reject_rate": 0.0}
    bt, paper = fills(12, paper_adverse_bps=40.0)
    ev = evaluate_track(
        TrackInputs(
            track="t1",
            runs=runs_n(20, bad),
            backtest_fills=tuple(bt),
            paper_fills=tuple(paper),
            order_updates=tuple(orders(300, rejected=30)),
        ),
        GateConfig(),
        NOW,
    )
    status = {(r.gate, r.metric): r.status for r in ev.results}
    assert status == {
        (GATE_HARD_METRICS, "sharpe_daily"): F,
        (GATE_HARD_METRICS, "max_drawdown"): F,
        (GATE_EXECUTION, "reject_rate"): F,
        (GATE_PARITY, parity_metric(7 * NS_PER_DAY, "BTC/USDT")): F,
        (GATE_PARITY, parity_metric(30 * NS_PER_DAY, "BTC/USDT")): F,
        (GATE_READINESS, "valid_runs"): F,
    }


# ---------------------------------------------------------------------------
# false green: each scenario passed on the old engine and must not pass now
# ---------------------------------------------------------------------------


def test_false_green_old_good_run_hiding_a_new_bad_one_then_failed() -> None:
    """The bad run covers the newest data but finished first; a good backtest of old data finished after it."""
    new_bad = RunInfo(
        **{
            **{f: getattr(run("new-bad", {**GOOD, "sharpe_daily": 0.2}, age_days=2), f) for f in RunInfo.__slots__},
            "range_start_ns": NOW - 30 * NS_PER_DAY,
            "range_end_ns": NOW - 2 * NS_PER_DAY,
        }
    )
    old_good = RunInfo(
        **{
            **{f: getattr(run("old-good", age_days=1), f) for f in RunInfo.__slots__},
            "range_start_ns": NOW - 400 * NS_PER_DAY,
            "range_end_ns": NOW - 370 * NS_PER_DAY,
        }
    )
    r = by_metric(evaluate_hard_metrics("t1", [new_bad, old_good], GateConfig(), NOW))["sharpe_daily"]
    assert r.status is F and r.value == 0.2 and "sharpe_daily = 0.2 fails >= 1.5 (run new-bad)" in r.blockers


def test_false_green_bad_run_between_good_ones_then_failed_and_not_ready() -> None:
    runs = (*runs_n(20), run("bad", {**GOOD, "max_drawdown": 0.2}, age_days=2))
    ev = track(runs)
    dd = by_metric(list(ev.results))["max_drawdown"]
    assert dd.status is F and dd.value == 0.2
    assert ev.readiness.status is F and ev.readiness.value == 20.0  # 21 valid runs, 20 pass everything


def test_false_green_readiness_counts_runs_that_each_pass() -> None:
    """20 valid runs, the newest good: readiness used to count 20 and check only the newest."""
    runs = (run("newest", age_days=0.5), *runs_n(18), run("weak", {**GOOD, "sharpe_daily": 1.4}, age_days=100))
    ev = track(runs)
    assert ev.readiness.status is F and ev.readiness.value == 19.0 and ev.readiness.observations == 20
    assert any(b.startswith("insufficient runs: 19 < 20") for b in ev.readiness.blockers)


@pytest.mark.parametrize(
    ("superseded_by", "extra", "why"),
    [
        (None, (), "superseded without superseded_by"),
        ("gone", (), "replacement gone is not a run of this track"),
        ("older", (run("older", age_days=30),), "replacement older finished before the run it replaces"),
        ("broken", (run("broken", age_days=0.5, status="failed"),), "replacement broken is failed"),
        ("smoke", (run("smoke", age_days=0.5, source="smoke"),), "replacement smoke is source smoke"),
        ("other", (run("other", age_days=0.5, track="t2"),), "replacement other is not a run of this track"),
    ],
)
def test_false_green_superseded_bad_run_without_valid_replacement_then_not_passed(
    superseded_by: str | None, extra: tuple[RunInfo, ...], why: str
) -> None:
    """Superseding the one bad run used to leave the older good runs to decide: green."""
    bad = run("bad", {**GOOD, "sharpe_daily": -2.0}, age_days=1, status="superseded", superseded_by=superseded_by)
    ev = track((*runs_n(20), bad, *extra))
    for metric in ("sharpe_daily", "max_drawdown"):
        r = by_metric(list(ev.results))[metric]
        assert r.status is INS, (metric, r.blockers)
        assert f"superseded run bad withdrew its evidence without a valid replacement ({why})" in r.blockers
    assert ev.readiness.status is INS and not ev.ready


def test_superseded_run_with_a_valid_newer_replacement_then_the_replacement_decides() -> None:
    for replacement in (run("fix", age_days=0.5), run("fix", {**GOOD, "sharpe_daily": 0.9}, age_days=0.5)):
        bad = run("bad", {**GOOD, "sharpe_daily": -2.0}, age_days=1, status="superseded", superseded_by="fix")
        ev = track((*runs_n(19), bad, replacement))
        sharpe = by_metric(list(ev.results))["sharpe_daily"]
        if replacement.metrics["sharpe_daily"] == 0.9:
            assert sharpe.status is F and sharpe.value == 0.9  # the replacement is judged like any run
        else:
            assert sharpe.status is P and ev.ready and not any("superseded run" in b for b in sharpe.blockers)


def test_superseded_run_replaced_through_a_chain_or_by_a_rerun_then_resolved() -> None:
    bad = run("bad", {**GOOD, "sharpe_daily": -2.0}, age_days=3, status="superseded", superseded_by="mid")
    mid = run("mid", age_days=2, status="superseded", superseded_by="end")
    ev = track((*runs_n(19), bad, mid, run("end", age_days=1)))
    assert ev.ready, ev.readiness.blockers
    rerun = run("req-2", age_days=1, request_hash="req")
    gone = run("req", {**GOOD, "sharpe_daily": -2.0}, age_days=3, status="superseded", request_hash="req")
    ev = track((*runs_n(19), gone, rerun))
    assert ev.ready, ev.readiness.blockers
    loop = run("l1", {**GOOD, "sharpe_daily": -2.0}, age_days=3, status="superseded", superseded_by="l2")
    loop2 = run("l2", age_days=2, status="superseded", superseded_by="l1")
    r = by_metric(list(track((*runs_n(20), loop, loop2)).results))["sharpe_daily"]
    assert r.status is INS and any("chain loops at l1" in b for b in r.blockers)


def test_superseded_run_without_evidence_of_its_own_blocks_nothing() -> None:
    """A failed or stale running run that was superseded never produced metrics: nothing was withdrawn."""
    stale = run("stale", {}, age_days=1, status="superseded")
    ev = track((*runs_n(20), stale))
    assert ev.ready, ev.readiness.blockers


def test_false_green_backtest_reject_rate_zero_with_real_rejects_then_failed() -> None:
    """The backtest simulated no reject (0.0); the paper/live accounts rejected 2 % of their orders."""
    ev = track(runs_n(20), updates=orders(300, rejected=6, reason="insufficient_funds"))
    assert all(r.metrics["reject_rate"] == 0.0 for r in runs_n(20))
    rej = {(r.gate, r.metric): r for r in ev.results}[(GATE_EXECUTION, "reject_rate")]
    assert rej.status is F and rej.value == 0.02 and rej.observations == 300
    assert (GATE_HARD_METRICS, "reject_rate") not in {(r.gate, r.metric) for r in ev.results}
    assert ev.readiness.status is F
    assert "failed gate: execution/reject_rate = 0.02 (needs < 0.01)" in ev.readiness.blockers


@pytest.mark.parametrize(("n", "status"), [(0, INS), (50, INS), (299, INS), (300, P)])
def test_false_green_too_few_orders_then_insufficient_observation(n: int, status: GateStatus) -> None:
    """Zero rejects in a handful of orders proves nothing about a 1 % rate."""
    r = execution(orders(n))
    assert r.status is status and r.observations == n
    assert r.value == (None if n == 0 else 0.0)
    if status is INS:
        assert r.blockers[0].startswith(f"insufficient orders: {n} < 300")
        assert not track(runs_n(20), updates=orders(n)).ready
    assert execution(orders(n), GateConfig(reject_min_orders=max(n, 1))).status is (P if n else INS)
