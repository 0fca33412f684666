"""``tradeflow gates`` on the real broker and PostgreSQL.

Backtest runs, metrics and fills are rows in the migration-007 tables
(``storage/migrations/007_backtests.sql``); paper fills and the paper/live
accounts' order updates are real ``Fill`` / ``OrderUpdate`` records published to
the broker and stored by the real sink. The CLI (a subprocess, as an operator or
cron runs it) evaluates, publishes ``GateResult`` records that the sink stores,
and its exit code is what a script would trust. Each false-green scenario
(docs/gates.md#evidence) has its own track.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from agents.execution.interface import client_order_id_for
from ops.embedded.broker import EmbeddedBroker
from runtime.publish import RecordPublisher
from tests import builders
from tests.conftest import ROOT, Procs, wait_until
from topics.records import Fill, OrderStatus, OrderUpdate, Side

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
#: The backtest simulated no reject in any run (``reject_rate`` 0.0): information only.
GOOD = {"sharpe_daily": 2.2, "max_drawdown": 0.04, "reject_rate": 0.0, "pnl": 120.0}
READY_TRACK, BAD_TRACK = "trend-btc", "meanrev-eth"
#: A bad run superseded without a replacement (BTC, like the ready track), and a track with too few real orders.
SUPERSEDED_TRACK, FEW_TRACK = "swing-btc", "breakout-sol"

#: The contract DDL (schema.md), used only while migration 007 does not exist yet.
CONTRACT_DDL = """
CREATE TABLE backtest_runs(run_id text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(),
  source text NOT NULL CHECK (source IN ('prod','maintenance','smoke','async_test')),
  status text NOT NULL CHECK (status IN ('running','succeeded','failed','superseded')), error text,
  track text NOT NULL, symbols text[] NOT NULL, range_start timestamptz, range_end timestamptz,
  config jsonb NOT NULL, config_hash text NOT NULL, lineage jsonb NOT NULL, decision_hash text,
  superseded_by text, supersede_reason text, finished_at timestamptz);
CREATE TABLE backtest_fills(run_id text REFERENCES backtest_runs, seq int, symbol text, side text, ts timestamptz,
  quantity double precision, price double precision, notional double precision, fee double precision,
  slippage_cost double precision, impact_cost double precision, client_order_id text, PRIMARY KEY (run_id, seq));
CREATE TABLE backtest_equity(run_id text, ts timestamptz, equity double precision, drawdown double precision,
  PRIMARY KEY (run_id, ts));
CREATE TABLE backtest_metrics(run_id text, symbol text, metric text, value double precision,
  PRIMARY KEY (run_id, symbol, metric));
