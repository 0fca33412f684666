"""The durable log's configuration, no process started: credentials and ports
made once per data dir and reused, file modes, and the secret kept out of
``repr``, argv and logs. The processes themselves:
tests/integration/test_durable_broker.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from dataclasses import asdict
from pathlib import Path

import pytest

from ops.embedded.broker import MEMORY_STORAGE, DurableBroker, EmbeddedBroker, _shown
from ops.embedded.objectstore import ObjectStoreConfig, ObjectStoreError, ObjectStorePorts, write_file
from runtime.errors import NeedsOperator


def test_prepare_twice_then_same_credentials_ports_and_endpoint(tmp_path: Path) -> None:
    first = ObjectStoreConfig.prepare(tmp_path)
    second = ObjectStoreConfig.prepare(tmp_path)
    assert second == first
    assert second.credentials.secret_key == first.credentials.secret_key
    assert second.endpoint == first.endpoint == f"http://127.0.0.1:{first.ports.s3}"
    assert ObjectStoreConfig.prepare(tmp_path / "other").credentials != first.credentials


def test_prepare_then_secret_files_owner_only_from_their_creation(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask: the mode is given at os.open
    try:
        config = ObjectStoreConfig.prepare(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(config.root.stat().st_mode) == 0o700
    for path in (config.credentials_path, config.identities_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(config.credentials_path.read_text())
    assert doc == {"access_key": config.credentials.access_key, "secret_key": config.credentials.secret_key}
    assert len(config.credentials.secret_key) == 64
    identity = json.loads(config.identities_path.read_text())["identities"][0]
    assert identity["credentials"] == [
        {"accessKey": config.credentials.access_key, "secretKey": config.credentials.secret_key}
    ]
    assert not list(config.root.glob(".*tmp"))


def test_first_writes_racing_then_one_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    assert write_file(path, b"first", 0o600, replace=False)
    assert not write_file(path, b"second", 0o600, replace=False)
    assert path.read_bytes() == b"first" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert write_file(path, b"third", 0o600, replace=True) and path.read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials.json"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_credentials_readable_by_others_then_refused(tmp_path: Path, mode: int) -> None:
    config = ObjectStoreConfig.prepare(tmp_path)
    config.credentials_path.chmod(mode)
    with pytest.raises(ObjectStoreError, match="chmod 600") as err:
        ObjectStoreConfig.prepare(tmp_path)
    assert isinstance(err.value, NeedsOperator)
    assert config.credentials.secret_key not in str(err.value)


def test_credentials_file_corrupt_then_refused_without_its_content(tmp_path: Path) -> None:
    config = ObjectStoreConfig.prepare(tmp_path)
    config.credentials_path.write_text('{"access_key": "a", "secret": "leak-me"')
    with pytest.raises(ObjectStoreError) as err:
        ObjectStoreConfig.prepare(tmp_path)
    assert "leak-me" not in str(err.value)


def test_config_then_secret_in_client_env_only(tmp_path: Path) -> None:
    config = ObjectStoreConfig.prepare(tmp_path)
    secret = config.credentials.secret_key
    assert secret not in repr(config)
    assert config.credentials.access_key in repr(config)
    assert secret not in " ".join(config.argv())
    assert config.env_for_clients() == {
        "AWS_ACCESS_KEY_ID": config.credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT": config.endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_ports_then_distinct_all_explicit_in_argv_on_loopback(tmp_path: Path) -> None:
    config = ObjectStoreConfig.prepare(tmp_path)
    ports = asdict(config.ports)
    assert len(set(ports.values())) == len(ports) == 8
    argv = config.argv()
    for name, port in ports.items():
        flag = "-" + name.replace("_grpc", ".port.grpc") if name.endswith("_grpc") else f"-{name}.port"
        assert f"{flag}={port}" in argv
    assert "-ip.bind=127.0.0.1" in argv and f"-s3.config={config.identities_path}" in argv
    assert f"-dir={config.data_path}" in argv and "-master.telemetry=false" in argv
    assert json.loads((config.root / "ports.json").read_text()) == ports


def test_ports_in_use_then_listed_busy(tmp_path: Path) -> None:
    ports = ObjectStorePorts.choose()
    assert ports.busy() == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.s3))
        s.listen()
        assert ports.busy() == [ports.s3]


def test_broker_default_then_memory_engine_and_no_env() -> None:
    b = EmbeddedBroker()
    assert b.storage == MEMORY_STORAGE and dict(b.env) == {}
    argv = b.argv()
    assert b.port != 0 and argv[-2:] == ["--storage-engine", MEMORY_STORAGE]
    assert f"tcp://127.0.0.1:{b.port}" in argv
    assert b.argv() == argv  # the port, once chosen, stays


def test_broker_env_then_in_child_env_not_in_repr_or_argv() -> None:
    b = EmbeddedBroker(port=1234, storage="s3://tansu/", env={"AWS_SECRET_ACCESS_KEY": "hush-123"})
    assert b.child_env()["AWS_SECRET_ACCESS_KEY"] == "hush-123"
    assert b.child_env()["PATH"] == os.environ["PATH"]
    assert "hush-123" not in repr(b) and "hush-123" not in " ".join(b.argv())
    assert _shown("postgres://u:pw@h:5432/db") == "postgres://***@h:5432/db"
    assert _shown("s3://tansu/") == "s3://tansu/"


def test_durable_broker_constructed_then_files_ready_and_same_addresses_next_time(tmp_path: Path) -> None:
    first = DurableBroker(tmp_path)
    assert first.broker.storage == "s3://tansu/" and first.broker.port != 0
    assert dict(first.broker.env) == first.object_store.config.env_for_clients()
    assert first.object_store.proc is None and first.broker.proc is None  # nothing started
    second = DurableBroker(tmp_path, bucket="other")
    assert second.bootstrap == first.bootstrap and second.object_store.config == first.object_store.config
    assert second.broker.storage == "s3://other/"
    assert first.object_store.config.credentials.secret_key not in repr(first)
