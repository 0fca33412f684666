"""Dashboard view model (pure fold), SSE hub bounds, token checks, the page."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.risk.killswitch import KillScope, KillSwitch
from ops.dashboard.agent import DashboardSettings, authorized, load_token, render_page
from ops.dashboard.hub import SseHub, sse_frame
from ops.dashboard.state import TOPICS, DashboardConfig, DashboardState, parse_switch
from storage.status import TradingFlowRow
from tests import builders
from topics.catalogue import BY_NAME
from topics.records import (
    Alert,
    ControlAudit,
    ControlOutcome,
    DeadLetter,
    GateResult,
    GateStatus,
    ModelRegistryEvent,
    ModelStage,
    OpeningStatus,
    OrderStatus,
    PortfolioSnapshot,
    RiskDecision,
    RiskVerdict,
    RolloutAction,
    RolloutDecision,
    RolloutTrigger,
    Severity,
    Side,
    Signal,
)
from topics.units import NS_PER_HOUR as H
from topics.units import NS_PER_SECOND as S

T0 = 1_700_000_000_000_000_000


def signal(symbol: str, ts: int, score: float) -> Signal:
    return builders.signal(
        symbol=symbol, ts=ts, score=score, expected_return=0.01 * score, feature_event_id=f"f-{symbol}-{ts}"
    )


def snapshot(ts: int, equity: float, qty: float = 0.5, account: str = "paper") -> PortfolioSnapshot:
    return PortfolioSnapshot.new(
        ts_init=ts,
        ts_event=ts,
        account=account,
        as_of_ns=ts,
        as_of_event_id=f"bar-{ts}",
        quote_currency="USDT",
        cash=equity - 100.0,
        equity=equity,
        peak_equity=max(equity, 100_000.0),
        drawdown=0.0,
        day_start_ns=T0,
        day_start_equity=100_000.0,
        day_peak_equity=100_000.0,
        intraday_drawdown=0.0,
        daily_pnl=equity - 100_000.0,
        daily_return=0.0,
        realized_pnl=0.0,
        unrealized_pnl=1.5,
        fees_paid=0.25,
        consecutive_losses=0,
        closed_trades=0,
        losing_trades=0,
        fills_applied=1,
        foreign_fee_fills=0,
        quantities={"BTC/USDT": qty},
        avg_prices={"BTC/USDT": 20_000.0},
        mark_prices={"BTC/USDT": 20_003.0},
        mark_ts_ns={"BTC/USDT": ts},
        realized_pnls={"BTC/USDT": 0.0},
        unrealized_pnls={"BTC/USDT": 1.5},
        fees={"BTC/USDT": 0.25},
        opened_at_ns={"BTC/USDT": T0},
        config_hash="c",
    )


def switch_text(scope: KillScope, target: str, reason: str, set_by: str, expires: int | None) -> str:
    return KillSwitch(
        scope=scope, target=target, reason=reason, set_by=set_by, set_at_ns=T0, expires_at_ns=expires
    ).describe()


def audit(
    ts: int,
    command: str,
    changes: tuple[str, ...],
    outcome: ControlOutcome = ControlOutcome.ACCEPTED,
    reason: str = "applied",
    nonce: str = "n1",
) -> ControlAudit:
    return ControlAudit.new(
        ts_init=ts,
        ts_event=ts,
        component="risk:paper",
        control_event_id=f"ce-{nonce}",
        command=command,
        scope="global",
        target="*",
        operator="alice",
        key_id="ops1",
        nonce=nonce,
        outcome=outcome,
        reason=reason,
        detail="",
        alert=outcome is ControlOutcome.REJECTED,
        changes=changes,
        config_hash_before="a",
        config_hash_after="b",
    )


def gate(ts: int, status: GateStatus, value: float | None, blockers: tuple[str, ...]) -> GateResult:
    return builders.gate_result(
        status=status,
        value=value,
        metric="sharpe",
        window_start=T0 - 30 * 24 * H,
        window_end=ts,
        observations=12,
        blockers=blockers,
        config_hash=f"g{ts}",
    )


def model(ts: int, version: str, stage: ModelStage) -> ModelRegistryEvent:
    return builders.registry_event(
        version=version,
        stage=stage,
        ts=ts,
        model_id="mlp-btc",
        data_start=T0 - H,
        data_end=T0,
        metrics={"val_loss": 0.5},
        checkpoint_path="x",
    )


def rollout(
    ts: int, version: str, from_stage: ModelStage, to_stage: ModelStage, action: RolloutAction
) -> RolloutDecision:
    return RolloutDecision.new(
        ts_init=ts,
        ts_event=ts,
        model_id="mlp-btc",
        version=version,
        symbol="BTC/USDT",
        from_stage=from_stage,
        to_stage=to_stage,
        action=action,
        trigger=RolloutTrigger.CONTROL,
        window_start=None,
        window_end=None,
        window_status=None,
        gates={},
        gate_result_ids=(),
        passing_windows=0,
        failing_windows=0,
        windows_to_promote=3,
        windows_to_rollback=2,
        config_hash="g",
        actor="operator:alice",
        reason=f"applied: {action.value}",
        restored_version=None,
        cause_event_id=f"ce-{ts}-{to_stage.value}",
    )


def dead(offset: int, reason: str) -> DeadLetter:
    return DeadLetter.new(
        ts_init=T0,
        ts_event=T0,
        consumer="sink",
        source_topic="signals",
        source_partition=0,
        source_offset=offset,
        reason=reason,
        detail="bad",
        original_key_b64=None,
        original_b64="eA==",
        original_size=1,
    )


# ---------------------------------------------------------------------------
# fold rules
# ---------------------------------------------------------------------------


def test_topics_are_catalogued_with_the_record_types_folded() -> None:
    st = DashboardState()
    for name in TOPICS:
        assert name in BY_NAME
    # every catalogued record type of those topics is handled (no TypeError)
    records: list[Any] = [
        builders.bar(open_time=T0 - H),
        builders.update(),
        builders.fill(),
        rollout(T0, "1", ModelStage.REGISTERED, ModelStage.SHADOW, RolloutAction.MANUAL_PROMOTE),
        signal("BTC/USDT", T0, 0.2),
        snapshot(T0, 100_000.0),
        RiskDecision.new(
            ts_init=T0,
            ts_event=T0,
            intent_event_id="i",
            strategy_id="s",
            symbol="BTC/USDT",
            verdict=RiskVerdict.APPROVED,
            requested_quantity=1.0,
            approved_quantity=1.0,
            reasons=(),
        ),
        audit(T0, "set_limit", ()),
        gate(T0, GateStatus.PASSED, 2.0, ()),
        model(T0, "1", ModelStage.SHADOW),
        dead(1, "invalid_json"),
        Alert.new(
            ts_init=T0,
            ts_event=T0,
            severity=Severity.INFO,
            source="x",
            code="c",
            message="m",
            dedupe_key="d",
            labels={},
        ),
        opening(T0, ("kill_switch_global", "global", "*", "drill (set by operator:alice)", None, "wall", None)),
    ]
    assert {BY_NAME[n].record for n in TOPICS} == {type(r) for r in records}
    assert all(st.apply(r) for r in records)


def opening(ts: int, *blockers: tuple[Any, ...]) -> OpeningStatus:
    names = ("codes", "scopes", "targets", "details", "until_ns", "domains", "remaining_ns")
    return OpeningStatus.new(
        ts_init=ts,
        ts_event=ts,
        account="paper",
        allowed=not blockers,
        market_ns=ts,
        wall_ns=ts,
        config_hash="h",
        **{f"blocker_{n}": tuple(b[i] for b in blockers) for i, n in enumerate(names)},
    )


def test_opening_status_then_latest_per_account_with_every_blocker_in_the_snapshot() -> None:
    st = DashboardState()
    halted = opening(T0, ("daily_loss_limit", "account", "*", "daily return -0.04", T0 + H, "market", H))
    assert st.apply(halted)
    (view,) = st.view(T0)["risk"]["opening"]
    assert view["allowed"] is False and view["blockers"] == [
        {
            "code": "daily_loss_limit",
            "scope": "account",
            "target": "*",
            "detail": "daily return -0.04",
            "until_ns": T0 + H,
            "domain": "market",
            "remaining_ns": H,
        }
    ]
    assert st.apply(opening(T0 + 1))
    assert not st.apply(halted)  # redelivered: the later status stands
    (view,) = st.view(T0 + 1)["risk"]["opening"]
    assert view["allowed"] is True and view["blockers"] == []


def test_latest_signal_per_symbol_by_event_time_and_duplicates_ignored() -> None:
    st = DashboardState()
    assert st.apply(signal("BTC/USDT", T0 + H, 0.4))
    assert not st.apply(signal("BTC/USDT", T0 + H, 0.4)), "redelivery is not a change"
    assert not st.apply(signal("BTC/USDT", T0, -0.9)), "an older signal never replaces a newer one"
    st.apply(signal("ETH/USDT", T0, -0.2))
    v = st.view(T0)
    assert [(s["symbol"], s["score"]) for s in v["signals"]] == [("BTC/USDT", 0.4), ("ETH/USDT", -0.2)]
    assert v["version"] == 2


def test_portfolio_latest_and_equity_curve_bounded_with_newest_point_kept() -> None:
    st = DashboardState(DashboardConfig(equity_points=8))
    for i in range(100):
        st.apply(snapshot(T0 + i * H, 100_000.0 + i))
    st.apply(snapshot(T0 + 5 * H, 1.0))  # late and old: ignored everywhere
    p = st.view(T0)["portfolios"][0]
    assert p["equity"] == 100_099.0 and p["as_of_ns"] == T0 + 99 * H
    curve = p["equity_curve"]
    assert len(curve) <= 9
    assert curve[0] == [T0, 100_000.0] and curve[-1] == [T0 + 99 * H, 100_099.0]
    assert [c[0] for c in curve] == sorted(c[0] for c in curve)
    assert p["positions"] == [
        {
            "symbol": "BTC/USDT",
            "quantity": 0.5,
            "avg_price": 20_000.0,
            "mark_price": 20_003.0,
            "unrealized_pnl": 1.5,
            "realized_pnl": 0.0,
            "fees": 0.25,
        }
    ]


def test_parse_switch_reads_the_real_describe_format() -> None:
    text = switch_text(KillScope.SYMBOL, "BTC/USDT:USDT", "venue incident (ticket 42): halt", "operator:alice", T0 + H)
    p = parse_switch(text)
    assert p is not None
    assert (p.scope, p.target, p.reason, p.set_by, p.expires_at_ns) == (
        "symbol",
        "BTC/USDT:USDT",
        "venue incident (ticket 42): halt",
        "operator:alice",
        T0 + H,
    )
    g = parse_switch(switch_text(KillScope.GLOBAL, "*", "maintenance", "operator:bob", None))
    assert g is not None and g.target == "*" and g.expires_at_ns is None
    assert parse_switch("set_limit: 1 -> 2") is None


def test_kill_switches_from_audit_and_breaker_alert_expire_and_release() -> None:
    st = DashboardState()
    op = switch_text(KillScope.GLOBAL, "*", "maintenance window", "operator:alice", T0 + 2 * H)
    st.apply(audit(T0, "kill_switch_on", (f"engaged {op}",)))
    br = switch_text(KillScope.GLOBAL, "*", "volatility 7.1% > 5.0% on BTC/USDT", "breaker:volatility", T0 + H)
    st.apply(
        Alert.new(
            ts_init=T0,
            ts_event=T0,
            severity=Severity.WARNING,
            source="risk:paper",
            code="kill_switch_engaged",
            message=f"kill switch engaged: {br}",
            dedupe_key="k",
            labels={},
        )
    )
    # a rejected (forged) command changes nothing
    st.apply(audit(T0, "kill_switch_off", (f"released {op}",), ControlOutcome.REJECTED, "bad_signature", "n2"))
    ks = st.view(T0)["risk"]["kill_switches"]
    assert [(k["set_by"], k["reason"], k["expires_at_ns"]) for k in ks] == [
        ("breaker:volatility", "volatility 7.1% > 5.0% on BTC/USDT", T0 + H),
        ("operator:alice", "maintenance window", T0 + 2 * H),
    ]
    st.apply(snapshot(T0 + H, 100_000.0))  # event time reaches the breaker's expiry
    assert [k["set_by"] for k in st.view(T0)["risk"]["kill_switches"]] == ["operator:alice"]
    st.apply(audit(T0 + H + 1, "kill_switch_off", (f"released {op}",), nonce="n3"))
    v = st.view(T0)["risk"]
    assert v["kill_switches"] == []
    assert [c["outcome"] for c in v["control"]] == ["accepted", "rejected", "accepted"]
    assert v["alerts"][0]["code"] == "kill_switch_engaged"


def test_operator_switch_expires_on_the_wall_clock_breaker_on_market_time() -> None:
    """A recorded market (event time years back) and an operator's TTL switch (wall time) side by side."""
    st = DashboardState()
    market = T0 - 1000 * H
    st.apply(snapshot(market, 100_000.0))
    op = switch_text(KillScope.GLOBAL, "*", "drill", "operator:alice", T0 + 60 * S)
    st.apply(audit(T0, "kill_switch_on", (f"engaged {op}",)))
    assert st.event_now_ns == market, "a command does not move market time"
    assert [k["clock"] for k in st.view(T0 + 59 * S)["risk"]["kill_switches"]] == ["wall"]
    st.apply(snapshot(market + H, 100_000.0))
    assert st.view(T0 + 60 * S)["risk"]["kill_switches"] == [], "expired on the wall clock passed in"


