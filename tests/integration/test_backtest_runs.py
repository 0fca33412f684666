"""Backtest runs on the real PostgreSQL: bars from the ``bars`` projection (written by
the sink's own projection code), a walk-forward or registry model, the run record,
fills, equity and metrics; bad requests end in failed run records; supersede never
deletes; the CLI's exit codes; ``tradeflow replay`` prints the run's decision hash.

Market data: real Binance BTC/USDT 1h candles (bundled sample), 700 bars."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from agents.features.spec import DEFAULT_SPEC
from agents.market.csv_import import import_csv_file
from backtest.metrics import METRIC_NAMES
from backtest.runs import BacktestFailed, BacktestRequest, BacktestRequestError, arun_backtest
from backtest.walkforward import feature_vectors
from models.config import ModelConfig
from models.dataset import build_dataset, closes_by_open_time, holdout_split
from models.training import train
from ops.embedded.broker import free_port
from storage.sink import TopicSink, _bar_row
from tests.conftest import ROOT
from topics.records import Bar, ModelRegistryEvent, ModelStage, Timeframe
from topics.schema import codec_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CSV = ROOT / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
SYMBOL = "BTC/USDT"
HP = {"window": 8, "hidden_sizes": "16", "max_epochs": 3, "seed": 11}


def _bars() -> list[Bar]:
    parsed = import_csv_file(
        CSV, venue="binance", symbol=SYMBOL, timeframe=Timeframe.H1, ts_init=1_700_000_000_000_000_000
    )
    return list(parsed.bars[30_000:30_700])


BARS = _bars()
START, END = BARS[100].open_time, BARS[-1].open_time + Timeframe.H1.nanos


async def _load(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await TopicSink._upsert_bars(conn, [_bar_row(b) for b in BARS])
    finally:
        await conn.close()


def _wf(**kw: Any) -> BacktestRequest:
    base: dict[str, Any] = {
        "symbols": (SYMBOL,),
        "start_ns": START,
        "end_ns": END,
        "walk_forward_windows": 2,
        "model_params": HP,
        "source": "async_test",
    }
    return BacktestRequest(**{**base, **kw})


async def _run_row(dsn: str, run_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT *, lineage::text AS lin FROM backtest_runs WHERE run_id = $1", run_id)
        assert row is not None
        out = dict(row)
        out["lineage"] = json.loads(out.pop("lin"))
        out["n_fills"] = await conn.fetchval("SELECT count(*) FROM backtest_fills WHERE run_id = $1", run_id)
        out["n_equity"] = await conn.fetchval("SELECT count(*) FROM backtest_equity WHERE run_id = $1", run_id)
        out["metrics"] = {
            (r["symbol"], r["metric"]): r["value"]
            for r in await conn.fetch("SELECT symbol, metric, value FROM backtest_metrics WHERE run_id = $1", run_id)
        }
        return out
    finally:
        await conn.close()


async def test_walk_forward_run_is_recorded_idempotent_and_reproducible(dsn: str) -> None:
    await _load(dsn)
    req = _wf(polarity="auto_train_ic")
    run_id = await arun_backtest(req, dsn)
    assert run_id == req.request_hash()
    row = await _run_row(dsn, run_id)
    assert row["status"] == "succeeded" and row["error"] is None and row["finished_at"] is not None
    assert row["source"] == "async_test" and row["symbols"] == [SYMBOL]
    assert len(row["decision_hash"]) == 64
    lin = row["lineage"]
    assert lin["data"][SYMBOL]["bars_in_range"] == 600 and lin["data"][SYMBOL]["warmup_bars"] == 81
    assert [m["polarity_mode"] for m in lin["models"]] == ["auto_train_ic"] * 2
    assert all(m["polarity"] in (1, -1) and m["polarity_statistic"] is not None for m in lin["models"])
    assert row["n_fills"] == lin["replay"]["n_fills"] > 0
    assert row["n_equity"] == lin["replay"]["n_traded_bars"] == 600
    assert set(row["metrics"]) == {(s, m) for s in (SYMBOL, "*") for m in METRIC_NAMES}
    assert row["metrics"][("*", "trade_count")] == row["n_fills"]
    assert row["metrics"][("*", "lineage_coverage")] == 1.0

    # the same request again: the finished run, not a second one
    assert await arun_backtest(req, dsn) == run_id
    # forced re-run: a new attempt, the same decisions (deterministic training and replay)
    again = await arun_backtest(req, dsn, rerun=True)
    assert again == f"{run_id}-2"
    assert (await _run_row(dsn, again))["decision_hash"] == row["decision_hash"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"start_ns": END, "end_ns": START}, "inverted or empty date range"),
        ({"symbols": ("DOGE/USDT",)}, "unknown symbol 'DOGE/USDT'"),
        ({"start_ns": END + 10 * 3_600_000_000_000, "end_ns": END + 20 * 3_600_000_000_000}, "empty range"),
        ({"models": ("nope@v1",), "walk_forward_windows": 0, "model_params": {}}, "not in the registry"),
    ],
)
async def test_bad_requests_fail_with_a_clear_error_and_a_failed_run(
    dsn: str, kw: dict[str, Any], message: str
) -> None:
    await _load(dsn)
    with pytest.raises(BacktestRequestError, match=message) as err:
        await arun_backtest(_wf(**kw), dsn)
    assert isinstance(err.value, ValueError)
    row = await _run_row(dsn, err.value.run_id)
    assert row["status"] == "failed" and message in row["error"]
    assert row["decision_hash"] is None and row["n_fills"] == 0 and row["metrics"] == {}


async def test_unknown_source_is_refused_before_any_row(dsn: str) -> None:
    with pytest.raises(ValueError, match="source must be one of"):
        _wf(source="nightly")


async def test_supersede_keeps_every_run(dsn: str) -> None:
    from storage import backtests as store

    await _load(dsn)
    with pytest.raises(BacktestRequestError) as err:
        await arun_backtest(_wf(symbols=("ETH/USDT",)), dsn)
    failed = err.value.run_id
    good = await arun_backtest(_wf(), dsn)
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(ValueError, match="reason"):
            await store.supersede(conn, failed, "  ")
        with pytest.raises(LookupError):
            await store.supersede(conn, "no-such-run", "stale")
        await store.supersede(conn, failed, "wrong symbol in the request", by=good)
        with pytest.raises(ValueError, match="already superseded"):
            await store.supersede(conn, failed, "again")
        row = await conn.fetchrow(
            "SELECT status, superseded_by, supersede_reason, error FROM backtest_runs WHERE run_id = $1", failed
        )
        assert dict(row) == {
            "status": "superseded",
            "superseded_by": good,
            "supersede_reason": "wrong symbol in the request",
            "error": row["error"],
        }
        assert "unknown symbol" in row["error"]  # the history stays
        assert await conn.fetchval("SELECT count(*) FROM backtest_runs") == 2
    finally:
        await conn.close()
    # a superseded request runs again as a new attempt
    with pytest.raises(BacktestRequestError) as err2:
        await arun_backtest(_wf(symbols=("ETH/USDT",)), dsn)
    assert err2.value.run_id == f"{failed}-2"


async def _register_model(dsn: str, tmp: Path) -> tuple[str, Path, str]:
    vecs = feature_vectors(BARS, DEFAULT_SPEC)[SYMBOL]
    cfg = ModelConfig(window=8, hidden_sizes=(16,), max_epochs=3, device="cpu", seed=2)
    ds = build_dataset(vecs, closes_by_open_time(BARS), window=8, horizon_bars=1, flat_band=cfg.flat_band)
    result = train(cfg, ds, holdout_split(ds.timestamps, validation_fraction=0.2, purge=ds.horizon_ns))
    path = tmp / "m.ckpt"
    sha = result.save(path)
    ev = ModelRegistryEvent.new(
        ts_event=END,
        ts_init=END,
        model_id="mlp-btcusdt-1h",
        version="v1",
        stage=ModelStage.REGISTERED,
        feature_set_version=DEFAULT_SPEC.version,
        config={**cfg.to_dict(), "symbol": SYMBOL, "venue": "binance", "timeframe": "1h"},
        data_start=result.data_start,
        data_end=result.data_end,
        seed=2,
        metrics={},
        checkpoint_path=str(path),
        checkpoint_sha256=sha,
    )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO ev_model_registry (event_id, schema_version, ts_event, ts_init, correlation_id, "
            "causation_id, kafka_partition, kafka_offset, msg_key, payload) VALUES ($1,$2,$3,$4,$5,$6,0,0,$7,$8)",
            ev.event_id,
            ev.schema_version,
            ev.ts_event,
            ev.ts_init,
            ev.correlation_id,
            ev.causation_id,
            ev.key().decode(),
            codec_for(ModelRegistryEvent).encode(ev).decode(),
        )
    finally:
        await conn.close()
    return "mlp-btcusdt-1h@v1", path, sha


async def test_registry_model_run_and_a_tampered_checkpoint(dsn: str, tmp_path: Path) -> None:
    await _load(dsn)
    ref, path, sha = await _register_model(dsn, tmp_path)
    req = BacktestRequest(symbols=(SYMBOL,), start_ns=BARS[400].open_time, end_ns=END, models=(ref,), source="smoke")
    run_id = await arun_backtest(req, dsn)
    row = await _run_row(dsn, run_id)
    assert row["status"] == "succeeded" and row["track"] == f"tanh-sizer:{ref}"
    assert row["lineage"]["models"] == [
        {
            "model_id": "mlp-btcusdt-1h",
            "version": "v1",
            "symbol": SYMBOL,
            "stage": "registered",
            "checkpoint_sha256": sha,
            "feature_set_version": DEFAULT_SPEC.version,
            "polarity": 1,
        }
    ]
    assert row["lineage"]["replay"]["n_signals"] > 0
    assert row["metrics"][("*", "lineage_coverage")] in (None, 1.0)  # None only without any decision
    # the checkpoint changes on disk: refused, the run fails with the reason
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BacktestFailed, match="not the published one") as err:
        await arun_backtest(req, dsn, rerun=True)
    failed = await _run_row(dsn, err.value.run_id)
    assert failed["status"] == "failed" and "CheckpointTampered" in failed["error"]
    assert np.isfinite(row["metrics"][("*", "pnl_after_costs")])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


async def test_cli_exit_codes_and_replay_hash(dsn: str) -> None:
    await _load(dsn)
    hp = [x for k, v in HP.items() for x in ("--hp", f"{k}={v}")]
    common = ["--dsn", dsn, "--symbols", SYMBOL, "--walk-forward", "2", *hp]
    frm, to = _iso(START), _iso(END)
    ok = _cli("backtest", "run", *common, "--from", frm, "--to", to, "--source", "smoke")
    assert ok.returncode == 0, ok.stderr[-2000:]
    out = json.loads(ok.stdout)
    assert out["status"] == "succeeded" and out["metrics"]["trade_count"] == out["fills"]

    rp = _cli("replay", *common, "--from", frm, "--to", to, "--source", "smoke")
    assert rp.returncode == 0, rp.stderr[-2000:]
    assert json.loads(rp.stdout)["decision_hash"] == out["decision_hash"]

    bad = _cli("backtest", "run", *common, "--from", to, "--to", frm)
    assert bad.returncode == 1 and "inverted" in bad.stderr
    assert json.loads(bad.stdout)["status"] == "failed"
    assert _cli("backtest", "run", *common, "--from", "yesterday", "--to", to).returncode == 2
    assert _cli("backtest", "run", *common, "--from", frm, "--to", to, "--source", "nightly").returncode == 2
    assert _cli("backtest", "show", "nope", "--dsn", dsn).returncode == 1
    shown = _cli("backtest", "show", out["run_id"], "--dsn", dsn)
    assert shown.returncode == 0 and json.loads(shown.stdout)["decision_hash"] == out["decision_hash"]
    listed = _cli("backtest", "list", "--dsn", dsn)
    assert listed.returncode == 0 and out["run_id"][:18] in listed.stdout
    failed_id = json.loads(bad.stdout)["run_id"]
    assert _cli("backtest", "supersede", failed_id, "--reason", "", "--dsn", dsn).returncode == 2
    sup = _cli("backtest", "supersede", failed_id, "--reason", "dates swapped", "--by", out["run_id"], "--dsn", dsn)
    assert sup.returncode == 0, sup.stderr
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    assert _cli("backtest", "list", "--dsn", dead).returncode == 3


def _iso(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).isoformat()


async def test_broker_source_with_postgres_for_what_retention_dropped(dsn: str, broker: Any, namespace: str) -> None:
    """The topic holds only the newer bars (older ones "expired"); Postgres has all of them.
    The run reads the topic in large fetches, fills in the older part from Postgres, and
    decides exactly what the Postgres-only run decides."""
    from runtime.publish import RecordPublisher

    await _load(dsn)
    async with RecordPublisher(broker.bootstrap, namespace, name="test") as pub:
        await pub.publish(BARS[300:], topic="market.bars")
        await pub.send_raw("market.bars", b"{not a bar", key=b"BTC/USDT|1h")
    req = _wf(data_source="broker")
    run_id = await arun_backtest(req, dsn, broker=(broker.bootstrap, namespace))
    row = await _run_row(dsn, run_id)
    assert row["status"] == "succeeded", row["error"]
    data = row["lineage"]["data"][SYMBOL]
    assert data["from_broker"] == 400 and data["from_postgres"] == 300 - (100 - 81)
    assert row["lineage"]["broker_read"]["messages"] == 401 and row["lineage"]["broker_read"]["undecodable"] == 1
    pg_only = await arun_backtest(_wf(), dsn)
    assert (await _run_row(dsn, pg_only))["decision_hash"] == row["decision_hash"]
    # without a broker address the request cannot be served: a failed run, a clear error
    with pytest.raises(BacktestRequestError, match="needs the broker"):
        await arun_backtest(req, dsn, rerun=True)
