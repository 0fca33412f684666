"""Start-up of external execution (``TRADEFLOW_EXECUTION_ADAPTER=ccxt``): the
ccxt adapter with its markets loaded, before the first message is consumed.

Markets come from ``TRADEFLOW_EXECUTION_MARKETS_FILE`` (dry run only: a ccxt
markets dump, :func:`~agents.execution.ccxt_live.dump_markets_snapshot`, so
validation runs offline against pinned precision and limits and gives the
same answers on every run and replay) or from the venue, fetched on a
private event loop by a throw-away exchange instance (a ccxt async instance
binds to the loop it first runs on; the trading instance must bind to
faust's). Exit 2 on a configuration error, 3 when the venue cannot be
reached within the adapter's connect timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agents.clock import FunctionClock
from agents.trading.checkpointer import LiveState
from agents.trading.settings import TradingSettings, load_exchange_credentials
from runtime.env import ConfigError
from runtime.exits import EXIT_CONFIG, EXIT_INFRA

if TYPE_CHECKING:
    from agents.execution.ccxt_live import CcxtExecutionAdapter

__all__ = ["start_execution"]

log = structlog.get_logger("agents.trading")


def start_execution(settings: TradingSettings, env: Mapping[str, str], live: LiveState) -> CcxtExecutionAdapter | None:
    """The ccxt adapter with its markets loaded, or ``None`` for paper execution.

    The adapter's clock is the core's clock, so venue records carry the
    core's event time (``live.core`` is replaced by a restored checkpoint:
    the clock follows it).
    """
    ex = settings.execution
    if ex is None:
        return None
    from agents.execution.ccxt_live import (
        CcxtExecutionAdapter,
        ExecutionUnavailable,
        load_markets_snapshot,
        make_execution_exchange,
    )

    account = settings.account
    config = ex.live_config()
    clock = FunctionClock(lambda: live.core.clock.now_ns())
    try:
        credentials = load_exchange_credentials(env)
        if not config.dry_run and not credentials:
            raise ConfigError(
                "TRADEFLOW_EXECUTION_DRY_RUN=0 sends orders and needs TRADEFLOW_EXCHANGE_API_KEY and "
                "TRADEFLOW_EXCHANGE_SECRET (or their _FILE variants)"
            )
        if ex.markets_file is not None:
            try:
                text = Path(ex.markets_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"TRADEFLOW_EXECUTION_MARKETS_FILE: cannot read {ex.markets_file} ({exc.strerror})"
                ) from None
            markets = load_markets_snapshot(text)
            source = f"file {ex.markets_file} sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    except ValueError as exc:  # names variables and paths, never credential values (a bad snapshot too)
        log.critical("trading_agent_refused_to_start", account=account, reason=str(exc))
        raise SystemExit(EXIT_CONFIG) from None
    if ex.markets_file is None:

        async def fetch() -> dict[str, Any]:
            probe = make_execution_exchange(config, credentials or None)
            try:
                await CcxtExecutionAdapter(probe, config, clock).connect()
                return dict(probe.markets)
            finally:
                await probe.close()

        loop = asyncio.new_event_loop()
        try:
            markets = loop.run_until_complete(fetch())
        except ExecutionUnavailable as exc:
            log.critical(
                "trading_execution_unavailable",
                account=account,
                adapter=config.adapter,
                dry_run=config.dry_run,
                error=str(exc),
            )
            raise SystemExit(EXIT_INFRA) from None
        finally:
            loop.close()
        source = "venue"
    exchange = make_execution_exchange(config, credentials or None)
    exchange.set_markets(markets)
    log.info(
        "trading_execution_ready",
        account=account,
        adapter=config.adapter,
        dry_run=config.dry_run,
        markets=len(markets),
        markets_source=source,
        credentials=bool(credentials),
    )
    return CcxtExecutionAdapter(exchange, config, clock)