def test_prices_latest_closed_bar_per_stream_with_change_and_revisions() -> None:
    st = DashboardState()
    assert st.apply(builders.bar(open_time=T0, open=100.0, close=101.0))
    assert not st.apply(builders.bar(open_time=T0 + H, open=101.0, close=99.0, is_closed=False)), "forming bar"
    assert st.apply(builders.bar(open_time=T0 + H, open=101.0, close=103.02))
    assert not st.apply(builders.bar(open_time=T0, open=100.0, close=50.0, revision=1)), "older bar"
    assert st.apply(builders.bar(open_time=T0 + H, open=101.0, close=104.04, revision=1))
    st.apply(builders.bar(symbol="ETH/USDT", open_time=T0, open=10.0))
    prices = st.view(T0)["prices"]
    assert [(p["symbol"], p["close"]) for p in prices] == [("BTC/USDT", 104.04), ("ETH/USDT", 10.0)]
    assert prices[0]["change"] == pytest.approx(104.04 / 101.0 - 1) and prices[0]["ts_ns"] == T0 + 2 * H
    assert prices[1]["change"] is None, "no previous bar: not observed, not 0"
    assert st.event_now_ns == T0 + 2 * H


def test_orders_fills_counted_once_newest_first() -> None:
    st = DashboardState()
    st.apply(builders.update(status=OrderStatus.NEW, ts=T0))
    filled = builders.update(status=OrderStatus.FILLED, filled=0.1, avg_fill_price=100.5, ts=T0 + 1)
    st.apply(filled)
    st.apply(filled)  # redelivered
    st.apply(builders.fill(price=100.5, fee=0.04, ts=T0 + 1))
    st.apply(builders.fill(side=Side.SELL, fill_id="f2", client_order_id="c2", price=101.0, fee=0.05, ts=T0 + 2))
    o = st.view(T0)["orders"]
    assert o["statuses"]["new"] == 1 and o["statuses"]["filled"] == 1 and o["statuses"]["rejected"] == 0
    assert o["fills"] == 2 and o["fees"] == {"USDT": pytest.approx(0.09)}
    assert [(f["side"], f["price"]) for f in o["fills_recent"]] == [("sell", 101.0), ("buy", 100.5)]
    assert o["recent"][0]["status"] == "filled" and o["recent"][0]["avg_fill_price"] == 100.5


