"""``tradeflow up --live``: the command line mapped onto the platform's programs, and the start
that fails fast when the exchange cannot be reached (no server of ours is started in any of them)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ops.cli.main import build_parser
from ops.cli.up import up_options
from ops.embedded.platform import LiveMarket, Platform, UpOptions, check_live_market
from tests.fixtures.ccxt.replay import load_interactions

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> UpOptions:
    return up_options(build_parser().parse_args(["up", *argv]))


def programs(opts: UpOptions) -> dict[str, list[str]]:
    return {p.name: list(p.argv) for p in Platform(opts).programs()}


def flag(argv: list[str], name: str) -> list[str]:
    """The values after ``name`` up to the next flag."""
    i = argv.index(name) + 1
    out = []
    while i < len(argv) and not argv[i].startswith("--"):
        out.append(argv[i])
        i += 1
    return out


def test_live_when_parsed_then_the_collector_replaces_the_feed_with_its_argv(tmp_path: Path) -> None:
    opts = parse(
        "--live",
        "--exchange",
        "binance",
        "--symbols",
        "BTC/USDT",
        "ETH/USDT",
        "--data-dir",
        str(tmp_path / "d"),
        "--broker",
        "memory",
    )
    assert opts.live == LiveMarket(exchange="binance", symbols=("BTC/USDT", "ETH/USDT"))
    progs = programs(opts)
    assert "feed" not in progs and "collect" in progs
    argv = progs["collect"]
    assert argv[:4] == [sys.executable, "-m", "ops.cli", "collect"]
    platform = Platform(opts)
    assert flag(argv, "--bootstrap") == [platform.bootstrap] and flag(argv, "--exchange") == ["binance"]
    assert flag(argv, "--symbols") == ["BTC/USDT", "ETH/USDT"] and flag(argv, "--market-type") == ["spot"]
    assert flag(argv, "--timeframes") == ["1h"]  # what the platform's model trades on
    assert flag(argv, "--metrics-port") == [str(platform.ports["feed_metrics"])]
    assert "--api-url" not in argv
    assert platform.market_source == "live binance spot BTC/USDT ETH/USDT 1h (ccxt collector)"
    # the collector's own parser takes that argv as it is
    parsed = build_parser().parse_args(argv[3:])
    assert (parsed.exchange, parsed.symbols, parsed.timeframes) == ("binance", ["BTC/USDT", "ETH/USDT"], ["1h"])


def test_live_with_timeframes_swap_and_api_url_then_passed_to_the_collector(tmp_path: Path) -> None:
    opts = parse(
        "--live",
        "--exchange",
        "bitget",
        "--market-type",
        "swap",
        "--symbols",
        "BTC/USDT:USDT",
        "--timeframe",
        "1m",
        "--timeframe",
        "1h",
        "--api-url",
        "http://127.0.0.1:9",
        "--data-dir",
        str(tmp_path / "d"),
        "--broker",
        "memory",
    )
    argv = programs(opts)["collect"]
    assert flag(argv, "--market-type") == ["swap"] and flag(argv, "--timeframes") == ["1m", "1h"]
    assert flag(argv, "--api-url") == ["http://127.0.0.1:9"]


def test_no_live_then_the_recorded_feed_and_no_collector(tmp_path: Path) -> None:
    opts = parse("--data-dir", str(tmp_path / "d"), "--broker", "memory")
    assert opts.live is None
    progs = programs(opts)
    assert "collect" not in progs and flag(progs["feed"], "--file") == ["binance_btcusdt_1h_2017_2022.csv"]
    assert Platform(opts).market_source.startswith("recorded feed binance_btcusdt_1h_2017_2022.csv")


def test_live_training_history_then_the_feeds_history_up_to_live_from_and_no_further(tmp_path: Path) -> None:
    platform = Platform(
        parse(
            "--live",
            "--exchange",
            "binance",
            "--symbols",
            "BTC/USDT",
            "--data-dir",
            str(tmp_path / "d"),
            "--broker",
            "memory",
        )
    )
    history = platform.training_history_args()
    feed = platform.feed_args()
    assert flag(history, "--until") == ["2021-01-01"]
    for name in ("--file", "--from", "--warmup", "--pace"):  # what the recorded feed publishes at once
        assert flag(history, name) == flag(feed, name)
    assert "--metrics-port" not in history  # a one-shot next to the running programs: no port of theirs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--live", "--exchange", "binance"], "--live needs --exchange E and --symbols"),
        (["--live", "--symbols", "BTC/USDT"], "--live needs --exchange E and --symbols"),
        (["--exchange", "binance", "--symbols", "BTC/USDT"], "add --live"),
        (["--live", "--exchange", "binance", "--symbols", "BTC/USDT:USDT"], "not a spot symbol"),
        (["--live", "--exchange", "binance", "--symbols", "BTC/USDT", "--timeframe", "7m"], "7m"),
        (["--live", "--exchange", "binance", "--symbols", "BTC/USDT", "--api-url", "ftp://x"], "must be http"),
    ],
)
def test_bad_live_command_line_then_refused_before_anything(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(*argv)


def test_unknown_exchange_then_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--live", "--exchange", "kraken", "--symbols", "BTC/USDT")
    assert exited.value.code == 2 and "invalid choice: 'kraken'" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: a connection there is refused


def up_live(data: Path, api_url: str, *symbols: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TRADEFLOW_EXCHANGE_API_URL": api_url}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "up",
            "--live",
            "--exchange",
            "binance",
            "--symbols",
            *symbols,
            "--data-dir",
            str(data),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_live_up_when_the_exchange_is_unreachable_then_exit_3_one_line_and_nothing_started(tmp_path: Path) -> None:
    """The exchange's REST API points at a closed port (``TRADEFLOW_EXCHANGE_API_URL``), so this is
    the same offline start on a machine with internet access: exit 3 with one line naming the
    exchange and the error, and not a file written nor a process started (no data dir at all)."""
    data = tmp_path / "data"
    port = closed_port()
    res = up_live(data, f"http://127.0.0.1:{port}", "BTC/USDT")
    assert res.returncode == 3, res.stderr
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(
        f"tradeflow up: live market unreachable, nothing started: binance: cannot reach 127.0.0.1:{port} at start-up"
    )
    assert not data.exists()  # no platform.json, no supervisord.conf, no secrets: nothing was started


@pytest.fixture
def recorded_binance() -> Iterator[str]:
    """Binance's REST API as recorded (``exchangeInfo`` with BTC/USDT, ETH/USDT, LUNA/USDT; ``time``),
    served over real HTTP on 127.0.0.1: ccxt's own request, parsing and error mapping run."""
    bodies = {
        i.path: json.dumps(i.response["body"]).encode()
        for i in load_interactions("binance_spot_markets.json")
        if i.response is not None
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.get(self.path.split("?")[0])
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_live_market_when_the_exchange_answers_then_the_probe_passes(recorded_binance: str) -> None:
    live = LiveMarket(exchange="binance", symbols=("BTC/USDT", "ETH/USDT"), api_url=recorded_binance)
    assert check_live_market(live) == 3


def test_live_up_when_the_exchange_lists_no_such_symbol_then_exit_2_and_nothing_started(
    tmp_path: Path, recorded_binance: str
) -> None:
    data = tmp_path / "data"
    res = up_live(data, recorded_binance, "BTC/USDT", "DOGE/USDT")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tradeflow up: live market refused, nothing started: bad_symbol: binance (spot)")
    assert "['DOGE/USDT']" in lines[0]
    assert not data.exists()


def test_recorded_feed_then_one_signal_age_whatever_the_pace_and_live_keeps_the_default(tmp_path: Path) -> None:
    week = str(7 * 24 * 3_600_000_000_000)
    at = {
        pace: Platform(parse("--data-dir", str(tmp_path / "d"), "--pace", str(pace))).env()[
            "TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS"
        ]
        for pace in (4, 0.1, 10)
    }
    # not a function of the pace: it is in the trading configuration every checkpoint's hash covers,
    # so `up --pace 4` then `up --pace 10` on one data dir must keep it
    assert at == {4: week, 0.1: week, 10: week}
    live = parse("--data-dir", str(tmp_path / "d"), "--live", "--exchange", "binance", "--symbols", "BTC/USDT")
    assert "TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS" not in Platform(live).strategy_env()


def test_trading_config_file_then_its_keys_beat_the_platform_defaults_and_a_bad_file_exits_2_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform sets paper-account strategy defaults as variables, and a variable beats the file: so it
    leaves out the ones the operator's ``TRADEFLOW_TRADING_CONFIG`` file sets."""
    conf = tmp_path / "trading.toml"
    conf.write_text("[strategy]\nentry_threshold = 0.3\n", encoding="utf-8")
    monkeypatch.setenv("TRADEFLOW_TRADING_CONFIG", str(conf))
    env = Platform(parse("--data-dir", str(tmp_path / "d"))).env()
    assert "TRADEFLOW_STRATEGY_ENTRY_THRESHOLD" not in env and env["TRADEFLOW_STRATEGY_EXIT_THRESHOLD"] == "0.02"
    conf.write_text("[strategy]\nentry_treshold = 0.3\n", encoding="utf-8")
    data = tmp_path / "d2"
    res = subprocess.run(
        [sys.executable, "-m", "ops.cli", "up", "--data-dir", str(data), "--for", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "unknown key(s) ['entry_treshold'] in [strategy]" in res.stderr
    assert not data.exists()