"""


async def ensure_backtest_tables(conn: asyncpg.Connection) -> None:
    if await conn.fetchval("SELECT to_regclass('backtest_runs') IS NULL"):
        await conn.execute(CONTRACT_DDL)


async def insert(conn: asyncpg.Connection, table: str, row: dict[str, Any], extras: dict[str, Any]) -> None:
    """Insert the contract columns plus any NOT NULL extra column the real migration added."""
    cols = {
        r["column_name"]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1 AND is_nullable = 'NO' "
            "AND column_default IS NULL",
            table,
        )
    }
    row = {**row, **{k: v for k, v in extras.items() if k in cols and k not in row}}
    names = list(row)
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))})",
        *row.values(),
    )


async def add_run(
    conn: asyncpg.Connection,
    run_id: str,
    track: str,
    *,
    age_days: float,
    metrics: dict[str, Any],
    source: str = "prod",
    status: str = "succeeded",
    superseded_by: str | None = None,
    symbol: str = "BTC/USDT",
) -> None:
    finished = AS_OF - timedelta(days=age_days)
    await insert(
        conn,
        "backtest_runs",
        {
            "run_id": run_id,
            "created_at": finished - timedelta(minutes=5),
            "source": source,
            "status": status,
            "error": "replay crashed: bad bar" if status == "failed" else None,
            "track": track,
            "symbols": [symbol],
            "range_start": AS_OF - timedelta(days=35),
            "range_end": AS_OF,
            "config": json.dumps({"request": {"initial_cash": 100_000.0}}),
            "config_hash": "cfg",
            "lineage": "{}",
            "superseded_by": superseded_by,
            "supersede_reason": "stale data" if status == "superseded" else None,
            "finished_at": finished,
        },
        {"request_hash": run_id.split("#")[0]},
    )
    for name, value in metrics.items():
        await conn.execute(
            "INSERT INTO backtest_metrics (run_id, symbol, metric, value) VALUES ($1, '*', $2, $3)", run_id, name, value
        )


async def add_runs(conn: asyncpg.Connection, prefix: str, track: str, n: int = 20, **kw: Any) -> None:
    """``n`` good valid runs of distinct requests, finished 1, 6, 11 ... days before AS_OF."""
    for i in range(n):
        await add_run(conn, f"{prefix}-{i}", track, age_days=1.0 + 5 * i, metrics=GOOD, **kw)


def real_orders(
    n: int, rejected: int, *, symbol: str, adapter: str, prefix: str, reason: str = "venue_error"
) -> list[OrderUpdate]:
    """``n`` orders of a paper/live account over the last 5 days: the first ``rejected`` rejected
    by the venue, the others acknowledged then filled."""
    out: list[OrderUpdate] = []
    for i in range(n):
        ts = int((AS_OF - timedelta(days=5) + timedelta(minutes=10 * i)).timestamp()) * 10**9
        coid = client_order_id_for(f"{prefix}-intent-{i}")

        def update(
            status: OrderStatus, at: int, why: str | None = None, filled: float = 0.0, coid: str = coid
        ) -> OrderUpdate:
            return builders.update(
                status=status,
                reason=why,
                ts=at,
                client_order_id=coid,
                symbol=symbol,
                adapter=adapter,
                quantity=0.01,
                filled=filled,
                avg_fill_price=100.0 if filled else None,
            )

        if i < rejected:
            out.append(update(OrderStatus.REJECTED, ts, reason))
        else:
            out += [update(OrderStatus.ACKNOWLEDGED, ts), update(OrderStatus.FILLED, ts + 10**9, filled=0.01)]
    return out


def round_trips(n: int) -> list[tuple[str, str, datetime, float, float]]:
    """(client order id, side, time, reference price, quantity): n buy/sell pairs over the last 5 days."""
    out = []
    for i in range(2 * n):
        coid = client_order_id_for(f"gates-test-intent-{i}")
        out.append(
            (
                coid,
                "buy" if i % 2 == 0 else "sell",
                AS_OF - timedelta(days=5) + timedelta(hours=4 * i),
                30_000.0 + 50.0 * i,
                0.05,
            )
        )
    return out


async def add_backtest_fills(conn: asyncpg.Connection, run_id: str, orders: list[Any]) -> None:
    for seq, (coid, side, ts, ref, q) in enumerate(orders):
        d = 1 if side == "buy" else -1
        price = ref * (1 + d * 3e-4)  # 2 bps slippage + 1 bp impact
        await insert(
            conn,
            "backtest_fills",
            {
                "run_id": run_id,
                "seq": seq,
                "symbol": "BTC/USDT",
                "side": side,
                "ts": ts,
                "quantity": q,
                "price": price,
                "notional": q * price,
                "fee": q * price * 1e-3,
                "slippage_cost": q * ref * 2e-4,
                "impact_cost": q * ref * 1e-4,
                "client_order_id": coid,
            },
            {"ts_ns": int(ts.timestamp()) * 10**9, "fill_event_id": f"{run_id}-{seq}"},
        )


def paper_fills(orders: list[Any]) -> list[Fill]:
    out = []
    for coid, side, ts, ref, q in orders:
        d = 1 if side == "buy" else -1
        price = ref * (1 + d * 3.5e-4)  # paper: 2 bps slippage + 1.5 bps impact
        ns = int((ts + timedelta(minutes=1)).timestamp()) * 10**9
        out.append(
            builders.fill(
                side=Side(side),
                quantity=q,
                price=price,
                fee=q * price * 1e-3,
                client_order_id=coid,
                fill_id=f"{coid[:10]}-0",
                slippage_bps=2.0,
                impact_bps=1.5,
                ts=ns,
            )
        )
    return out


async def gates(
    *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ops.cli", "gates", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, rows, proc.stdout + proc.stderr


def by_metric(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["metric"]: r for r in rows}


async def test_ready_track_passes_bad_tracks_fail_and_status_reads_postgres(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_backtest_tables(conn)
        orders = round_trips(12)
        # -- the ready track: 20 good runs (the default min_valid_runs), matched paper fills,
        #    300 real paper orders with 1 venue reject (0.33 % < 1 %)
        await add_runs(conn, "ready", READY_TRACK)
        await add_backtest_fills(conn, "ready-0", orders)
        # Never evidence, however bad: a run superseded by a newer valid run, failed and non-prod runs.
        terrible = {"sharpe_daily": -3.0, "max_drawdown": 0.5, "reject_rate": 0.3}
        await add_run(
            conn,
            "ready-superseded",
            READY_TRACK,
            age_days=1.5,
            metrics=terrible,
            status="superseded",
            superseded_by="ready-0",
        )
        await add_run(conn, "ready-failed", READY_TRACK, age_days=0.4, metrics=terrible, status="failed")
        await add_run(conn, "ready-smoke", READY_TRACK, age_days=0.3, metrics=terrible, source="smoke")
        # -- the bad track: 20 runs whose newest is good hide an older one with a negative Sharpe and
        #    a drawdown breach; every backtest simulated 0 rejects, the live account rejected 2 %
        await add_runs(conn, "bad", BAD_TRACK, symbol="ETH/USDT")
        await add_run(
            conn,
            "bad-hidden",
            BAD_TRACK,
            age_days=3.0,
            metrics={"sharpe_daily": -0.7, "max_drawdown": 0.15, "reject_rate": 0.0},
            symbol="ETH/USDT",
        )
        # -- a bad run superseded without a replacement; 20 good older runs must not decide alone
        await add_runs(conn, "sup", SUPERSEDED_TRACK)
        await add_run(
            conn,
            "sup-withdrawn",
            SUPERSEDED_TRACK,
            age_days=0.5,
            metrics={"sharpe_daily": -1.5, "max_drawdown": 0.3, "reject_rate": 0.0},
            status="superseded",
        )
        # -- 20 good runs, but only 50 real orders (0 rejected): too few to judge a 1 % rate
        await add_runs(conn, "few", FEW_TRACK, symbol="SOL/USDT")

        procs.sink(broker.bootstrap, namespace, dsn, "--topics", "fills", "orders.updates", "gates.results")
        updates = [
            *real_orders(300, 1, symbol="BTC/USDT", adapter="paper", prefix="btc"),
            *real_orders(
                300, 6, symbol="ETH/USDT", adapter="ccxt:binance:spot", prefix="eth", reason="insufficient_funds"
            ),
            *real_orders(50, 0, symbol="SOL/USDT", adapter="paper", prefix="sol"),
            # a backtest-like adapter is no paper/live execution: its rejects never count
            *real_orders(20, 20, symbol="BTC/USDT", adapter="sim", prefix="sim"),
        ]
        async with RecordPublisher(broker.bootstrap, namespace) as pub:
            await pub.publish(paper_fills(orders))
            await pub.publish(updates)

        async def stored() -> bool:
            fills = await conn.fetchval("SELECT count(*) FROM ev_fills")
            n_updates = await conn.fetchval("SELECT count(*) FROM ev_order_updates")
            return bool(fills == len(orders) and n_updates == len(updates))

        await wait_until(stored, 60, "paper fills and order updates in Postgres", watch=procs)

        infra = ["--dsn", dsn, "--bootstrap", broker.bootstrap, "--namespace", namespace, "--as-of", AS_OF.isoformat()]
        (
            (rc_ok, ok, out_ok),
            (rc_bad, bad, out_bad),
            (rc_sup, sup, out_sup),
            (rc_few, few, out_few),
        ) = await asyncio.gather(
            *(
                gates("evaluate", "--track", t, "--json", *infra)
                for t in (READY_TRACK, BAD_TRACK, SUPERSEDED_TRACK, FEW_TRACK)
            )
        )

        # -- the ready track: everything passes, exit 0 ----------------------------------------
        assert rc_ok == 0, out_ok
        g = by_metric(ok)
        assert g["valid_runs"]["status"] == "passed" and g["valid_runs"]["value"] == 20.0
        assert g["valid_runs"]["blockers"] == [] and g["valid_runs"]["threshold"] == 20.0
        assert g["sharpe_daily"]["value"] == 2.2 and g["sharpe_daily"]["observations"] == 20
        rej = g["reject_rate"]
        assert (rej["gate"], rej["status"], rej["observations"]) == ("execution", "passed", 300)
        assert rej["value"] == pytest.approx(1 / 300)
        for window in ("7d", "30d"):
            p = g[f"relative_deviation_{window}:BTC/USDT"]
            assert p["status"] == "passed" and p["observations"] == 24 and 0 < p["value"] <= 0.10
            att = p["attribution"]
            assert att["impact"] < 0 and sum(
                att[k] for k in ("quantity", "price", "slippage", "impact", "fee")
            ) == pytest.approx(att["gap"], abs=1e-6)
            # the return floor: 2 % of the run's 100,000 initial cash is the denominator here
            assert p["value"] == pytest.approx(abs(att["gap"]) / 2_000.0)

        # -- the bad track: the hidden run fails both hard metrics, real rejects fail execution ---
        assert rc_bad == 1, out_bad
        b = by_metric(bad)
        assert (b["sharpe_daily"]["status"], b["sharpe_daily"]["value"]) == ("failed", -0.7)
        assert (b["max_drawdown"]["status"], b["max_drawdown"]["value"]) == ("failed", 0.15)
        assert "sharpe_daily = -0.7 fails >= 1.5 (run bad-hidden)" in b["sharpe_daily"]["blockers"]
        rej = b["reject_rate"]
        assert (rej["gate"], rej["status"], rej["value"], rej["observations"]) == ("execution", "failed", 0.02, 300)
        assert "rejects by reason: insufficient_funds 6" in rej["blockers"]
        ready = b["valid_runs"]
        assert ready["status"] == "failed" and ready["value"] == 20.0  # 21 valid runs, 20 pass every hard metric
        for gate in ("hard_metrics/sharpe_daily", "hard_metrics/max_drawdown", "execution/reject_rate"):
            assert any(x.startswith(f"failed gate: {gate}") for x in ready["blockers"]), gate
        assert b["relative_deviation_30d:ETH/USDT"]["status"] == "insufficient_observation"
        assert b["relative_deviation_30d:ETH/USDT"]["value"] is None

        # -- the withdrawn run: not a pass, and the blocker says why ------------------------------
        assert rc_sup == 1, out_sup
        s = by_metric(sup)
        for metric in ("sharpe_daily", "max_drawdown"):
            assert s[metric]["status"] == "insufficient_observation", s[metric]
            assert any(
                x.startswith("superseded run sup-withdrawn withdrew its evidence") for x in s[metric]["blockers"]
            )
        assert s["valid_runs"]["status"] == "insufficient_observation"

        # -- too few real orders: insufficient, not a pass on 0 rejects ---------------------------
        assert rc_few == 1, out_few
        f = by_metric(few)
        assert (f["reject_rate"]["status"], f["reject_rate"]["value"]) == ("insufficient_observation", 0.0)
        assert f["reject_rate"]["blockers"][0].startswith("insufficient orders: 50 < 300")
        assert f["sharpe_daily"]["status"] == "passed" and f["valid_runs"]["status"] == "insufficient_observation"

        # -- results reach Postgres through the topic and the sink --------------------------------
        n_results = len(ok) + len(bad) + len(sup) + len(few)

        async def results_stored() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM ev_gate_results") == n_results)

        await wait_until(results_stored, 60, "gate results in ev_gate_results", watch=procs)
        status_rows = await conn.fetch("SELECT * FROM gate_status WHERE track = $1", BAD_TRACK)
        assert {(r["gate"], r["metric"]): r["status"] for r in status_rows}[("execution", "reject_rate")] == "failed"
        assert {r["metric"]: r["value"] for r in status_rows}["relative_deviation_7d:ETH/USDT"] is None
        assert await conn.fetchval("SELECT count(*) FROM gate_parity_attribution WHERE track = $1", READY_TRACK) == 2
        assert await conn.fetchval("SELECT count(*) FROM gate_configs") == 1

        rc, _, out = await gates("status", "--track", READY_TRACK, "--dsn", dsn)
        assert rc == 0 and "passed" in out and "attribution:" in out, out
        rc, rows, out = await gates("status", "--track", FEW_TRACK, "--dsn", dsn, "--json")
        assert rc == 1 and by_metric(rows)["reject_rate"]["value"] == 0.0, out

        # -- same evaluation again: same event ids, no new row -------------------------------------
        rc_again, again, _ = await gates("evaluate", "--track", READY_TRACK, "--json", *infra)
        assert rc_again == 0 and [r["result_id"] for r in again] == [r["result_id"] for r in ok]
        # ... and without --track every track with runs is evaluated; one not ready -> exit 1
        rc_all, every, _ = await gates("evaluate", "--json", *infra)
        assert rc_all == 1 and {r["track"] for r in every} == {READY_TRACK, BAD_TRACK, SUPERSEDED_TRACK, FEW_TRACK}
        assert {r["result_id"] for r in every} == {r["result_id"] for r in ok + bad + sup + few}

        # -- a looser evidence rule only through config, recorded in the result -------------------
        rc_env, loose, out = await gates(
            "evaluate", "--track", FEW_TRACK, "--json", *infra, env={"TRADEFLOW_GATES_REJECT_MIN_ORDERS": "50"}
        )
        assert rc_env == 1 and by_metric(loose)["reject_rate"]["status"] == "passed", out  # parity: not ready
        assert by_metric(loose)["reject_rate"]["config_hash"] != f["reject_rate"]["config_hash"]
        rc_strict, strict, out = await gates(
            "evaluate", "--track", READY_TRACK, "--json", "--set", "sharpe_daily=3.0", *infra
        )
        assert rc_strict == 1, out
        s = by_metric(strict)["sharpe_daily"]
        assert (s["status"], s["threshold"]) == ("failed", 3.0) and s["config_hash"] != g["sharpe_daily"]["config_hash"]
        assert await conn.fetchval("SELECT count(*) FROM gate_configs") == 3

        async def strict_stored() -> bool:
            n = n_results + len(loose) + len(strict)
            return bool(await conn.fetchval("SELECT count(*) FROM ev_gate_results") == n)

        await wait_until(strict_stored, 60, "later results stored (re-run added none)", watch=procs)
        rc, _, out = await gates("status", "--track", READY_TRACK, "--dsn", dsn)
        assert rc == 1 and "sharpe_daily = 2.2 (needs >= 3)" in out, out
    finally:
        await conn.close()


async def test_usage_and_infrastructure_errors_have_their_exit_codes(
    broker: EmbeddedBroker, namespace: str, dsn: str
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_backtest_tables(conn)
    finally:
        await conn.close()
    infra = ["--dsn", dsn, "--namespace", namespace]
    results = await asyncio.gather(
        gates("evaluate", "--track", "x", "--lookback", "3w", *infra),
        gates("evaluate", "--track", "x", "--set", "sharpe_daily=soon", *infra),
        gates("evaluate", "--track", "x", "--bootstrap", "127.0.0.1:1", "--timeout-s", "5", *infra),
        gates("evaluate", "--track", "x", "--dsn", "postgresql://postgres@127.0.0.1:1/none", "--timeout-s", "5"),
        gates("status", "--track", "never-evaluated", *infra),
        gates("evaluate", "--track", "x", *infra, env={"TRADEFLOW_GATES_LOOKBACK": "30"}),
    )
    (
        (rc_dur, _, e_dur),
        (rc_set, _, e_set),
        (rc_broker, _, e_broker),
        (rc_db, _, e_db),
        (rc_empty, _, e_empty),
        (
            rc_env,
            _,
            e_env,
        ),
    ) = results
    assert rc_env == 2 and "TRADEFLOW_GATES_LOOKBACK" in e_env
    assert rc_dur == 2 and "duration" in e_dur
    assert rc_set == 2 and "sharpe_daily must be a number" in e_set
    assert rc_broker == 3 and "broker unreachable" in e_broker
    assert rc_db == 3 and "database unreachable" in e_db
    assert rc_empty == 1 and "not evaluated is not ready" in e_empty


async def test_monitor_only_vc_track_then_failures_reported_and_exit_0_liquid_exits_1(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    """The vc track (agents/tracks.py) is monitor-only: its gates are evaluated, published and printed,
    failures included, and never set exit 1; the same evidence on a liquid (SOL) track exits 1."""
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_backtest_tables(conn)
        bad = {"sharpe_daily": -0.4, "max_drawdown": 0.2, "reject_rate": 0.0}
        for track, symbol in (("vc", "SUI/USDT"), ("tanh-sizer:vc-model", "ARB/USDT"), ("liquid", "SOL/USDT")):
            await add_runs(conn, track, track, n=3, symbol=symbol)
            await add_run(conn, f"{track}-bad", track, age_days=0.5, metrics=bad, symbol=symbol)
        await add_runs(conn, "sol", "tanh-sizer:sol-model", n=3, symbol="SOL/USDT")
    finally:
        await conn.close()
    procs.sink(broker.bootstrap, namespace, dsn, "--topics", "gates.results")
    infra = ["--dsn", dsn, "--bootstrap", broker.bootstrap, "--namespace", namespace, "--as-of", AS_OF.isoformat()]
    (rc_vc, vc, out_vc), (rc_text, _, text), (rc_sui, sui, out_sui), (rc_liq, liq, out_liq) = await asyncio.gather(
        gates("evaluate", "--track", "vc", "--json", *infra),
        gates("evaluate", "--track", "vc", *infra),
        gates("evaluate", "--track", "tanh-sizer:vc-model", "--json", *infra),
        gates("evaluate", "--track", "liquid", "--json", *infra),
    )

    # -- vc by name: failures reported (published, printed), exit 0 ------------------------------
    assert rc_vc == 0, out_vc
    v = by_metric(vc)
    assert (v["sharpe_daily"]["status"], v["sharpe_daily"]["value"]) == ("failed", -0.4)
    assert v["max_drawdown"]["status"] == "failed" and v["valid_runs"]["status"] != "passed"
    assert all(r["monitor_only"] for r in vc)
    assert rc_text == 0 and "failed" in text and "track vc: NOT READY" in text and "monitor-only" in text, text
    # -- any track whose runs are all on vc symbols is monitor-only too ----------------------------
    assert rc_sui == 0 and by_metric(sui)["sharpe_daily"]["status"] == "failed", out_sui
    # -- the liquid track: the same failures exit 1 ------------------------------------------------
    assert rc_liq == 1, out_liq
    assert by_metric(liq)["sharpe_daily"]["status"] == "failed" and not any(r["monitor_only"] for r in liq)
    # -- every track at once: the liquid failure decides, the vc failures do not ------------------
    rc_all, every, out_all = await gates("evaluate", "--json", *infra)
    assert rc_all == 1 and {r["track"] for r in every} == {
        "vc",
        "tanh-sizer:vc-model",
        "liquid",
        "tanh-sizer:sol-model",
    }, out_all
    rc_vc_env, _, out_env = await gates("evaluate", *infra, env={"TRADEFLOW_GATES_TRACKS": "vc,tanh-sizer:vc-model"})
    assert rc_vc_env == 0 and "track tanh-sizer:vc-model: NOT READY" in out_env, out_env

    # -- status reads the stored results: the track named vc does not set exit 1 ------------------
    async def stored() -> bool:
        c = await asyncpg.connect(dsn)
        try:
            n = "SELECT count(DISTINCT track) FROM gate_current WHERE track IN ('vc', 'liquid')"
            return bool(await c.fetchval(n) == 2)
        finally:
            await c.close()

    await wait_until(stored, 60, "gate results of vc and liquid stored", watch=procs)
    rc_st_vc, _, out_st_vc = await gates("status", "--track", "vc", "--dsn", dsn)
    assert rc_st_vc == 0 and "failed" in out_st_vc, out_st_vc
    rc_st_liq, _, out_st_liq = await gates("status", "--track", "liquid", "--dsn", dsn)
    assert rc_st_liq == 1, out_st_liq