def test_rejected_control_commands_listed_apart_and_change_nothing() -> None:
    st = DashboardState()
    op = switch_text(KillScope.GLOBAL, "*", "forged", "operator:mallory", None)
    st.apply(audit(T0, "kill_switch_on", (f"engaged {op}",), ControlOutcome.REJECTED, "unknown_key", "n9"))
    st.apply(audit(T0 + 1, "set_limit", ()))
    r = st.view(T0)["risk"]
    assert r["kill_switches"] == []
    assert r["control_rejected"] == 1
    assert [(c["reason"], c["key_id"], c["control_event_id"]) for c in r["control_rejected_recent"]] == [
        ("unknown_key", "ops1", "ce-n9")
    ]
    assert [c["outcome"] for c in r["control"]] == ["accepted", "rejected"]


def test_serving_models_and_latest_rollout_decision() -> None:
    st = DashboardState()
    st.apply(model(T0, "1", ModelStage.ACTIVE))
    st.apply(model(T0 + H, "2", ModelStage.CANARY_10))
    st.apply(rollout(T0 + H, "2", ModelStage.SHADOW, ModelStage.CANARY_10, RolloutAction.MANUAL_PROMOTE))
    v = st.view(T0)
    assert [(m["version"], m["stage"], m["capital_fraction"]) for m in v["serving"]] == [
        ("1", "active", 1.0),
        ("2", "canary_10", 0.1),
    ]
    # one `--to active` command: a decision per stage, all stamped alike, published in ladder order
    ladder = (ModelStage.REGISTERED, ModelStage.SHADOW, ModelStage.CANARY_10, ModelStage.CANARY_30, ModelStage.ACTIVE)
    for a, b in itertools.pairwise(ladder):
        st.apply(rollout(T0 + H + 1, "3", a, b, RolloutAction.MANUAL_PROMOTE))
    assert [(d["version"], d["to_stage"]) for d in st.view(T0)["rollouts"]] == [("3", "active")]
    st.apply(model(T0 + 2 * H, "2", ModelStage.ROLLED_BACK))
    st.apply(rollout(T0 + 2 * H, "2", ModelStage.CANARY_10, ModelStage.ROLLED_BACK, RolloutAction.MANUAL_ROLLBACK))
    v = st.view(T0)
    assert [m["version"] for m in v["serving"]] == ["1"]
    assert [(d["version"], d["to_stage"], d["action"]) for d in v["rollouts"]] == [
        ("2", "rolled_back", "manual_rollback")
    ]
    assert [d["action"] for d in v["rollout_recent"]][:2] == ["manual_rollback", "manual_promote"]


