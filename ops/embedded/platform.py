"""``tradeflow up``: the whole platform on one machine, started in dependency order and supervised.

Layout under the data dir: ``run/`` (``platform.json``: addresses, pids, token and key files;
``supervisord.conf``; the lock a second ``up`` finds), ``logs/`` (one log per program),
``pg/`` (the PostgreSQL cluster), ``objectstore/`` (SeaweedFS data and its generated
credentials), ``secrets/`` (the operator's control key, the dashboard token; mode 0600),
``models/`` (checkpoints), ``faust/`` (worker state). Ports are chosen on the first start and
kept, so a restart comes back on the same addresses.

Start order: object store -> broker -> topics -> PostgreSQL -> migrations -> sink and agents ->
the market source -> a model trained through ``jobs.train`` and promoted by a signed command when
none is active. The market source is the recorded-market feed (history up to the training end at
full speed, then paced) or, with :class:`LiveMarket`, the ccxt live collector (``collect``): its
exchange is probed before anything starts (:func:`check_live_market`), and the training history
is the same bundled history, imported once by a one-shot ``feed --until``. Stop (Ctrl-C, SIGTERM,
``--for``): the market source and agents first, the infrastructure last. Design and the
operator's view: docs/operations.md#the-running-platform.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from runtime.errors import BadInput

if TYPE_CHECKING:
    from agents.market.exchanges import ExchangeConfig

__all__ = [
    "AlreadyRunning",
    "Layout",
    "LiveMarket",
    "UpOptions",
    "check_live_market",
    "live_platform",
    "running_platform",
]

log = structlog.get_logger("ops.embedded.platform")

T = TypeVar("T")

#: key id of the operator's control key generated per data dir
OPERATOR_KEY_ID = "operator"
#: The embedded platform's signal key (``TRADEFLOW_SIGNAL_KEY_INFERENCE_FILE``), generated per data dir.
SIGNAL_KEY_ID = "inference"


class AlreadyRunning(BadInput, RuntimeError):
    """Another ``tradeflow up`` holds this data dir."""


@dataclass(frozen=True)
class Layout:
    """Where the platform keeps everything under its data dir."""

    data_dir: Path

    @property
    def run(self) -> Path:
        return self.data_dir / "run"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def secrets(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def platform_file(self) -> Path:
        return self.run / "platform.json"

    @property
    def lock_file(self) -> Path:
        return self.run / "up.lock"

    @property
    def ports_file(self) -> Path:
        return self.run / "ports.json"

    @property
    def control_key_file(self) -> Path:
        return self.secrets / f"control-{OPERATOR_KEY_ID}.key"

    @property
    def signal_key_file(self) -> Path:
        """The inference agent signs signals with it, the trading agent verifies them."""
        return self.secrets / f"signal-{SIGNAL_KEY_ID}.key"

    @property
    def dashboard_token_file(self) -> Path:
        return self.secrets / "dashboard.token"

    def make(self) -> Layout:
        for d in (self.run, self.logs, self.data_dir / "models", self.data_dir / "faust"):
            d.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.secrets, 0o700)
        return self


@dataclass(frozen=True)
class LiveMarket:
    """``tradeflow up --live``: the ccxt live collector on one exchange replaces the recorded feed."""

    exchange: str
    symbols: tuple[str, ...]
    market_type: str = "spot"
    #: candle timeframes collected (trades always are); 1h is what the platform's model trades on
    timeframes: tuple[str, ...] = ("1h",)
    #: REST base URL replacing the exchange's hosts (``TRADEFLOW_EXCHANGE_API_URL``; None: the venue's own)
    api_url: str | None = None
    #: how long the start-up probe of the exchange may take before ``up`` gives up (exit 3)
    probe_timeout_s: float = 10.0

    def config(self) -> ExchangeConfig:
        """The collector's :class:`~agents.market.exchanges.ExchangeConfig` (``ValueError`` when invalid)."""
        from agents.market.exchanges import ExchangeConfig, MarketType
        from topics.records import Timeframe

        return ExchangeConfig(
            exchange_id=self.exchange,
            market_type=MarketType(self.market_type),
            symbols=self.symbols,
            timeframes=tuple(Timeframe(t) for t in self.timeframes),
            api_url=self.api_url,
        )

    def describe(self) -> str:
        tf = ",".join(self.timeframes)
        return f"live {self.exchange} {self.market_type} {' '.join(self.symbols)} {tf} (ccxt collector)"


