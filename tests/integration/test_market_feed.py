"""The recorded-market feed on the real broker and PostgreSQL: pace, event-time order,
stop/kill and restart without gaps, one stream identity, exhaustion."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from agents.clock import EventClock
from agents.features.pipeline import FeaturePipeline
from agents.market.recorded_feed import FeedSchedule, StreamKey
from ops.embedded.broker import EmbeddedBroker
from ops.jobs.feed import FEED_EXHAUSTED, FeedOptions, bundled_files, feed_file, load_streams, run_feed
from ops.jobs.ingest import SAMPLE_DIR
from tests.conftest import Proc, Procs, wait_until
from topics.catalogue import physical_name
from topics.records import Bar, FeatureVector, Timeframe
from topics.schema import Record, codec_for
from topics.units import parse_when

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BTC_1H = "binance_btcusdt_1h_2017_2022.csv"
BTC_30M = "gymcrypto_btcusd_30m_2017_2019.csv"
ETH_30M = "gymcrypto_ethusd_30m_2017_2019.csv"
KEY_1H = StreamKey("binance", "BTC/USDT", Timeframe.H1)
START = "2018-03-01"


R = TypeVar("R", bound=Record)


async def read_topic(
    bootstrap: str, namespace: str, topic: str, cls: type[R], at_least: int, timeout: float = 60
) -> list[R]:
    """Every record on ``topic`` from the beginning, once at least ``at_least`` have arrived
    (and what follows within a short drain, so that extra records are seen too)."""
    codec = codec_for(cls)
    consumer = AIOKafkaConsumer(
        physical_name(topic, namespace), bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[R] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        drain_until: float | None = None
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend(codec.decode(m.value) for m in msgs)
            now = loop.time()
            if len(out) >= at_least and drain_until is None:
                drain_until = now + 1.0
            if drain_until is not None and now >= drain_until and not batch:
                return out
            if now > deadline:
                raise AssertionError(f"{topic}: {len(out)} records after {timeout}s, wanted >= {at_least}")
    finally:
        await consumer.stop()


def expected_bars(names: list[str], start: str) -> dict[StreamKey, list[Bar]]:
    """What the feed must publish, per stream, in order (the pure schedule over the same files)."""
    streams = load_streams(bundled_files(names), ts_init=parse_when("2024-01-01"))
    out: dict[StreamKey, list[Bar]] = {s.key: [] for s in streams}
    for b in FeedSchedule(streams, start_open_time=parse_when(start)).bars():
        out[StreamKey(b.venue, b.symbol, b.timeframe)].append(b)
    return out


def check_prefix_without_gap(got: list[Bar], expected: dict[StreamKey, list[Bar]]) -> dict[StreamKey, int]:
    """Per stream, the distinct bars on the topic are exactly the first n expected ones; every
    repeat is the same event (id and content, ``ts_init`` aside). Returns n per stream."""
    first: dict[str, Bar] = {}
    for b in got:
        seen = first.setdefault(b.event_id, b)
        assert seen.ts_event == b.ts_event and (seen.open, seen.close, seen.source) == (b.open, b.close, b.source)
    counts: dict[StreamKey, int] = {}
    for key, bars in expected.items():
        mine = sorted((b for b in first.values() if StreamKey(b.venue, b.symbol, b.timeframe) == key),
                      key=lambda b: b.open_time)  # fmt: skip
        assert [b.event_id for b in mine] == [b.event_id for b in bars[: len(mine)]], key
        counts[key] = len(mine)
    return counts


async def stored_positions(dsn: str, feed: str) -> dict[tuple[str, str, str], tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT venue, symbol, timeframe, source, last_open_time_ns FROM feed_positions WHERE feed = $1", feed
        )
    finally:
        await conn.close()
    return {(r["venue"], r["symbol"], r["timeframe"]): (r["source"], r["last_open_time_ns"]) for r in rows}


async def test_feed_when_played_then_bars_on_topic_in_event_time_order_at_the_planned_pace(
    broker: EmbeddedBroker, namespace: str, dsn: str
) -> None:
    pace, n = 20.0, 80  # two 30m streams: 40 ticks, the last one due 39/20 s after the first
    opts = FeedOptions(
        files=bundled_files([BTC_30M, ETH_30M]),
        bootstrap=broker.bootstrap,
        dsn=dsn,
        namespace=namespace,
        feed="pace",
        pace=pace,
        start_open_time=parse_when(START),
        max_bars=n,
    )
    rep = await asyncio.wait_for(run_feed(opts, asyncio.Event()), 120)
    assert (rep.published, rep.stopped_by, rep.exhausted) == (n, "max_bars", False)
    planned_s = 39 / pace
    assert planned_s - 0.05 <= rep.wall_s < planned_s + 30  # never ahead of the plan; behind only under load

    got = await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, n)
    assert len(got) == n and len({b.event_id for b in got}) == n
    expected = expected_bars([BTC_30M, ETH_30M], START)
    assert set(check_prefix_without_gap(got, expected).values()) == {n // 2}
    assert {b.source for b in got} == {f"recorded:{BTC_30M}", f"recorded:{ETH_30M}"}
    # published in event-time order across the two streams (partitions): a bar closing later was
    # never published earlier (ts_init is the wall time of its publish)
    by_event = sorted(got, key=lambda b: (b.ts_event, b.ts_init))
    assert [b.ts_init for b in by_event] == sorted(b.ts_init for b in by_event)
    assert by_event[0].ts_event == parse_when(START) + Timeframe.M30.nanos

    for symbol in ("BTC/USD", "ETH/USD"):
        labels = {"feed": "pace", "symbol": symbol, "timeframe": "30m"}
        assert REGISTRY.get_sample_value("tradeflow_feed_bars_published_total", labels) == n // 2
    lag = REGISTRY.get_sample_value("tradeflow_feed_lag_seconds", {"feed": "pace"})
    assert lag is not None and 0.0 <= lag <= rep.max_lag_s

    last = {k: bars[n // 2 - 1].open_time for k, bars in expected.items()}
    assert await stored_positions(dsn, "pace") == {
        (k.venue, k.symbol, k.timeframe.value): (f"recorded:{name}", last[k])
        for k, name in zip(expected, [BTC_30M, ETH_30M], strict=True)
    }


async def test_feed_when_ticks_fall_due_faster_than_a_publish_then_they_go_out_together_in_order(
    broker: EmbeddedBroker, namespace: str, dsn: str
) -> None:
    """The pace plan is kept under load: due times count from one start, so ticks that fell due
    while a publish (broker ack + Postgres write, milliseconds) was in flight go out in the next one."""
    n = 400  # 400 ticks due 0.2 ms apart
    opts = FeedOptions(
        files=bundled_files([BTC_1H]),
        bootstrap=broker.bootstrap,
        dsn=dsn,
        namespace=namespace,
        feed="fast",
        pace=5000.0,
        start_open_time=parse_when(START),
        max_bars=n,
    )
    rep = await asyncio.wait_for(run_feed(opts, asyncio.Event()), 120)
    assert rep.published == n and rep.batches < n // 2
    got = await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, n)
    assert [b.open_time for b in got] == [b.open_time for b in expected_bars([BTC_1H], START)[KEY_1H][:n]]


async def test_fresh_feed_when_warmup_given_then_those_bars_go_out_at_once_and_a_resumed_feed_paces_at_once(
    broker: EmbeddedBroker, namespace: str, dsn: str
) -> None:
    def opts(pace: float, max_bars: int) -> FeedOptions:
        return FeedOptions(
            files=bundled_files([BTC_1H]),
            bootstrap=broker.bootstrap,
            dsn=dsn,
            namespace=namespace,
            feed="warm",
            pace=pace,
            start_open_time=parse_when(START),
            max_bars=max_bars,
            warmup_bars=80,
        )

    fresh = await asyncio.wait_for(run_feed(opts(1.0, 80), asyncio.Event()), 60)
    assert fresh.published == 80 and fresh.wall_s < 20  # paced from the first bar it would take 79 s
    assert fresh.max_lag_s < 20  # warm-up bars are due at the start, not 80 s before it
    resumed = await asyncio.wait_for(run_feed(opts(2.0, 3), asyncio.Event()), 60)
    assert resumed.published == 3 and resumed.wall_s >= 0.95  # the 3rd tick is due 1 s in: no warm-up again
    got = await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, 83)
    assert [b.open_time for b in got] == [b.open_time for b in expected_bars([BTC_1H], START)[KEY_1H][:83]]


def feed_cli(procs: Procs, broker: EmbeddedBroker, namespace: str, dsn: str, *args: str) -> Proc:
    return procs.cli(
        "feed", "feed", "--bootstrap", broker.bootstrap, "--namespace", namespace, "--dsn", dsn, "--from", START, *args
    )


async def wait_exit(proc: Proc, timeout: float) -> int:
    popen = proc.popen
    assert popen is not None
    return await asyncio.wait_for(asyncio.to_thread(popen.wait), timeout)


async def test_feed_when_sigterm_and_restarted_then_exit_0_continues_with_the_next_bar_and_features_see_one_stream(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    expected = expected_bars([BTC_1H], START)
    (key,) = expected
    procs.worker(broker.bootstrap, namespace, "bars-checker", "features")

    args = ("--file", BTC_1H, "--pace", "40", "--feed", "one")
    first = feed_cli(procs, broker, namespace, dsn, *args)
    await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, 60, timeout=90)
    assert first.popen is not None
    first.popen.terminate()
    assert await wait_exit(first, 30) == 0, first.output()
    m = re.search(r"feed one: (\d+) bars published", first.output())
    assert m, first.output()
    n1 = int(m.group(1))
    positions = await stored_positions(dsn, "one")
    assert positions == {("binance", "BTC/USDT", "1h"): (f"recorded:{BTC_1H}", expected[key][n1 - 1].open_time)}

    second = feed_cli(
        procs, broker, namespace, dsn, "--file", BTC_1H, "--pace", "40", "--feed", "one", "--max-bars", "100"
    )
    assert await wait_exit(second, 60) == 0, second.output()
    got = await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, n1 + 100)
    assert len(got) == n1 + 100  # a clean stop republishes nothing
    assert check_prefix_without_gap(got, expected) == {key: n1 + 100}  # the restart went on with bar n1 + 1
    assert {b.source for b in got} == {f"recorded:{BTC_1H}"}

    # The features agent saw one stream: exactly what one uninterrupted pass over the same bars gives
    clock = EventClock()
    pipe = FeaturePipeline(clock)
    want = {}
    for b in expected[key][: n1 + 100]:
        clock.advance(b.ts_event)
        out = pipe.on_bar(b)
        if out.features is not None:
            want[out.features.event_id] = out.features
    assert len(want) > 50
    fvs = await read_topic(broker.bootstrap, namespace, "features", FeatureVector, len(want), timeout=120)
    assert {f.event_id for f in fvs} == set(want)
    assert {f.data_version for f in fvs} == {f"recorded:{BTC_1H}"}
    assert all(f.values == want[f.event_id].values for f in fvs)


async def test_feed_when_killed_and_restarted_then_no_gap_and_repeats_are_identical_events(
    broker: EmbeddedBroker, namespace: str, dsn: str, procs: Procs
) -> None:
    expected = expected_bars([BTC_30M, ETH_30M], START)
    args = ("--file", BTC_30M, "--file", ETH_30M, "--pace", "30", "--feed", "crash")
    first = feed_cli(procs, broker, namespace, dsn, *args)
    await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, 40, timeout=90)
    first.kill()
    before = await stored_positions(dsn, "crash")
    assert before and {src for src, _ in before.values()} == {f"recorded:{BTC_30M}", f"recorded:{ETH_30M}"}

    second = feed_cli(procs, broker, namespace, dsn, *args, "--max-bars", "40")
    assert await wait_exit(second, 60) == 0, second.output()
    after = await stored_positions(dsn, "crash")
    total = sum(  # distinct bars published by both runs, from the positions
        next(i for i, b in enumerate(bars) if b.open_time == after[(k.venue, k.symbol, k.timeframe.value)][1]) + 1
        for k, bars in expected.items()
    )
    got = await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, total)
    counts = check_prefix_without_gap(got, expected)  # no gap; repeats are the same events
    assert sum(counts.values()) == total
    assert len(got) - total <= 10  # at-least-once: at most the batch in flight at the kill again
    assert {b.source for b in got} == {f"recorded:{BTC_30M}", f"recorded:{ETH_30M}"}


async def test_feed_when_the_data_ends_then_exhausted_idles_until_stopped_and_a_restart_publishes_nothing(
    broker: EmbeddedBroker, namespace: str, dsn: str, tmp_path: Path
) -> None:
    src = (SAMPLE_DIR / BTC_1H).read_text().splitlines(keepends=True)
    path = tmp_path / "five.csv"
    path.write_text("".join(src[:6]))  # header + 5 bars
    opts = FeedOptions(
        files=(feed_file(f"{path},binance,BTC/USDT,1h"),),
        bootstrap=broker.bootstrap,
        dsn=dsn,
        namespace=namespace,
        feed="short",
        pace=100.0,
    )

    def exhausted() -> float | None:
        return REGISTRY.get_sample_value("tradeflow_feed_exhausted", {"feed": "short"})

    async def is_exhausted() -> bool:
        return exhausted() == 1.0

    for published in (5, 0):  # the restart resumes at the end: nothing to publish, exhausted at once
        FEED_EXHAUSTED.labels("short").set(0)  # the gauge of the run before
        stop = asyncio.Event()
        task = asyncio.create_task(run_feed(opts, stop))
        await wait_until(is_exhausted, 30, "feed_exhausted")
        assert not task.done()  # a closed market: the feed idles, it does not exit
        stop.set()
        rep = await asyncio.wait_for(task, 10)
        assert (rep.published, rep.exhausted, rep.stopped_by) == (published, True, "stop")
    got = await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, 5)
    assert len(got) == 5 and {b.source for b in got} == {"recorded:five.csv"}


async def test_feed_with_until_then_history_up_to_it_a_rerun_completes_it_and_then_publishes_nothing(
    broker: EmbeddedBroker, namespace: str, dsn: str
) -> None:
    """``--until``: a one-shot import of a stretch of history (``tradeflow up --live`` imports the first
    model's training history so): it exits once every bar closing by then is out, an interrupted
    run is completed by the next one, and a complete one publishes nothing and exits at once."""
    until = parse_when(START) + 50 * Timeframe.H1.nanos  # bars opening START .. START+49h close by then

    def opts(max_bars: int | None) -> FeedOptions:
        return FeedOptions(
            files=bundled_files([BTC_1H]),
            bootstrap=broker.bootstrap,
            dsn=dsn,
            namespace=namespace,
            feed="history",
            pace=1.0,
            start_open_time=parse_when(START),
            warmup_bars=500,  # more than the stretch: all of it at once, as `up --live` does
            max_bars=max_bars,
            until=until,
        )

    interrupted = await asyncio.wait_for(run_feed(opts(20), asyncio.Event()), 60)
    assert (interrupted.published, interrupted.stopped_by) == (20, "max_bars")
    completed = await asyncio.wait_for(run_feed(opts(None), asyncio.Event()), 60)
    assert (completed.published, completed.stopped_by, completed.exhausted) == (30, "until", False)
    assert completed.last_ts_event == until
    again = await asyncio.wait_for(run_feed(opts(None), asyncio.Event()), 60)
    assert (again.published, again.stopped_by) == (0, "until")
    got = await read_topic(broker.bootstrap, namespace, "market.bars.raw", Bar, 50)
    assert [b.open_time for b in got] == [b.open_time for b in expected_bars([BTC_1H], START)[KEY_1H][:50]]