def test_trading_flow_from_the_journal_kept_when_a_read_fails() -> None:
    st = DashboardState()
    assert st.view(T0)["trading"] == {"accounts": [], "checked_at_ns": None, "error": None}
    row = TradingFlowRow(
        account="paper",
        signals_in=10,
        intents_out=3,
        held=1,
        verdicts={"approved": 2, "rejected": 1},
        skipped=[{"reason": "below_entry_threshold", "n": 5}, {"reason": "edge_below_cost", "n": 1}],
        denied=[{"reason": "kill_switch:global:*", "n": 1}],
    )
    v0 = st.version
    assert st.set_trading_flow([row], T0)
    assert not st.set_trading_flow([row], T0 + S), "same rows: no change"
    assert st.set_trading_flow(None, T0 + 2 * S, "TimeoutError")
    t = st.view(T0)["trading"]
    assert t["error"] == "TimeoutError" and t["checked_at_ns"] == T0 + S, "the last rows stay, marked stale"
    a = t["accounts"][0]
    assert (a["signals_in"], a["intents_out"], a["held"]) == (10, 3, 1)
    assert [r["reason"] for r in a["skipped"]] == ["below_entry_threshold", "edge_below_cost"]
    assert st.version == v0 + 2


def test_gates_latest_per_key_value_none_is_not_zero() -> None:
    st = DashboardState()
    st.apply(gate(T0, GateStatus.INSUFFICIENT_OBSERVATION, None, ("observations 12 < 30",)))
    g = st.view(T0)["gates"][0]
    assert g["value"] is None and g["status"] == "insufficient_observation"
    assert g["blockers"] == ["observations 12 < 30"]
    st.apply(gate(T0 + H, GateStatus.FAILED, 0.0, ("sharpe 0.0 < 1.5",)))
    g = st.view(T0)["gates"][0]
    assert g["value"] == 0.0 and g["status"] == "failed"
    assert orjson.loads(orjson.dumps(st.view(T0)))["gates"][0]["value"] == 0.0


