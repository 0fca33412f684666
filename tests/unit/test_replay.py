"""Replay driver: determinism (same inputs -> same hash, one changed bar -> another
hash), warm-up, batching that does not change a signal, polarity, bad models.

Market data: real Binance BTC/USDT 1h candles (the bundled sample); the model is
trained walk-forward in-process, small and seeded (CPU), once per module."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from agents.market.csv_import import import_csv_file
from agents.risk.config import RiskConfig
from agents.trading.core import TradingConfig
from backtest.replay import (
    INVERTED_SUFFIX,
    ModelSegment,
    ReplayConfig,
    ReplayModel,
    decision_hash,
    order_bars,
    replay,
)
from backtest.walkforward import PolarityMode, WalkForwardSpec, train_walk_forward
from models.config import ModelConfig
from models.dataset import closes_by_open_time
from models.serving import InferenceStep
from topics.records import Bar, FeatureVector, Fill, OrderIntent, PortfolioSnapshot, Signal, Timeframe

CSV = Path(__file__).resolve().parents[2] / "ops" / "sample_data" / "binance_btcusdt_1h_2017_2022.csv"
SYMBOL = "BTC/USDT"
TS_INIT = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def bars() -> list[Bar]:
    parsed = import_csv_file(CSV, venue="binance", symbol=SYMBOL, timeframe=Timeframe.H1, ts_init=TS_INIT)
    return list(parsed.bars[30_000:30_700])  # Jan-Feb 2021, a volatile stretch


def _spec(polarity: PolarityMode = PolarityMode.NORMAL) -> WalkForwardSpec:
    cfg = ModelConfig(family="mlp", window=8, hidden_sizes=(16,), max_epochs=4, device="cpu", seed=3)
    return WalkForwardSpec(n_windows=3, model=cfg, polarity=polarity)


@pytest.fixture(scope="module")
def model(bars: list[Bar]) -> ReplayModel:
    m, _ = train_walk_forward(bars, {SYMBOL: closes_by_open_time(bars)}, _spec(), ReplayConfig().spec, "1x1h")
    return m


def _config(trade_from: int | None = None) -> ReplayConfig:
    return ReplayConfig(trading=TradingConfig(risk=RiskConfig(allowed_symbols=(SYMBOL,))), trade_from_ns=trade_from)


@pytest.mark.determinism
def test_same_inputs_give_the_same_hash_and_trade(bars: list[Bar], model: ReplayModel) -> None:
    a = replay(bars, _config(), model)
    b = replay(list(reversed(bars)), _config(), model)  # input order does not matter: replay orders by time
    assert a.hash == b.hash
    assert a.hash == decision_hash(a.records)
    assert len(a.signals) > 100 and len(a.fills) > 0, "the fixture must exercise trading, not only features"
    assert [type(r) for r in a.records] == [type(r) for r in b.records]


def test_one_changed_bar_changes_the_hash(bars: list[Bar], model: ReplayModel) -> None:
    base = replay(bars, _config(), model)
    i = 400
    changed = list(bars)
    changed[i] = dataclasses.replace(
        bars[i], close=bars[i].close * 1.001, high=max(bars[i].high, bars[i].close * 1.001)
    )
    other = replay(changed, _config(), model)
    assert other.hash != base.hash
    # records strictly before the changed bar are identical
    cut = next(k for k, r in enumerate(base.records) if r.ts_event > bars[i - 1].ts_event)
    assert base.records[:cut] == other.records[:cut]


def test_warm_up_bars_are_not_traded(bars: list[Bar], model: ReplayModel) -> None:
    start = bars[500].open_time
    res = replay(bars, _config(trade_from=start), model)
    snaps = [r for r in res.records if isinstance(r, PortfolioSnapshot)]
    assert snaps and min(s.as_of_ns for s in snaps) == bars[500].ts_event
    assert res.n_traded_bars == len(bars) - 500
    assert all(s.ts_event >= bars[500].ts_event for s in res.signals)
    assert all(f.ts_event >= start for f in res.fills)
    # features are still computed during warm-up (the window needs history)
    fvs = [r for r in res.records if isinstance(r, FeatureVector)]
    assert min(f.bar_open_time for f in fvs) < start


def test_batched_inference_equals_the_streaming_worker(bars: list[Bar], model: ReplayModel) -> None:
    """Each replay signal is bit-identical to one scored alone, window by window, as the worker does."""
    res = replay(bars, _config(), model)
    fvs = {r.event_id: r for r in res.records if isinstance(r, FeatureVector)}
    step = InferenceStep()
    for fv in sorted(fvs.values(), key=lambda v: v.bar_open_time):
        step.push(fv)
    checked = 0
    for sig in res.signals[::25]:
        fv = fvs[sig.feature_event_id]
        seg = model.segment_for(sig.symbol, fv.bar_open_time)
        assert seg is not None
        history = sorted(
            (v for v in fvs.values() if v.bar_open_time <= fv.bar_open_time), key=lambda v: v.bar_open_time
        )[-seg.predictor.window :]
        alone = seg.predictor.predict_batch([history])
        assert np.float64(sig.score) == alone.score[0] * seg.polarity
        checked += 1
    assert checked >= 5


def test_inverted_polarity_mirrors_scores(bars: list[Bar], model: ReplayModel) -> None:
    flipped = ReplayModel(tuple(dataclasses.replace(s, polarity=-1) for s in model.segments))
    a = replay(bars, _config(), model)
    b = replay(bars, _config(), flipped)
    assert len(a.signals) == len(b.signals)
    for x, y in zip(a.signals, b.signals, strict=True):
        assert y.score == -x.score and y.p_up == x.p_down and y.expected_return == -x.expected_return
        assert y.model_version == x.model_version + INVERTED_SUFFIX and y.event_id != x.event_id
    assert a.hash != b.hash


def test_walk_forward_polarity_modes_record_their_statistic(bars: list[Bar]) -> None:
    closes = {SYMBOL: closes_by_open_time(bars)}
    for mode in (PolarityMode.AUTO_TRAIN_IC, PolarityMode.AUTO_TRAIN_PNL):
        m, lineage = train_walk_forward(bars, closes, _spec(mode), ReplayConfig().spec, "1x1h")
        assert len(lineage) == 3
        for w, seg in zip(lineage, m.segments, strict=True):
            assert w.polarity == seg.polarity
            assert w.polarity_statistic is not None
            assert w.polarity == (-1 if w.polarity_statistic < 0 else 1)
            assert w.train_end_ns < w.serve_start_ns  # trained strictly before it serves


def test_walk_forward_windows_never_overlap_and_start_after_training(model: ReplayModel) -> None:
    segs = sorted(model.segments, key=lambda s: s.start_ns)
    assert all(a.end_ns == b.start_ns for a, b in itertools.pairwise(segs))
    assert model.segment_for(SYMBOL, segs[0].start_ns - 1) is None
    assert model.segment_for("ETH/USDT", segs[0].start_ns) is None


def test_overlapping_segments_are_refused(model: ReplayModel) -> None:
    seg = model.segments[0]
    with pytest.raises(ValueError, match="overlap"):
        ReplayModel((seg, dataclasses.replace(seg, start_ns=seg.start_ns + 1, label="x")))
    with pytest.raises(ValueError, match="polarity"):
        ModelSegment(
            symbol=SYMBOL,
            start_ns=0,
            end_ns=1,
            predictor=seg.predictor,
            model_id="m",
            model_version="v",
            horizon="1x1h",
            polarity=0,
        )


def test_revisions_and_open_bars_follow_the_projection_rule(bars: list[Bar]) -> None:
    revised = dataclasses.replace(
        bars[10], revision=1, close=bars[10].close * 1.01, high=max(bars[10].high, bars[10].close * 1.01)
    )
    open_bar = dataclasses.replace(bars[11], is_closed=False, revision=5)
    out = order_bars([*bars[:20], revised, open_bar])
    assert len(out) == 20
    assert out[10] is revised and out[11] is bars[11]


def test_a_replay_without_model_trades_nothing_but_marks(bars: list[Bar]) -> None:
    res = replay(bars[:200], _config(), ReplayModel(()))
    assert res.signals == () and res.fills == ()
    assert not any(isinstance(r, (Signal, OrderIntent, Fill)) for r in res.records)
    assert len(res.equity) == 200 and all(p.equity == 100_000.0 for p in res.equity)
