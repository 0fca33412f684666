"""Determinism of the trading core: the same inputs through strategy, risk
(with signed control events), paper execution (with seeded timeouts) and
portfolio give byte-identical encoded outputs, run after run, and
at-least-once redelivery changes nothing. Market data: real Binance BTC/USDT
1h candles (the bundled sample of shared/data)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.clock import EventClock
from agents.control.signing import ControlAudit, ControlVerifier, Keyring, new_control_event
from agents.execution.interface import MarketContext, client_order_id_for
from agents.execution.paper import PaperConfig, PaperExecutionEngine
from agents.portfolio.engine import PortfolioEngine, PortfolioState
from agents.risk.config import RiskConfig
from agents.risk.engine import RiskEngine
from agents.strategy.config import StrategyConfig
from agents.strategy.engine import StrategyEngine
from tests import builders
from topics.records import Bar, ControlCommand, Fill, OrderIntent, RiskDecision, RiskVerdict, Signal, Timeframe
from topics.schema import Record, codec_for
from topics.units import NS_PER_SECOND

CSV = Path(__file__).resolve().parents[2] / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
START = "2021-01-01 00:00:00+00:00"
N_BARS = 400
H = Timeframe.H1.nanos
KEYRING = Keyring({"ops1": b"determinism-test-key-0123456789abcdef"})


def load_bars() -> list[Bar]:
    bars: list[Bar] = []
    with CSV.open(newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        for row in rows:
            if row["timestamp"] < START:
                continue
            open_time = int(datetime.fromisoformat(row["timestamp"]).timestamp()) * NS_PER_SECOND
            bars.append(
                builders.bar(
                    open_time=open_time,
                    open=float(row["open"]),
                    high=float(row["high"]),
                    low=float(row["low"]),
                    close=float(row["close"]),
                    volume=float(row["volume"]),
                    source="csv:binance_btcusdt_1h_2017_2022.csv",
                )
            )
            if len(bars) == N_BARS:
                break
    return bars


def stub_signal(bars: list[Bar], i: int) -> Signal:
    """A deterministic stand-in model: 3-bar momentum through tanh."""
    momentum = bars[i].close / bars[max(0, i - 3)].close - 1.0
    score = math.tanh(momentum * 40.0)
    return builders.signal(
        score=score,
        ts=bars[i].ts_event,
        model_id="stub-momentum",
        expected_return=momentum / 2,
        shadow=i % 17 == 0,
        feature_event_id=bars[i].event_id,
        lineage_id="stub",
    )


def encode(record: Any) -> bytes:
    if isinstance(record, Record):
        return type(record).__name__.encode() + b":" + codec_for(type(record)).encode(record)
    if isinstance(record, PortfolioState):
        return b"PortfolioState:" + orjson.dumps(
            {
                **{f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "positions"},
                "positions": {k: dataclasses.asdict(v) for k, v in record.positions.items()},
            },
            option=orjson.OPT_SORT_KEYS,
        )
    assert isinstance(record, ControlAudit)
    return b"ControlAudit:" + orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def run(bars: list[Bar], *, redeliver: bool = False) -> list[bytes]:
    clock = EventClock(bars[0].open_time)
    strategy = StrategyEngine(StrategyConfig(), clock)
    risk = RiskEngine(RiskConfig(), clock, ControlVerifier(KEYRING))
    paper = PaperExecutionEngine(PaperConfig(default_timeout_probability=0.05, seed=11), clock)
    portfolio = PortfolioEngine()
    out: list[bytes] = []
    emit = out.append

    def execute(intent: OrderIntent, decision: RiskDecision, bar: Bar) -> None:
        market = MarketContext(symbol=bar.symbol, last_price=bar.close, ts_ns=bar.ts_event)
        for rec in paper.submit(intent, decision, market):
            emit(encode(rec))
            risk.on_execution(rec)
            strategy.on_execution(rec)
        if redeliver:  # at-least-once: the same pair again must not add an order
            assert paper.submit(intent, decision, market) == []

    def decide(intent: OrderIntent, bar: Bar) -> None:
        emit(encode(intent))
        decision = risk.on_intent(intent)
        emit(encode(decision))
        if redeliver:
            assert risk.on_intent(intent) == decision
        execute(intent, decision, bar)

    for i, bar in enumerate(bars):
        clock.advance(bar.ts_event)
        for rec in paper.on_bar(bar):
            emit(encode(rec))
            risk.on_execution(rec)
            strategy.on_execution(rec)
            if isinstance(rec, Fill):
                state = portfolio.on_fill(rec)
                if redeliver:
                    assert portfolio.on_fill(rec) is state
                    risk.on_execution(rec)
        state = portfolio.on_bar(bar)
        emit(encode(state))
        strategy.on_portfolio(state)
        risk.on_portfolio(state)
        strategy.on_bar(bar)
        marked = risk.on_mark(bar)
        for switch in marked.engaged:
            emit(repr(switch).encode())
        for exit_ in marked.exits:
            decide(exit_.intent, bar)
        if i == 100:  # an operator halt for 6 hours, and a forged release that must change nothing
            cmd = new_control_event(
                command=ControlCommand.KILL_SWITCH_ON,
                scope="global",
                target="*",
                params={"duration_s": 6 * 3600},
                reason="drill",
                operator="alice",
                key_id="ops1",
                nonce="n-100",
                ts_event=bar.ts_event,
                ts_init=bar.ts_event,
                expires_at=None,
                keyring=KEYRING,
            )
            emit(encode(risk.on_control(cmd)))
            forged = dataclasses.replace(cmd, command=ControlCommand.KILL_SWITCH_OFF, nonce="n-101")
            emit(encode(risk.on_control(forged)))
        decision = strategy.on_signal(stub_signal(bars, i))
        if decision.intent is not None:
            decide(decision.intent, bar)
    emit(encode(portfolio.state()))
    return out


@pytest.mark.determinism
def test_same_inputs_twice_then_byte_identical_outputs() -> None:
    bars = load_bars()
    assert len(bars) == N_BARS
    first, second = run(bars), run(bars)
    assert len(first) == len(second)
    divergence = next((i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b), None)
    assert divergence is None, f"first divergence at output {divergence}"
    assert hashlib.sha256(b"".join(first)).hexdigest() == hashlib.sha256(b"".join(second)).hexdigest()
    # The run exercised the whole core, so the comparison means something.
    kinds = {b.split(b":", 1)[0] for b in first}
    assert {b"OrderIntent", b"RiskDecision", b"OrderUpdate", b"Fill", b"PortfolioState", b"ControlAudit"} <= kinds
    assert sum(b.startswith(b"Fill:") for b in first) > 20
    assert any(b'"verdict":"rejected"' in b and b"kill_switch_global" in b for b in first)


def test_redelivered_messages_then_outputs_unchanged() -> None:
    bars = load_bars()
    assert run(bars, redeliver=True) == run(bars)


def test_positions_then_equal_the_sum_of_fills() -> None:
    bars = load_bars()
    net = 0.0
    final: dict[str, Any] = {}
    for line in run(bars):
        kind, _, body = line.partition(b":")
        if kind == b"Fill":
            fill = orjson.loads(body)
            net += fill["quantity"] if fill["side"] == "buy" else -fill["quantity"]
        elif kind == b"PortfolioState":
            final = orjson.loads(body)
    held = final["positions"].get("BTC/USDT", {}).get("quantity", 0.0)
    assert net != 0.0 or final["closed_trades"] > 0
    assert held == pytest.approx(net, abs=1e-9)


def test_rejected_decisions_then_never_filled() -> None:
    bars = load_bars()
    rejected: set[str] = set()
    filled: set[str] = set()
    for line in run(bars):
        kind, _, body = line.partition(b":")
        if kind == b"RiskDecision":
            rec = orjson.loads(body)
            if rec["verdict"] == RiskVerdict.REJECTED.value:
                rejected.add(client_order_id_for(rec["intent_event_id"]))
        elif kind == b"Fill":
            filled.add(orjson.loads(body)["client_order_id"])
    assert rejected and filled
    assert not (rejected & filled)


def digest(outputs: list[bytes]) -> str:
    return hashlib.sha256(b"\n".join(outputs)).hexdigest()


@pytest.mark.determinism
def test_separate_processes_with_different_hash_seeds_then_same_digest() -> None:
    """Live and backtest run in different processes: set/dict hashing must not leak into outputs."""
    root = Path(__file__).resolve().parents[2]
    code = "from tests.unit.test_trading_determinism import digest, load_bars, run; print(digest(run(load_bars())))"
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert digests == {digest(run(load_bars()))}