def test_models_stage_per_version_and_dead_letters_counted_once() -> None:
    st = DashboardState()
    st.apply(model(T0, "1", ModelStage.ACTIVE))
    st.apply(model(T0 + H, "2", ModelStage.SHADOW))
    st.apply(model(T0 + 2 * H, "2", ModelStage.CANARY_10))
    st.apply(model(T0 + 3 * H, "1", ModelStage.ROLLED_BACK))
    assert [(m["version"], m["stage"]) for m in st.view(T0)["models"]] == [("1", "rolled_back"), ("2", "canary_10")]
    for d in (dead(1, "invalid_json"), dead(1, "invalid_json"), dead(2, "invalid_json"), dead(3, "unknown_field")):
        st.apply(d)
    h = st.view(T0)["health"]
    assert h["dead_letters_total"] == 3
    assert [(d["reason"], d["count"]) for d in h["dead_letters"]] == [("invalid_json", 2), ("unknown_field", 1)]


def test_rates_none_until_time_passes_then_per_second() -> None:
    st = DashboardState()
    assert st.rates(T0)["signals"] is None
    st.sample(T0)
    st.consumed("signals", 50)
    st.sample(T0 + 5 * S)
    st.consumed("signals", 50)
    r = st.rates(T0 + 10 * S)
    assert r["signals"] == pytest.approx(10.0) and r["deadletter"] == 0.0
    st.set_database(False, "ConnectionRefusedError", T0)
    st.set_broker(None, T0)
    h = st.view(T0 + 10 * S)["health"]
    assert h["database"]["status"] == "down" and h["broker"]["status"] is None


