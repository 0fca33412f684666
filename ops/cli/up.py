"""``tradeflow up``: start the whole platform on this machine and keep it running (what ``make run`` runs).

The market source is the recorded-market feed (the bundled candles played as a live market) unless
``--live --exchange E --symbols S ...``: then the ccxt live collector on that exchange. Live mode
probes the exchange first and, when it cannot be reached, exits 3 with one line before it writes a
file or starts a process. The one-shot batch job (import history, backtest, gates) is ``tradeflow backfill``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.env import env_str
from runtime.exits import EXIT_INFRA, EXIT_USAGE

if TYPE_CHECKING:
    from ops.embedded.platform import UpOptions

__all__ = ["add_parsers", "up_options"]


def up_options(a: argparse.Namespace) -> UpOptions:
    """The :class:`~ops.embedded.platform.UpOptions` of a parsed command line (``ValueError``: a bad one)."""
    from ops.embedded.platform import LiveMarket, UpOptions

    live = None
    if a.live:
        if not a.exchange or not a.symbols:
            raise ValueError("--live needs --exchange E and --symbols S [S ...]")
        live = LiveMarket(
            exchange=a.exchange,
            symbols=tuple(a.symbols),
            market_type=a.market_type,
            timeframes=tuple(a.timeframes or ("1h",)),
            api_url=a.api_url or None,
        )
        live.config()  # validated now: a typo is a usage error, not a start-up failure
    elif a.exchange or a.symbols:
        raise ValueError("--exchange and --symbols choose the live market: add --live")
    return UpOptions(
        data_dir=Path(a.data_dir),
        run_for_s=a.run_for,
        pace=a.pace,
        broker_storage=a.broker,
        live_from=a.live_from,
        train_from=a.train_from,
        web_host=a.web_host,
        live=live,
    )


def cmd_up(a: argparse.Namespace) -> int:
    from agents.market.exchanges import ExchangeUnreachable, FailureReason, FatalExchangeError
    from agents.trading.configuration import load_engine_settings
    from ops.embedded.platform import AlreadyRunning, up

    try:
        opts = up_options(a)
        load_engine_settings(os.environ)  # a refused trading configuration file: exit 2, nothing started
    except ValueError as exc:
        print(f"tradeflow up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return up(opts)
    except AlreadyRunning as exc:
        print(f"tradeflow up: {exc}")
        return EXIT_USAGE
    except ExchangeUnreachable as exc:
        print(f"tradeflow up: live market unreachable, nothing started: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except FatalExchangeError as exc:
        # the venue answered no: an unknown symbol is the command line's fault, anything else the venue's
        print(f"tradeflow up: live market refused, nothing started: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.reason in (FailureReason.BAD_SYMBOL, FailureReason.BAD_REQUEST) else EXIT_INFRA


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from agents.venue.ccxt import VENUES

    sp = sub.add_parser(
        "up",
        help="start the whole platform and keep it running (durable broker, Postgres, agents, market, dashboard)",
        description=__doc__,
    )
    sp.add_argument("--data-dir", default=env_str("TRADEFLOW_DATA_DIR", "var"), help="everything lives here")
    sp.add_argument(
        "--for",
        dest="run_for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run this long, print a summary and stop (default: until Ctrl-C / SIGTERM)",
    )
    sp.add_argument(
        "--pace",
        "--speed",
        type=float,
        default=1.0,
        help="recorded bars per second per symbol once the feed is live (event time stays recorded)",
    )
    sp.add_argument(
        "--broker",
        choices=("s3", "memory"),
        default="s3",
        help="s3: durable log on the local object store (default); memory: loses everything on restart",
    )
    sp.add_argument(
        "--live-from", default="2021-01-01", help="the feed publishes history before this at full speed, then paces"
    )
    sp.add_argument("--train-from", default="2020-07-01", help="first model's training window start")
    sp.add_argument(
        "--web-host",
        default=env_str("TRADEFLOW_WEB_HOST", "127.0.0.1"),
        help="bind address of the dashboard and worker web servers",
    )
    live = sp.add_argument_group(
        "live market",
        "--live replaces the recorded feed by the ccxt live collector (`tradeflow collect`); the first model "
        "still trains on the bundled BTC/USDT 1h history (imported once, up to --live-from)",
    )
    live.add_argument("--live", action="store_true", help="live market data from --exchange instead of the feed")
    live.add_argument("--exchange", choices=sorted(VENUES), help="the exchange (ccxt id)")
    live.add_argument("--symbols", nargs="+", metavar="S", help="ccxt unified symbols, e.g. BTC/USDT")
    live.add_argument("--market-type", choices=("spot", "swap"), default="spot")
    live.add_argument(
        "--timeframe",
        dest="timeframes",
        action="append",
        metavar="TF",
        help="candle timeframe to collect, repeatable (default 1h: what the model trades on)",
    )
    live.add_argument(
        "--api-url",
        default=env_str("TRADEFLOW_EXCHANGE_API_URL", ""),
        metavar="URL",
        help="http(s)://host[:port] replacing the exchange's REST hosts (a proxy or mirror; REST polling only)",
    )
    sp.set_defaults(fn=cmd_up, timeframes=None)
