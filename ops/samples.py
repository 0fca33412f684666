"""The bundled real candles as records, for benchmarks and drills (no quality checks: the file is known)."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from topics.records import Bar, Timeframe
from topics.units import NS_PER_HOUR, NS_PER_SECOND


def load_bars(path: Path) -> list[Bar]:
    """``timestamp,open,high,low,close,volume`` rows (ISO-8601 UTC) -> closed 1h bars."""
    bars = []
    with path.open(newline="") as f:
        rows = csv.reader(f)
        next(rows)  # header
        for ts, o, h, lo, c, v in rows:
            open_time = int(datetime.fromisoformat(ts).timestamp()) * NS_PER_SECOND
            bars.append(
                Bar.new(
                    ts_init=open_time + NS_PER_HOUR,
                    ts_event=open_time + NS_PER_HOUR,
                    venue="binance",
                    symbol="BTC/USDT",
                    timeframe=Timeframe.H1,
                    open_time=open_time,
                    open=float(o),
                    high=float(h),
                    low=float(lo),
                    close=float(c),
                    volume=float(v),
                    trade_count=0,
                    is_closed=True,
                    revision=0,
                    source=f"csv:{path.name}",
                )
            )
    return bars