# ---------------------------------------------------------------------------
# hub
# ---------------------------------------------------------------------------


async def test_hub_drops_slow_client_without_blocking_and_primes_new_ones() -> None:
    hub = SseHub(queue_size=2)
    fast, slow = hub.connect(), hub.connect()
    assert fast is not None and slow is not None
    for i in range(5):
        assert hub.publish(sse_frame(b"%d" % i)) == (1 if i == 2 else 0)
        await fast.queue.get()  # the fast client keeps up
    assert slow.dropped and not fast.dropped and hub.dropped_total == 1 and hub.client_count == 1
    assert SseHub.is_close(await slow.queue.get())
    late = hub.connect()
    assert late is not None and await late.queue.get() == sse_frame(b"4")
    hub.close_all()
    assert hub.client_count == 0 and SseHub.is_close(await fast.queue.get())


async def test_hub_refuses_beyond_max_clients() -> None:
    hub = SseHub(queue_size=1, max_clients=2)
    assert hub.connect() is not None and hub.connect() is not None
    assert hub.connect() is None
    await asyncio.sleep(0)


def test_sse_frame_format() -> None:
    assert sse_frame(b'{"a":1}', event_id=7) == b'event: snapshot\nid: 7\ndata: {"a":1}\n\n'


# ---------------------------------------------------------------------------
# token, page
# ---------------------------------------------------------------------------


