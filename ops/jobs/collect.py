"""CLI edges of the market collectors: history download and live collection.

Wires the pure/IO collector code in ``agents.market`` to the real world: the
Kafka publisher, a Postgres checkpoint store (resumable downloads survive a
restart of the machine, not just of the process), dead letters for rows the
exchange sent that cannot become records, and the wall clock.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import asyncpg
import structlog

from agents.market.ccxt_parse import ExchangeDataError
from agents.market.exchanges import ExchangeConfig, make_exchange
from agents.market.history import download_history
from agents.venue.ccxt import MarketType
from runtime.metrics import DEAD_LETTERS
from runtime.publish import RecordPublisher
from storage.ingest import load_checkpoint, save_checkpoint
from topics.deadletter import dead_letter_for
from topics.records import Timeframe
from topics.units import parse_when

log = structlog.get_logger("ops.jobs.collect")


class PostgresCheckpointStore:
    """CheckpointStore on the ``ingest_checkpoints`` table (monotone: never moves back)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def load(self, key: str) -> int | None:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await load_checkpoint(conn, key)
        finally:
            await conn.close()

    async def save(self, key: str, last_open_time_ns: int) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await save_checkpoint(conn, key, last_open_time_ns)
        finally:
            await conn.close()


def reject_to_dead_letter(publisher: RecordPublisher, consumer: str, source: str) -> Any:
    """An ``on_reject`` hook that dead-letters an exchange row with its reason (and counts it in
    ``tradeflow_dead_letters_total``, topic label ``exchange``: the symbol would only add cardinality)."""
    seq = 0

    async def on_reject(err: ExchangeDataError) -> None:
        nonlocal seq
        seq += 1
        DEAD_LETTERS.labels(consumer, "exchange", err.reason.value).inc()
        now = time.time_ns()
        raw = json.dumps(err.raw, default=str).encode()
        dl = dead_letter_for(
            consumer=consumer,
            topic=source,
            partition=0,
            offset=seq,
            key=None,
            value=raw,
            error=err,
            ts_event=now,
            ts_init=now,
        )
        await publisher.publish([dl], topic="deadletter")

    return on_reject


def serve_metrics(port: int) -> None:
    """Expose /metrics on 127.0.0.1:``port`` (0: not at all) for Prometheus to scrape."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")


async def history(
    *,
    exchange_id: str,
    market_type: str,
    symbol: str,
    timeframe: str,
    start: str,
    end: str,
    bootstrap: str,
    namespace: str,
    dsn: str,
    metrics_port: int = 0,
) -> dict[str, Any]:
    serve_metrics(metrics_port)
    cfg = ExchangeConfig(exchange_id=exchange_id, market_type=MarketType(market_type), symbols=(symbol,))
    ex = make_exchange(cfg, pro=False)
    try:
        async with RecordPublisher(bootstrap, namespace, name=f"history:{exchange_id}") as pub:
            rep = await download_history(
                ex,
                symbol,
                Timeframe(timeframe),
                parse_when(start),
                parse_when(end),
                pub,
                PostgresCheckpointStore(dsn),
                wall_clock=time.time_ns,
                on_reject=reject_to_dead_letter(pub, f"history:{exchange_id}", f"exchange:{exchange_id}:{symbol}"),
            )
        return asdict(rep)
    finally:
        await ex.close()


def live_config(
    exchange_id: str, market_type: str, symbols: list[str], timeframes: list[str], api_url: str | None = None
) -> ExchangeConfig:
    """The live collector's configuration from command-line values; ``ValueError`` (an
    ``UnsupportedExchangeError`` among them) names what is wrong."""
    return ExchangeConfig(
        exchange_id=exchange_id,
        market_type=MarketType(market_type),
        symbols=tuple(symbols),
        timeframes=tuple(Timeframe(t) for t in timeframes),
        api_url=api_url,
    )


async def live(cfg: ExchangeConfig, *, bootstrap: str, namespace: str, metrics_port: int = 0) -> None:
    """Collect ``cfg``'s symbols live until stopped; ``ExchangeUnreachable`` at once when offline."""
    from agents.market.live import LiveCollector

    ex = make_exchange(cfg, pro=True)
    serve_metrics(metrics_port)  # collector calls, ingest latency, dead letters
    pub = RecordPublisher(bootstrap, namespace, name=f"live:{cfg.exchange_id}")
    try:
        collector = LiveCollector(
            ex,
            cfg,
            pub,
            wall_clock=time.time_ns,
            on_reject=reject_to_dead_letter(pub, f"live:{cfg.exchange_id}", f"exchange:{cfg.exchange_id}"),
        )
        await collector.preflight()  # the exchange first: fails fast with ExchangeUnreachable when offline
        await pub.start()
        try:
            await collector.run()
        finally:
            await pub.stop()
    finally:
        await ex.close()