def check_live_market(live: LiveMarket) -> int:
    """Probe the exchange of ``live`` (markets listed, symbols known) within its timeout; the number of
    markets. Raises ``ValueError`` for a bad configuration, ``ExchangeUnreachable`` (the network or the
    venue: exit 3) or ``FatalExchangeError`` (the venue said no, e.g. an unknown symbol)."""
    import asyncio

    from agents.market.live import check_exchange

    return asyncio.run(check_exchange(live.config(), live.probe_timeout_s))


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    #: run this long, print a summary and stop (None: until Ctrl-C / SIGTERM)
    run_for_s: float | None = None
    #: bars per second per stream once the feed is live (event time stays the recorded time)
    pace: float = 1.0
    #: ``s3`` (durable, on the local object store) or ``memory`` (tests where durability is not the point)
    broker_storage: str = "s3"
    #: the recorded feed: history before this is published at full speed (features warm, training data)
    live_from: str = "2021-01-01"
    train_from: str = "2020-07-01"
    web_host: str = "127.0.0.1"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: the market source: None, the recorded feed; else the ccxt live collector on that exchange
    live: LiveMarket | None = None


# ---------------------------------------------------------------------------
# files: secrets, ports, lock, platform.json
# ---------------------------------------------------------------------------


def ensure_secret(path: Path, nbytes: int = 32) -> Path:
    """A random hex secret in ``path`` (created once, mode 0600 from its first byte, kept across
    restarts); returns the path, never the value."""
    from ops.embedded.objectstore import write_file

    if write_file(path, (secrets.token_hex(nbytes) + "\n").encode(), 0o600, replace=False):
        log.info("secret_created", path=str(path))
    return path


def load_ports(layout: Layout, names: tuple[str, ...]) -> dict[str, int]:
    """The platform's ports, chosen once (free on 127.0.0.1) and kept in ``run/ports.json``."""
    from ops.embedded.broker import free_port

    ports: dict[str, int] = json.loads(layout.ports_file.read_text()) if layout.ports_file.exists() else {}
    taken = set(ports.values())
    for name in names:
        while name not in ports:
            port = free_port()
            if port not in taken:
                ports[name] = port
                taken.add(port)
    layout.ports_file.write_text(json.dumps(ports, indent=2, sort_keys=True))
    return ports