def test_token_from_env_or_file_and_checks(tmp_path: Path) -> None:
    assert load_token({}) is None
    tok = "s3cret-dashboard-token-123"
    assert load_token({"TRADEFLOW_DASHBOARD_TOKEN": tok}) == tok.encode()
    f = tmp_path / "tok"
    f.write_text(tok + "\n")
    assert load_token({"TRADEFLOW_DASHBOARD_TOKEN_FILE": str(f)}) == tok.encode()
    with pytest.raises(ValueError, match="not both"):
        load_token({"TRADEFLOW_DASHBOARD_TOKEN": tok, "TRADEFLOW_DASHBOARD_TOKEN_FILE": str(f)})
    with pytest.raises(ValueError, match="at least 16"):
        load_token({"TRADEFLOW_DASHBOARD_TOKEN": "short"})
    with pytest.raises(ValueError) as exc:
        load_token({"TRADEFLOW_DASHBOARD_TOKEN_FILE": str(tmp_path / "missing")})
    assert tok not in str(exc.value)
    t = tok.encode()
    assert authorized(None, {}, {})
    assert not authorized(t, {}, {})
    assert not authorized(t, {"Authorization": "Bearer wrong"}, {})
    assert not authorized(t, {}, {"token": tok[:-1]})
    assert authorized(t, {"Authorization": f"Bearer {tok}"}, {})
    assert authorized(t, {}, {"token": tok})
    settings = DashboardSettings.from_env({"TRADEFLOW_DASHBOARD_TOKEN": tok})
    assert tok not in repr(settings) and "token=set" in repr(settings)


def test_token_set_but_blank_then_refused_not_an_open_dashboard(tmp_path: Path) -> None:
    for env in (
        {"TRADEFLOW_DASHBOARD_TOKEN": ""},
        {"TRADEFLOW_DASHBOARD_TOKEN": "   "},
        {"TRADEFLOW_DASHBOARD_TOKEN_FILE": ""},
    ):
        with pytest.raises(ValueError, match="at least 16"):
            load_token(env)
    blank = tmp_path / "blank"
    blank.write_text("\n")
    with pytest.raises(ValueError, match="TRADEFLOW_DASHBOARD_TOKEN_FILE"):
        load_token({"TRADEFLOW_DASHBOARD_TOKEN_FILE": str(blank)})


def test_dashboard_settings_malformed_then_error_names_the_variable() -> None:
    with pytest.raises(ValueError, match="TRADEFLOW_DASHBOARD_QUEUE"):
        DashboardSettings.from_env({"TRADEFLOW_DASHBOARD_QUEUE": "eight"})
    with pytest.raises(ValueError, match="TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS"):
        DashboardSettings.from_env({"TRADEFLOW_DASHBOARD_MIN_INTERVAL_MS": "20000"})


def test_page_is_self_contained() -> None:
    page = render_page()
    assert "/*__APP_CSS__*/" not in page and "//__APP_JS__" not in page
    assert "EventSource" in page and "--accent" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no CDN or remote asset"
    assert ".innerHTML" not in page and "insertAdjacentHTML" not in page, "values are rendered as text only"
    for section in ("health", "signals", "portfolio", "risk", "gates", "models", "kill-switches"):
        assert f'id="{section}"' in page
