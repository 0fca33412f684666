"""Gate engine: each gate must fail on bad evidence, say 'insufficient' when
evidence is missing, and treat a zero as a value. Named scenario_outcome."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from agents.gates.config import GateConfig, parse_duration_ns
from agents.gates.engine import (
    GATE_HARD_METRICS,
    GATE_PARITY,
    Attribution,
    BacktestFill,
    Evaluation,
    PaperFill,
    ParityOutcome,
    RunInfo,
    TrackInputs,
    evaluate_hard_metrics,
    evaluate_parity,
    evaluate_readiness,
    evaluate_track,
    parity_metric,
)
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
    )


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
    assert {m: r.status for m, r in out.items()} == {"sharpe_daily": P, "max_drawdown": P, "reject_rate": P}
    assert (out["sharpe_daily"].threshold, out["sharpe_daily"].comparator) == (1.5, Comparator.GE)
    assert (out["max_drawdown"].threshold, out["max_drawdown"].comparator) == (0.12, Comparator.LT)
    assert out["sharpe_daily"].config_hash == GateConfig().config_hash()
    assert all(roundtrip(r) == r for r in out.values())


def test_negative_sharpe_fails() -> None:
    out = by_metric(evaluate_hard_metrics("t1", [run("r1", {**GOOD, "sharpe_daily": -0.8})], GateConfig(), NOW))
    assert out["sharpe_daily"].status is F and out["sharpe_daily"].value == -0.8
    assert any("sharpe_daily = -0.8 fails >= 1.5" in b for b in out["sharpe_daily"].blockers)


def test_design_last_status_sharpe_0456_fails_other_metrics_pass() -> None:
    metrics = {"sharpe_daily": 0.456, "max_drawdown": 0.000178, "reject_rate": 0.00244}
    out = by_metric(evaluate_hard_metrics("t1", [run("r1", metrics)], GateConfig(), NOW))
    assert (out["sharpe_daily"].status, out["max_drawdown"].status, out["reject_rate"].status) == (F, P, P)


@pytest.mark.parametrize("drawdown", [0.15, 0.12])
def test_drawdown_breach_fails_including_exactly_at_limit(drawdown: float) -> None:
    out = by_metric(evaluate_hard_metrics("t1", [run("r1", {**GOOD, "max_drawdown": drawdown})], GateConfig(), NOW))
    assert out["max_drawdown"].status is F and out["max_drawdown"].value == drawdown


def test_zero_reject_rate_passes_as_a_value_not_missing() -> None:
    out = by_metric(evaluate_hard_metrics("t1", [run("r1")], GateConfig(), NOW))
    r = out["reject_rate"]
    assert r.status is P and r.value == 0.0 and r.value is not None and r.blockers == ()
    assert roundtrip(r).value == 0.0


@pytest.mark.parametrize(
    "metrics",
    [{**GOOD, "reject_rate": None}, {"sharpe_daily": 2.0, "max_drawdown": 0.01}, {**GOOD, "reject_rate": math.nan}],
)
def test_missing_metric_is_insufficient_with_none_value(metrics: dict[str, float | None]) -> None:
    r = by_metric(evaluate_hard_metrics("t1", [run("r1", metrics)], GateConfig(), NOW))["reject_rate"]
    assert r.status is INS and r.value is None
    assert any("reject_rate: missing in run r1" in b for b in r.blockers)
    assert roundtrip(r).value is None


def test_no_run_is_insufficient_for_every_metric() -> None:
    out = evaluate_hard_metrics("t1", [], GateConfig(), NOW)
    assert [r.status for r in out] == [INS, INS, INS] and all(r.value is None and r.observations == 0 for r in out)
    assert all("no valid run" in r.blockers[0] for r in out)


def test_superseded_failed_and_non_prod_runs_never_count() -> None:
    great = {"sharpe_daily": 9.0, "max_drawdown": 0.0, "reject_rate": 0.0}
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


def test_run_outside_lookback_is_not_evidence() -> None:
    out = evaluate_hard_metrics("t1", [run("old", age_days=31)], GateConfig(), NOW)
    assert {r.status for r in out} == {INS}
    out = evaluate_hard_metrics("t1", [run("old", age_days=31)], GateConfig(lookback_ns=40 * NS_PER_DAY), NOW)
    assert {r.status for r in out} == {P}


def test_latest_valid_run_decides() -> None:
    runs = [run("new", {**GOOD, "sharpe_daily": 0.2}, age_days=1), run("old", age_days=3)]
    assert by_metric(evaluate_hard_metrics("t1", runs, GateConfig(), NOW))["sharpe_daily"].status is F


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
        {"parity_floor": 0},
        {"min_valid_runs": "1.5"},
        {"sources": "prod,bogus"},
        {"max_drawdown": "inf"},
    ],
)
def test_bad_override_is_a_clear_error(overrides: dict[str, float | int | str]) -> None:
    with pytest.raises(ValueError):
        GateConfig().with_overrides(overrides)


def test_parse_duration() -> None:
    assert parse_duration_ns("30d") == 30 * NS_PER_DAY and parse_duration_ns("12h") == 12 * H
    for bad in ("", "30", "d", "-3d", "0d", "3w", "1.5d"):
        with pytest.raises(ValueError):
            parse_duration_ns(bad)


@pytest.mark.determinism
def test_same_inputs_give_identical_results_and_ids() -> None:
    inputs = TrackInputs(track="t1", runs=(run("r1"), run("r2", age_days=2)))
    a, b = evaluate_track(inputs, GateConfig(), NOW), evaluate_track(inputs, GateConfig(), NOW)
    assert a == b and len({r.event_id for r in a.results}) == len(a.results)


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
    assert o.result.value == pytest.approx(abs(att.gap) / max(abs(att.backtest_cash), 100.0))


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


def test_parity_floor_is_the_denominator_when_backtest_nets_near_zero() -> None:
    bt, paper = fills(12, drift=0.0)  # flat market: the backtest's cash is only its costs
    o = parity(bt, paper)[parity_metric(30 * NS_PER_DAY, "BTC/USDT")]
    assert o.attribution is not None and abs(attribution(o).backtest_cash) < 100.0
    assert o.result.value == pytest.approx(abs(attribution(o).gap) / 100.0)
    unfloored = abs(attribution(o).gap) / abs(attribution(o).backtest_cash)
    assert o.result.value is not None and o.result.value < unfloored


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


def track(runs: tuple[RunInfo, ...], n_round_trips: int = 12, cfg: GateConfig | None = None) -> Evaluation:
    bt, paper = fills(n_round_trips)
    return evaluate_track(
        TrackInputs(track="t1", runs=runs, backtest_fills=tuple(bt), paper_fills=tuple(paper)), cfg or GateConfig(), NOW
    )


def test_ready_when_all_gates_pass_and_runs_suffice() -> None:
    ev = track((run("r1"), run("r2", age_days=2), run("r3", age_days=3)))
    assert ev.ready and ev.readiness.status is P and ev.readiness.blockers == ()
    assert ev.readiness.value == 3.0 and ev.results[-1] is ev.readiness


def test_insufficient_runs_says_so() -> None:
    ev = track((run("r1"), run("f", status="failed"), run("s", source="smoke")))
    rd = ev.readiness
    assert rd.status is INS and "insufficient runs: 1 < 3" in rd.blockers and rd.value == 1.0


def test_failing_gate_is_named_and_readiness_fails() -> None:
    runs = (run("r1", {**GOOD, "sharpe_daily": -0.3}), run("r2", age_days=2), run("r3", age_days=3))
    rd = track(runs).readiness
    assert rd.status is F
    assert rd.blockers == ("failed gate: hard_metrics/sharpe_daily = -0.3 (needs >= 1.5)",)


def test_every_blocker_listed_when_many_fail() -> None:
    runs = (run("r1", {"sharpe_daily": -1.0, "max_drawdown": 0.2, "reject_rate": None}),)
    rd = track(runs, n_round_trips=2).readiness
    assert rd.status is F
    text = "\n".join(rd.blockers)
    for needle in (
        "failed gate: hard_metrics/sharpe_daily",
        "failed gate: hard_metrics/max_drawdown",
        "insufficient observation: hard_metrics/reject_rate = missing",
        "insufficient observation: parity/relative_deviation_7d:BTC/USDT",
        "insufficient observation: parity/relative_deviation_30d:BTC/USDT",
        "insufficient runs: 1 < 3",
    ):
        assert needle in text


def test_missing_gate_is_a_blocker() -> None:
    cfg = GateConfig()
    latest = {(GATE_HARD_METRICS, "sharpe_daily"): evaluate_hard_metrics("t1", [run("r1")], cfg, NOW)[0]}
    required = [(GATE_HARD_METRICS, "sharpe_daily"), (GATE_PARITY, parity_metric(7 * NS_PER_DAY, "BTC/USDT"))]
    runs = [run("r1"), run("r2"), run("r3")]
    rd = evaluate_readiness("t1", latest, required, runs, cfg, NOW)
    assert rd.status is INS and rd.blockers == ("missing gate: parity/relative_deviation_7d:BTC/USDT",)


def test_non_prod_sources_can_never_be_ready() -> None:
    cfg = GateConfig().with_overrides({"sources": "prod,maintenance"})
    ev = track((run("r1"), run("r2", source="maintenance"), run("r3", age_days=3)), cfg=cfg)
    assert ev.readiness.status is F
    assert any("not prod-like" in b for b in ev.readiness.blockers)


def test_other_tracks_runs_are_ignored() -> None:
    ev = track((run("r1"), run("r2", track="t2"), run("r3", track="t2")))
    assert "insufficient runs: 1 < 3" in ev.readiness.blockers


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="parity_floor"):
        GateConfig(parity_floor=0.0)
    with pytest.raises(ValueError, match="sources"):
        GateConfig(sources=())