@contextlib.contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    """Hold the data dir: a second ``tradeflow up`` on it fails with :class:`AlreadyRunning`."""
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = running_platform(layout.data_dir)
            pid = holder.get("pid") if holder else "?"
            raise AlreadyRunning(
                f"a platform is already running on {layout.data_dir} (tradeflow up, pid {pid}); "
                f"stop it first (Ctrl-C in its terminal, or kill -TERM {pid})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def running_platform(data_dir: Path) -> dict[str, Any] | None:
    """What ``run/platform.json`` says about the platform on ``data_dir`` (None when there is none)."""
    path = Layout(data_dir).platform_file
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def live_platform(data_dir: Path) -> dict[str, Any] | None:
    """:func:`running_platform` when its ``tradeflow up`` is alive (a file left by one that was killed: None)."""
    info = running_platform(data_dir)
    return info if info and _alive(int(info.get("pid", 0))) else None


@dataclass
class PlatformInfo:
    """``run/platform.json``: how every ``tradeflow`` command finds the running platform."""

    pid: int
    data_dir: str
    bootstrap: str
    dsn: str
    namespace: str
    dashboard_url: str
    dashboard_token_file: str
    control_key_id: str
    control_key_file: str
    broker_storage: str
    started_at: str
    #: where market data comes from: the recorded feed or the live collector (exchange, symbols)
    market: str = ""
    programs: dict[str, int] = field(default_factory=dict)
    #: the trading agent's configuration variables, so ``tradeflow audit`` rebuilds the config that traded
    trading_env: dict[str, str] = field(default_factory=dict)
    #: the latest programs that went down while running (newest last): program, state, down_at, back_at
    #: (UTC ISO; None while down), down_s; ``tradeflow status`` prints them
    outages: list[dict[str, Any]] = field(default_factory=list)

    def write(self, layout: Layout) -> None:
        tmp = layout.platform_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        tmp.replace(layout.platform_file)


def cli_env_from_platform(environ: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """Environment defaults a ``tradeflow`` command takes from the running platform (flags and the
    environment still override): bootstrap, DSN, namespace, the operator's control key."""
    info = live_platform(data_dir)
    if info is None:
        return {}
    out = {
        **info.get("trading_env", {}),
        "TRADEFLOW_BOOTSTRAP": info["bootstrap"],
        "TRADEFLOW_DSN": info["dsn"],
        "TRADEFLOW_NAMESPACE": info["namespace"],
    }
    key_var = f"TRADEFLOW_CONTROL_KEY_{info['control_key_id'].upper()}"
    if not any(k.startswith("TRADEFLOW_CONTROL_KEY_") for k in environ):
        out[key_var + "_FILE"] = info["control_key_file"]
        out["TRADEFLOW_CONTROL_SIGNING_KEY_ID"] = info["control_key_id"]
    return {k: v for k, v in out.items() if k not in environ}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_signals() -> tuple[signal.Signals, ...]:
    return (signal.SIGINT, signal.SIGTERM)


# ---------------------------------------------------------------------------
# the platform
# ---------------------------------------------------------------------------

#: stop order: the feed and the deciders first, the sink after them (it drains what they sent), the
#: infrastructure last
STOP_ORDER = (
    "feed",
    "collect",
    "gates",
    "trading",
    "governance",
    "models",
    "market",
    "dashboard",
    "sink",
    "broker",
    "postgres",
    "objectstore",
)
PORTS = (
    "broker",
    "postgres",
    "dashboard",
    "market_web",
    "models_web",
    "trading_web",
    "governance_web",
    "sink_metrics",
    "gates_metrics",
    "feed_metrics",
)
#: the infrastructure programs, and which of them each program needs (a program not named: all of them)
INFRA = ("objectstore", "broker", "postgres")
NEEDS = {"objectstore": (), "broker": ("objectstore",), "postgres": ()}
#: a crash of a program within this long after something it needs came back is blamed on that outage
#: (reconnecting clients, a restart waiting in supervisord's backoff), not counted toward a crash loop
OUTAGE_GRACE_S = 60.0
#: outages kept in ``platform.json`` (the logs keep every one)
OUTAGES_KEPT = 20


def _set_by_config_file(environ: Mapping[str, str]) -> set[str]:
    """The variables of the settings the ``TRADEFLOW_TRADING_CONFIG`` file sets: the platform's own
    defaults for them must not beat the operator's file (a variable beats the file)."""
    from agents.trading.configuration import CONFIG_FILE_VARIABLE, FIELD_VARIABLES, load_engine_settings

    path = environ.get(CONFIG_FILE_VARIABLE, "").strip()
    if not path:
        return set()
    set_keys = load_engine_settings({CONFIG_FILE_VARIABLE: path}).sources
    return {FIELD_VARIABLES[s][f] for s, _, f in (k.partition(".") for k in set_keys)}


def needs(program: str) -> tuple[str, ...]:
    return NEEDS.get(program, INFRA)


TRADED_SYMBOL = "BTC/USDT"
#: The paper account's strategy thresholds (the environment overrides them; a signed ``set-limit
#: strategy.<name>`` changes them at runtime): the bootstrap model is small, |score| p90 ~0.07, so the
#: library defaults (entry 0.20, edge >= 1x round-trip costs) would never trade it.
PAPER_STRATEGY = {
    "TRADEFLOW_STRATEGY_ENTRY_THRESHOLD": "0.05",
    "TRADEFLOW_STRATEGY_EXIT_THRESHOLD": "0.02",
    "TRADEFLOW_STRATEGY_COST_MULTIPLE": "0.25",
}
#: The strategy's maximum signal age on the recorded feed (market time). It judges a signal's age in
#: market time (2 h by default, for a live market); a feed played at ``pace`` bars/s compresses market
#: time, so at --pace 4 two hours were half a wall second and any hiccup (a GC pause, a restarted worker
#: catching up) made every signal stale. One week of market time is 42 wall seconds at --pace 4 and 17
#: at --pace 10. It does not follow ``--pace`` on purpose: the value is part of the trading configuration
#: whose hash every trading checkpoint carries, so a restart at another pace must not change it (it did
#: when it followed the pace: the trading worker refused its checkpoint). The environment and a signed
#: ``set-limit strategy.max_signal_age_ns`` still override it.
RECORDED_FEED_MAX_SIGNAL_AGE_NS = 7 * 24 * 3_600_000_000_000
MODEL_ID = "mlp-btcusdt-1h"
FEED_FILE = "binance_btcusdt_1h_2017_2022.csv"


class Platform:
    """One ``tradeflow up``: owns the supervisor and the programs it runs."""

    def __init__(self, opts: UpOptions) -> None:
        from ops.embedded.postgres import EmbeddedPostgres

        self.opts = opts
        self.layout = Layout(opts.data_dir.resolve()).make()
        self.ports = load_ports(self.layout, PORTS)
        self.pg = EmbeddedPostgres(
            data_dir=self.layout.data_dir / "pg" / "data", port=self.ports["postgres"], persistent=True
        )
        self.bootstrap = f"127.0.0.1:{self.ports['broker']}"
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.ports['postgres']}/tradeflow"
        ensure_secret(self.layout.control_key_file)
        ensure_secret(self.layout.signal_key_file)
        ensure_secret(self.layout.dashboard_token_file)
        from ops.embedded.supervisor import Availability, CrashWatch

        self.supervisor: Any = None
        self._objectstore: Any = None
        self.crashes = CrashWatch()
        self.availability = Availability()
        #: what ``platform.json`` keeps of the outages seen (see :meth:`_report`)
        self.outages: list[dict[str, Any]] = []
        #: signals received (Ctrl-C, SIGTERM) and the end of ``--for`` (monotonic), set by :func:`up`
        self.stop_requested: list[int] = []
        self.until: float | None = None
        self.started_at = time.time()

    # -- programs ------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What every agent process gets: addresses, data dirs, the key and token *files* (never values)."""
        return {
            "TRADEFLOW_BOOTSTRAP": self.bootstrap,
            "TRADEFLOW_DSN": self.dsn,
            "TRADEFLOW_NAMESPACE": "",
            "TRADEFLOW_DATA_DIR": str(self.layout.data_dir),
            "TRADEFLOW_ARTIFACTS": str(self.layout.data_dir / "models"),
            f"TRADEFLOW_CONTROL_KEY_{OPERATOR_KEY_ID.upper()}_FILE": str(self.layout.control_key_file),
            "TRADEFLOW_CONTROL_SIGNING_KEY_ID": OPERATOR_KEY_ID,
            # signals: signed by inference per model version, refused unsigned by trading
            f"TRADEFLOW_SIGNAL_KEY_{SIGNAL_KEY_ID.upper()}_FILE": str(self.layout.signal_key_file),
            "TRADEFLOW_SIGNAL_SIGNING_KEY_ID": SIGNAL_KEY_ID,
            "TRADEFLOW_SIGNAL_REQUIRE_SIGNED": "1",
            "TRADEFLOW_DASHBOARD_TOKEN_FILE": str(self.layout.dashboard_token_file),
            "TRADEFLOW_TRADING_ACCOUNT": "paper",
            **{k: v for k, v in self.strategy_env().items() if k not in os.environ},
            "PYTHONUNBUFFERED": "1",
            # every empty fetch of a partition costs the s3-backed broker object-store requests: poll less
            # often there (measured: 20 ms kept the object store at ~90 % of a core and the sink far behind).
            # The sink reads every topic's partitions in one fetch, and the s3 engine answers with what it read
            # within the wait: with 20 ms on a busy machine it got no records at all for minutes (0 records in
            # 15 s at 20 ms, 9/s at 100 ms, 129/s at 500 ms from the same offsets: docs/performance.md#platform)
            **(
                {"TRADEFLOW_FETCH_WAIT_MS": "100", "TRADEFLOW_SINK_FETCH_WAIT_MS": "500"}
                if self.opts.broker_storage == "s3"
                else {}
            ),
            **dict(self.opts.extra_env),
        }

    def strategy_env(self) -> dict[str, str]:
        """The paper account's strategy settings: :data:`PAPER_STRATEGY` and, on the recorded feed,
        :data:`RECORDED_FEED_MAX_SIGNAL_AGE_NS`."""
        out = dict(PAPER_STRATEGY)
        if self.opts.live is None:
            out["TRADEFLOW_STRATEGY_MAX_SIGNAL_AGE_NS"] = str(RECORDED_FEED_MAX_SIGNAL_AGE_NS)
        return {k: v for k, v in out.items() if k not in _set_by_config_file(os.environ)}

    def programs(self) -> list[Any]:
        from agents.strategy.config import StrategyConfig
        from ops.embedded.broker import tansu_binary
        from ops.embedded.supervisor import Program
        from ops.embedded.workers import cli_argv

        p, env = self.ports, self.env()
        infra = ["--bootstrap", self.bootstrap, "--namespace", ""]

        def worker(name: str, port: str, *agents: str) -> Program:
            argv = cli_argv(
                "worker",
                *infra,
                "--dsn",
                self.dsn,
                "--app-id",
                f"tradeflow-{name}",
                "--web-port",
                str(p[port]),
                "--web-host",
                self.opts.web_host,
                "--agents",
                *agents,
            )
            return Program(name, argv, env, startsecs=3)

        storage, broker_env = "memory://tansu/", {}
        progs: list[Program] = []
        if self.opts.broker_storage == "s3":
            store = self.objectstore()
            progs.append(Program("objectstore", store.argv(), {}, cwd=store.root, startsecs=2, stopwaitsecs=20))
            storage, broker_env = "s3://tansu/", dict(store.env_for_clients())
        progs += [
            Program(
                "broker",
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{p['broker']}",
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{p['broker']}",
                    "--storage-engine",
                    storage,
                ],
                broker_env,
                startsecs=1,
                stopwaitsecs=10,
            ),
            Program(
                "postgres",
                self.pg.server_argv(),
                {},
                user=self.pg.os_user,
                startsecs=2,
                stopwaitsecs=30,
                stopsignal="INT",
            ),
            Program(
                "sink",
                cli_argv("sink", *infra, "--dsn", self.dsn, "--metrics-port", str(p["sink_metrics"])),
                env,
                startsecs=3,
            ),
            worker("market", "market_web", "bars-checker", "features"),
            worker("models", "models_web", "trainer", "inference"),
            worker("trading", "trading_web", "trading"),
            worker("governance", "governance_web", "governance"),
            worker("dashboard", "dashboard", "dashboard"),
            Program(
                "gates",
                cli_argv(
                    "gates",
                    "evaluate",
                    *infra,
                    "--dsn",
                    self.dsn,
                    # the paper account's track, with or without backtest runs: its gates are on the
                    # dashboard from the start (insufficient observation until there is evidence)
                    "--track",
                    StrategyConfig().track,
                    "--every",
                    "15m",
                    "--metrics-port",
                    str(p["gates_metrics"]),
                ),
                env,
                startsecs=3,
            ),
            self.market_program(infra, env),
        ]
        return progs

    def market_program(self, infra: list[str], env: dict[str, str]) -> Any:
        """The market source: ``feed`` (the recorded market) or, live, ``collect`` (the ccxt collector)."""
        from ops.embedded.supervisor import Program
        from ops.embedded.workers import cli_argv

        live = self.opts.live
        if live is None:
            return Program("feed", cli_argv("feed", *infra, "--dsn", self.dsn, *self.feed_args()), env, startsecs=3)
        argv = [
            "collect",
            *infra,
            "--exchange",
            live.exchange,
            "--market-type",
            live.market_type,
            "--symbols",
            *live.symbols,
            "--timeframes",
            *live.timeframes,
            "--metrics-port",
            str(self.ports["feed_metrics"]),
        ]
        if live.api_url is not None:
            argv += ["--api-url", live.api_url]
        return Program("collect", cli_argv(*argv), env, startsecs=3)

    @property
    def market_source(self) -> str:
        """What ``market_program`` runs, in words (platform.json, the banner)."""
        if self.opts.live is not None:
            return self.opts.live.describe()
        return f"recorded feed {FEED_FILE} at {self.opts.pace:g} bars/s"

    def feed_args(self) -> list[str]:
        """The recorded feed: from a few days before the training window (the features' warm-up), the
        history up to ``live_from`` at once (training data, warm features), then paced."""
        return [*self._history_args(), "--metrics-port", str(self.ports["feed_metrics"])]

    def training_history_args(self) -> list[str]:
        """Live mode's one-shot import of the first model's training history: what the recorded feed
        publishes at once (``feed_args``), up to ``live_from``, then exit (``--until``). A rerun after a
        crash completes it; once it is complete a rerun publishes nothing."""
        return [*self._history_args(), "--until", self.opts.live_from]

    def _history_args(self) -> list[str]:
        from topics.units import NS_PER_DAY, NS_PER_HOUR, parse_when

        start = parse_when(self.opts.train_from) - 5 * NS_PER_DAY
        warmup = (parse_when(self.opts.live_from) - start) // NS_PER_HOUR
        return ["--file", FEED_FILE, "--pace", str(self.opts.pace), "--from", _iso(start), "--warmup", str(warmup)]

    def _training_history(self) -> None:
        """Before the live collector starts, when no model serves yet: the bundled history in, so the
        first model trains as it does on the recorded feed (the collector brings no history)."""
        if self._run_async(self._serving_model()) is not None:
            return
        t0 = time.monotonic()
        infra = ["--bootstrap", self.bootstrap, "--namespace", ""]
        out = self._cli("feed", *infra, "--dsn", self.dsn, *self.training_history_args())
        log.info("training_history_imported", seconds=round(time.monotonic() - t0, 1), report=out.strip())

    def objectstore(self) -> Any:
        """The object store's configuration: ports and credentials chosen once per data dir and kept."""
        from ops.embedded.objectstore import ObjectStoreConfig

        if self._objectstore is None:
            self._objectstore = ObjectStoreConfig.prepare(self.layout.data_dir)
        return self._objectstore

    # -- start ---------------------------------------------------------------------------------------

    def start(self) -> None:
        from ops.embedded.supervisor import Supervisor

        self.pg.init()
        programs = self.programs()
        self.supervisor = Supervisor(programs, self.layout.run, self.layout.logs).start()
        names = [p.name for p in programs]
        if "objectstore" in names:
            from ops.embedded.objectstore import EmbeddedObjectStore

            self._start("objectstore")
            store = EmbeddedObjectStore(self.objectstore())  # the running one: a client, not a process
            deadline = time.monotonic() + 60
            while not store.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"object store {store.endpoint} not ready within 60 s")
                time.sleep(0.2)
            store.ensure_bucket("tansu")
        self._start("broker")
        self._run_async(self._broker_ready())
        self._start("postgres")
        self._run_async(self._database_ready())
        agents = ["sink", "market", "models", "trading", "governance", "dashboard", "gates"]
        t0 = time.monotonic()
        self.supervisor.start_programs(agents)
        log.info("programs_started", programs=agents, seconds=round(time.monotonic() - t0, 2))
        if self.opts.live is None:
            self._start("feed")
        else:
            self._training_history()
            self._start("collect")
        self.write_info()
        log.info("platform_started", programs=len(names), seconds=round(time.time() - self.started_at, 1))

    def _start(self, name: str) -> None:
        t0 = time.monotonic()
        self.supervisor.start_program(name)
        log.info(
            "program_started", program=name, pid=self.supervisor.pid(name), seconds=round(time.monotonic() - t0, 2)
        )

    @staticmethod
    def _run_async(coro: Any) -> Any:
        import asyncio

        return asyncio.run(coro)

    async def _broker_ready(self, timeout_s: float = 60.0) -> None:
        from runtime.broker import BrokerLost, ensure_topics, probe

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await probe(self.bootstrap, [], timeout_s=5.0)
                break
            except BrokerLost:
                if time.monotonic() > deadline:
                    raise
                await _sleep(0.2)
        await ensure_topics(self.bootstrap)

    async def _database_ready(self, timeout_s: float = 60.0) -> None:
        from storage.migrate import DatabaseUnreachable, ensure_database, migrate_dsn

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await ensure_database(self.dsn, timeout_s=5.0)
                break
            except DatabaseUnreachable:
                if time.monotonic() > deadline:
                    raise
                await _sleep(0.2)
        applied = await migrate_dsn(self.dsn)
        log.info("database_ready", dsn=self.dsn, migrations_applied=applied)

    def write_info(self) -> None:
        PlatformInfo(
            pid=os.getpid(),
            data_dir=str(self.layout.data_dir),
            bootstrap=self.bootstrap,
            dsn=self.dsn,
            namespace="",
            dashboard_url=self.dashboard_url,
            dashboard_token_file=str(self.layout.dashboard_token_file),
            control_key_id=OPERATOR_KEY_ID,
            control_key_file=str(self.layout.control_key_file),
            broker_storage=self.opts.broker_storage,
            market=self.market_source,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            programs={n: int(s["pid"]) for n, s in self.supervisor.states().items()},
            trading_env={
                k: v
                for k, v in {**os.environ, **self.env()}.items()
                if k.startswith(("TRADEFLOW_TRADING_", "TRADEFLOW_STRATEGY_", "TRADEFLOW_RISK_", "TRADEFLOW_PAPER_"))
            },
            outages=list(self.outages),
        ).write(self.layout)

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.opts.web_host}:{self.ports['dashboard']}/dashboard"

    # -- a model to serve ----------------------------------------------------------------------------

    async def _db(self, query: Callable[[Any], Awaitable[T]]) -> T | _Stopped:
        """``query(conn)`` on a fresh connection. While PostgreSQL is unreachable (supervisord restarting
        it after a crash) it is retried every second, loudly; :data:`STOPPED` at a stop signal."""
        import asyncpg

        attempt = 0
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                try:
                    return await query(conn)
                finally:
                    await conn.close()
            except (
                OSError,
                TimeoutError,
                asyncpg.PostgresConnectionError,
                asyncpg.OperatorInterventionError,
                asyncpg.InterfaceError,
            ) as exc:
                attempt += 1
                log.error("database_unreachable", dsn=self.dsn, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
                if not await self._pause(1.0):
                    return STOPPED

    async def _serving_model(self) -> str | _Stopped | None:
        """``model_id@version`` of a version in an active stage, else None."""
        from storage import registry

        rows = await self._db(lambda conn: registry.current_stages(conn, MODEL_ID))
        if isinstance(rows, _Stopped):
            return rows
        active = [r for r in rows if r["stage"] in ("active", "canary_30", "canary_10")]
        return f"{active[-1]['model_id']}@{active[-1]['version']}" if active else None

    async def _pause(self, seconds: float) -> bool:
        """Sleep while waiting on the platform; False at a stop signal or the end of ``--for`` (give up),
        and keep watching the programs meanwhile (a crash loop stops the platform here too)."""
        self.check()
        if self.stop_requested or (self.until is not None and time.monotonic() >= self.until):
            return False
        await _sleep(seconds)
        return True

    async def _model_bootstrap(self, timeout_s: float = 600.0) -> str | None:
        """Train through ``jobs.train`` once the feed's history is in, then promote by a signed command.
        None when a stop signal or the end of ``--for`` came first."""
        serving = await self._bootstrap_model(timeout_s)
        return None if isinstance(serving, _Stopped) else serving

    async def _bootstrap_model(self, timeout_s: float) -> str | _Stopped | None:
        from agents.features.spec import FEATURE_SET_VERSION
        from storage import registry
        from storage.features import last_open_time
        from topics.records import Timeframe
        from topics.units import NS_PER_HOUR, parse_when

        if (serving := await self._serving_model()) is not None:
            return serving
        live_from = parse_when(self.opts.live_from)
        deadline = time.monotonic() + timeout_s
        while True:  # the feed publishes the history before live_from first, at full speed
            last = await self._db(lambda conn: last_open_time(conn, TRADED_SYMBOL, Timeframe.H1, FEATURE_SET_VERSION))
            if isinstance(last, _Stopped):
                return last
            if last is not None and last >= live_from - NS_PER_HOUR:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"features up to {self.opts.live_from} not stored within {timeout_s:.0f} s")
            if not await self._pause(1.0):
                return None
        job_id = f"up-bootstrap-{int(time.time())}"
        self._cli(
            "train",
            "submit",
            "--job-id",
            job_id,
            "--family",
            "mlp",
            "--symbols",
            TRADED_SYMBOL,
            "--timeframe",
            "1h",
            "--start",
            self.opts.train_from,
            "--end",
            self.opts.live_from,
        )
        log.info("model_training_submitted", job_id=job_id, start=self.opts.train_from, end=self.opts.live_from)
        version = None
        while version is None:
            rows = await self._db(lambda conn: registry.current_stages(conn, MODEL_ID))
            if isinstance(rows, _Stopped):
                return rows
            version = rows[-1]["version"] if rows else None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no model registered for job {job_id} within {timeout_s:.0f} s")
            if not await self._pause(0.5):
                return None
        self._cli(
            "control",
            "rollout",
            "promote",
            "--model-id",
            MODEL_ID,
            "--version",
            version,
            "--to",
            "active",
            "--reason",
            "tradeflow up: first model of this platform",
        )
        while (serving := await self._serving_model()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{MODEL_ID}@{version} not promoted within {timeout_s:.0f} s")
            if not await self._pause(0.5):
                return None
        return serving

    def _cli(self, *args: str) -> str:
        import subprocess

        from ops.embedded.workers import cli_argv

        res = subprocess.run(  # noqa: S603 - our own argv
            cli_argv(*args),
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"tradeflow {' '.join(args[:3])} failed ({res.returncode}): {res.stderr[-1500:]}")
        return res.stdout

    # -- run, watch, stop ----------------------------------------------------------------------------

    def check(self) -> None:
        """One look at every program: log each one that goes down and comes back (loudly: a person
        watching ``tradeflow up`` sees it), start again one that supervisord gave up on while something
        it needs was down, and raise :class:`CrashLoop` when one keeps crashing on its own."""
        from ops.embedded.supervisor import CrashLoop

        now = time.monotonic()
        states = self.supervisor.states()
        changes = [
            change
            for name, info in states.items()
            for change in self.availability.observe(name, info["statename"], int(info["pid"]), now, _why(info))
        ]
        for change in changes:
            self._report(change)
        if changes and self.layout.platform_file.exists():
            self.write_info()  # the new pids, and the outage for `tradeflow status`
        down = self.availability.down()
        for name, info in states.items():
            state = info["statename"]
            outage = self.availability.disturbed(needs(name), now, OUTAGE_GRACE_S)
            reason = self.crashes.observe(name, state, int(info["pid"]), now, excused=bool(outage))
            if reason is not None:
                raise CrashLoop(name, reason, self.supervisor.tail(name))
            if state == "FATAL" and not any(n in down for n in needs(name)):
                # supervisord gave up while what it needs was down (excused above): that is back now
                log.warning("program_started_again", program=name, after_outage_of=outage)
                self.supervisor.start_program(name, wait=False)

    def _report(self, change: Any) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if change.up:
            for o in reversed(self.outages):
                if o["program"] == change.program and o["back_at"] is None:
                    o.update(back_at=at, down_s=round(change.down_s, 1))
                    break
        else:
            self.outages = [
                *self.outages[-(OUTAGES_KEPT - 1) :],
                {"program": change.program, "state": change.state, "down_at": at, "back_at": None, "down_s": None},
            ]
        if change.up:
            log.warning(
                "program_back",
                program=change.program,
                pid=change.pid,
                down_s=round(change.down_s, 1),
                restarts=self.crashes.restarts.get(change.program, 0),
            )
        else:
            log.error(
                "program_down",
                program=change.program,
                state=change.state,
                description=change.description,
                needed_by=[n for n in self.supervisor.programs if change.program in needs(n)],
                action="supervisord restarts it",
            )

    def watch(self) -> None:
        """Poll the programs until a stop signal or the end of ``--for``."""
        while not self.stop_requested and (self.until is None or time.monotonic() < self.until):
            self.check()
            time.sleep(0.5)

    async def summary(self) -> dict[str, Any]:
        import asyncpg

        from storage.status import pipeline_counts

        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            counts = await pipeline_counts(conn)
        finally:
            await conn.close()
        return {"seconds": round(time.time() - self.started_at, 1), **counts, "restarts": self.crashes.restarts}

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.shutdown(order=STOP_ORDER)
            log.info("platform_stopped")
        self.layout.platform_file.unlink(missing_ok=True)


def _why(info: Mapping[str, Any]) -> str:
    """What supervisord knows of why a program is not running (its description of an exit is a date)."""
    if info["statename"] in ("EXITED", "BACKOFF", "FATAL"):
        return str(info.get("spawnerr") or f"exit status {info.get('exitstatus')}")
    return str(info.get("description", ""))


class _Stopped:
    """What :meth:`Platform._db` returns at a stop signal or the end of ``--for`` (the caller gives up)."""


STOPPED = _Stopped()


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def banner(p: Platform, serving: str | None) -> str:
    return "\n".join(
        [
            "",
            "tradeflow is up" + (f", serving {serving}" if serving else ""),
            f"  dashboard   {p.dashboard_url}?token=<the token in {p.layout.dashboard_token_file}>",
            f"  broker      {p.bootstrap}  ({p.opts.broker_storage} storage)",
            f"  market      {p.market_source}",
            f"  database    {p.dsn}",
            f"  logs        {p.layout.logs}/  (supervisorctl -c {p.layout.run / 'supervisord.conf'} status)",
            "  try, in a second shell:",
            "    tradeflow tail signals",
            "    tradeflow status",
            "    tradeflow control kill-switch on --scope global --reason 'drill'",
            "    tradeflow rollout status",
            "    tradeflow control set-limit strategy.entry_threshold 0.08 --reason 'fewer trades'",
            "  Ctrl-C stops the platform; `tradeflow up` again resumes where it stopped.",
            "",
        ]
    )


def up(opts: UpOptions) -> int:
    """Bring the platform up, keep it up until Ctrl-C / SIGTERM / ``run_for_s``; 0 on a clean stop."""
    from ops.embedded.supervisor import CrashLoop
    from runtime.exits import EXIT_FAIL, EXIT_OK

    t0 = time.monotonic()
    if opts.live is not None:
        # the exchange first: offline, `up --live` fails here, before it writes a file or starts a process
        check_live_market(opts.live)
    layout = Layout(opts.data_dir.resolve()).make()
    with exclusive(layout):
        platform = Platform(opts)
        platform.until = None if opts.run_for_s is None else t0 + opts.run_for_s
        previous = {
            s: signal.signal(s, lambda signum, _frame: platform.stop_requested.append(signum)) for s in _stop_signals()
        }
        try:
            platform.start()
            serving = platform._run_async(platform._model_bootstrap())
            if serving is None:
                log.warning("platform_stopped_while_starting", seconds=round(time.monotonic() - t0, 1))
            else:
                platform.write_info()
                print(banner(platform, serving), flush=True)
                log.info("platform_ready", seconds=round(time.monotonic() - t0, 1), serving=serving)
                platform.watch()
        except CrashLoop as exc:
            log.critical("platform_crash_loop", program=exc.program, reason=str(exc).splitlines()[0])
            print(str(exc), file=sys.stderr, flush=True)
            platform.stop()
            return EXIT_FAIL
        except BaseException:
            platform.stop()  # whatever failed, leave no program running
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        try:
            print(json.dumps(platform._run_async(platform.summary())), flush=True)
        finally:
            platform.stop()
        return EXIT_OK
