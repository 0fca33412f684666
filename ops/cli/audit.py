"""``tradeflow audit``: replay a recorded range of an account's trading and
prove the same decisions come out (see :mod:`backtest.audit`).

::

    tradeflow audit --from 2026-11-25T00:00 --to 2026-11-26 [--account paper] [--history-from ISO]
                    [--set risk.max_order_notional=5000 ...] [--json]
    tradeflow audit --last 5m          # what the running platform decided in the last 5 minutes

Ranges are in market time (the ``ts_init`` the trading core stamps, event time of the bars and
signals: recorded time under the recorded feed); ``--last`` picks the range by wall time instead:
from the first output of an input that *arrived* in the last DURATION, to the end. On a running
platform the recorded outputs run ahead of the agent's input journal (it is written with each
checkpoint): the audit compares the outputs up to the journal's last checkpoint (the *output
horizon*, saved with it) and waits up to ``--settle`` seconds for the sink to store them.

Compared: every output of the account in the range (its strategy's intents and the risk engine's
stop-loss / take-profit exits with their decisions, order updates and fills; portfolio, control
audits, alerts), recorded and replayed count side by side per kind; a recorded row left out
(another account's, an undecodable command's alert) is counted in the report with its reason.

Configuration is read from the same environment variables as the live
trading agent (``TRADEFLOW_TRADING_*``, control keys for signature
verification), so the audit rebuilds the very configuration that traded;
``--set`` makes it a counterfactual run.

Exit codes: 0 identical (or a counterfactual run completed), 1 divergence
found, 2 usage error (inverted range, unknown setting, key configuration),
3 database unreachable or the sink still behind the journal after ``--settle``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_OK, EXIT_USAGE

__all__ = ["add_parsers"]


def cmd_audit(a: argparse.Namespace) -> int:
    import time

    from agents.control.signing import load_keyring
    from agents.gates.config import parse_duration_ns
    from agents.signals.signing import signal_verifier_from_env
    from agents.trading.settings import TradingSettings
    from backtest.audit import FAR_FUTURE_NS, SinkBehind, audit
    from topics.units import parse_when

    try:
        if bool(a.start) == bool(a.last):
            raise ValueError("give either --from (a market-time range) or --last (a wall-time window)")
        since = time.time_ns() - parse_duration_ns(a.last) if a.last else None
        start = parse_when(a.start) if a.start else 0
        end = parse_when(a.end) if a.end else FAR_FUTURE_NS
        history = parse_when(a.history_from) if a.history_from else 0
        overrides = dict(_pair(s) for s in a.set or ())
        settings = TradingSettings.from_env(os.environ)
        if a.account:
            settings = dataclasses.replace(settings, account=a.account)
        config = settings.config()
        keyring = load_keyring(os.environ)
        report = asyncio.run(
            audit(
                a.dsn,
                config,
                keyring,
                start,
                end,
                history_from_ns=history,
                overrides=overrides,
                since_arrival_ns=since,
                settle_s=a.settle,
                signal_verifier=signal_verifier_from_env(os.environ),
            )
        )
    except SinkBehind as exc:
        print(f"tradeflow audit: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except ValueError as exc:
        print(f"tradeflow audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report.as_json(), sort_keys=True) if a.json else report.render())
    if report.counterfactual:
        return EXIT_OK
    return EXIT_OK if report.identical else EXIT_FAIL


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_parsers(sub: Any, infra: Callable[..., None]) -> None:
    sp = sub.add_parser(
        "audit",
        help="replay a recorded range through the trading core; prove identical decisions or name the first divergence",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infra(sp, dsn=True)
    sp.add_argument("--from", dest="start", default="", help="range start, ISO date/time (UTC), market time")
    sp.add_argument("--to", dest="end", default="", help="range end (exclusive), market time (default: open)")
    sp.add_argument(
        "--last",
        default="",
        metavar="DURATION",
        help="instead of --from: the outputs of the inputs that arrived in the last DURATION (e.g. 5m, 2h)",
    )
    sp.add_argument(
        "--settle",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for the sink to store the outputs up to the journal's last checkpoint",
    )
    sp.add_argument("--account", default="", help="account to audit (default TRADEFLOW_TRADING_ACCOUNT or paper)")
    sp.add_argument(
        "--history-from",
        default="",
        help="replay inputs from here to rebuild state (default: the whole recorded history)",
    )
    sp.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="counterfactual: replay under another setting, e.g. risk.max_order_notional=5000",
    )
    sp.add_argument("--json", action="store_true", help="one JSON object instead of the text report")
    sp.set_defaults(fn=cmd_audit)
