"""``tradeflow drill``: break real processes on purpose and report what was measured.

``tradeflow drill cluster [--brokers 3] [--members 3] [--partitions 3] [--rate 50] [--before 5] [--after 10]
[--op-timeout 3] [--data-dir DIR] [--json]``
    Two or more tansu brokers over one SeaweedFS object store, producers and a consumer group
    running against all of them, one broker SIGKILLed mid-stream. Prints what happened: the gap
    each producer saw and whether it resumed (a stock aiokafka client and one that rebuilds itself
    from the bootstrap list), whether the group went on, acknowledged records lost, committed
    offsets as the survivors serve them, every client error. Exit 0 when every guarantee held
    (no acknowledged record lost, the failover producer and the group went on, committed offsets
    survived), 1 with the ones that did not, 3 when the object store or a broker could not start.
    Everything it starts is stopped before it exits; its data is a temporary dir unless
    ``--data-dir``. Design and measured figures: docs/cluster.md.

``tradeflow drill determinism [--configs threads avx2 sse] [--json PATH]``
    The determinism contract checked on this machine: every hash and bit-identity claim (event ids,
    feature values, the audit's decision hash, predictions, batch invariance, checkpoint sha256)
    computed here and again under other numeric configurations (BLAS kernels, ATen CPU capability,
    thread counts; ``no-fma`` shows what a CPU without FMA3 would change), each compared bit for bit
    or within its stated tolerance. Exit 0 when the contract holds, 1 naming the claims that do not.
    Design: docs/determinism.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from runtime.exits import EXIT_FAIL, EXIT_INFRA, EXIT_OK, EXIT_USAGE

__all__ = ["add_parsers"]


def cmd_drill_cluster(a: argparse.Namespace) -> int:
    from ops.drills.cluster import DrillOptions, render, run_drill
    from ops.embedded.objectstore import ObjectStoreError
    from runtime.broker import BrokerError

    try:
        opts = DrillOptions(
            brokers=a.brokers,
            members=a.members,
            partitions=a.partitions,
            rate=a.rate,
            before_s=a.before,
            after_s=a.after,
            op_timeout_s=a.op_timeout,
            data_dir=Path(a.data_dir) if a.data_dir else None,
        )
    except ValueError as exc:
        print(f"tradeflow drill cluster: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def progress(line: str) -> None:
        print(f"drill: {line}", file=sys.stderr, flush=True)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too: the drill stops everything it started on the way out

    signal.signal(signal.SIGTERM, interrupted)
    try:
        report = run_drill(opts, progress)
    except (ObjectStoreError, BrokerError) as exc:
        print(f"tradeflow drill cluster: could not start the cluster: {exc}", file=sys.stderr)
        return EXIT_INFRA
    print(json.dumps(report.to_json(), indent=2) if a.json else render(report), flush=True)
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_drill_determinism(a: argparse.Namespace) -> int:
    from ops.drills.determinism import main

    return main(["--configs", *a.configs, *(["--json", a.json] if a.json else [])])


def add_parsers(sub: Any, infra: Any = None) -> None:
    """Add ``drill`` to the ``tradeflow`` parser."""
    sp = sub.add_parser("drill", help="break real processes on purpose and report what was measured")
    dsub = sp.add_subparsers(dest="drill", required=True)
    cp = dsub.add_parser(
        "cluster",
        help="several tansu brokers over one object store, one SIGKILLed under traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("--brokers", type=int, default=3, help="tansu brokers over the one object store (>= 2)")
    cp.add_argument("--members", type=int, default=3, help="consumer-group members")
    cp.add_argument("--partitions", type=int, default=3)
    cp.add_argument("--rate", type=float, default=50.0, help="records per second from each producer")
    cp.add_argument("--before", type=float, default=5.0, metavar="S", help="traffic before the kill")
    cp.add_argument("--after", type=float, default=10.0, metavar="S", help="traffic after the kill")
    cp.add_argument(
        "--op-timeout", type=float, default=3.0, metavar="S", help="a request unanswered this long counts as failed"
    )
    cp.add_argument(
        "--data-dir", default="", help="keep the object store data and broker logs here (default: a temp dir)"
    )
    cp.add_argument("--json", action="store_true", help="the whole report as JSON")
    cp.set_defaults(fn=cmd_drill_cluster)

    from ops.drills.determinism import CONFIGS, DEFAULT_CONFIGS

    dp = dsub.add_parser(
        "determinism",
        help="the determinism contract checked here under other numeric configurations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dp.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(DEFAULT_CONFIGS))
    dp.add_argument("--json", default="", help="write the fingerprints and verdicts to this file")
    dp.set_defaults(fn=cmd_drill_determinism)
