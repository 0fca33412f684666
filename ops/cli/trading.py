"""``tradeflow trading config``: the trading worker's effective configuration and its hash.

::

    TRADEFLOW_TRADING_CONFIG=trading.toml TRADEFLOW_RISK_DAILY_LOSS_LIMIT=0.02 tradeflow trading config

Built exactly as the trading agent builds it at start (defaults, then the ``TRADEFLOW_TRADING_CONFIG``
TOML file, then the variables; :mod:`agents.trading.configuration`) and printed as one JSON object:
``config_hash`` (what the agent logs and keys its checkpoints by), ``config_file``, ``set`` (each
value the file or a variable set, and which) and ``trading`` (every value). Exit 2 when the
configuration is refused (an unknown key, a bad value), with the reason on stderr, as the agent would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from runtime.exits import EXIT_CONFIG, EXIT_OK


def cmd_trading_config(a: argparse.Namespace) -> int:
    from agents.trading.configuration import effective_configuration
    from agents.trading.settings import TradingSettings

    try:
        settings = TradingSettings.from_env(os.environ)
        config = settings.config()
    except ValueError as exc:
        print(f"tradeflow trading config: refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    assert settings.engines is not None  # from_env always loads them
    print(json.dumps(effective_configuration(config, settings.engines), indent=2 if a.pretty else None))
    return EXIT_OK


def add_parsers(sub: Any, infra: Callable[..., None]) -> None:
    """Add ``trading config``. ``infra`` is unused: no broker, no database."""
    sp = sub.add_parser("trading", help="the trading worker's configuration")
    tsub = sp.add_subparsers(dest="trading_cmd", required=True)
    cp = tsub.add_parser(
        "config",
        help="print the effective trading configuration (file + environment) with its hash; exit 2 if refused",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("--pretty", action="store_true", help="indented JSON")
    cp.set_defaults(fn=cmd_trading_config)
