"""The broker user of a service (``TRADEFLOW_KAFKA_SASL_*``): the aiokafka arguments every client gets,
faust's credentials, and refusals that name variables, never the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.broker import client_security
from runtime.env import ConfigError

PASSWORD = "broker-password-NEVER-LOG-19ad"


def test_no_user_when_read_then_no_security_arguments() -> None:
    assert client_security({}) == {}


def test_user_with_password_file_when_read_then_scram_sha_256_over_sasl_plaintext(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    got = client_security({"TRADEFLOW_KAFKA_SASL_USERNAME": "trading", "TRADEFLOW_KAFKA_SASL_PASSWORD_FILE": str(f)})
    assert got == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "trading",
        "sasl_plain_password": PASSWORD,
    }
    ssl = client_security(
        {
            "TRADEFLOW_KAFKA_SASL_USERNAME": "trading",
            "TRADEFLOW_KAFKA_SASL_PASSWORD": PASSWORD,
            "TRADEFLOW_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "TRADEFLOW_KAFKA_SASL_MECHANISM": "scram-sha-512",
        }
    )
    assert ssl["security_protocol"] == "SASL_SSL" and ssl["sasl_mechanism"] == "SCRAM-SHA-512"
    assert ssl["ssl_context"] is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "TRADEFLOW_KAFKA_SASL_PASSWORD"),
        ({"TRADEFLOW_KAFKA_SASL_PASSWORD": PASSWORD, "TRADEFLOW_KAFKA_SASL_MECHANISM": "GSSAPI"}, "MECHANISM"),
        ({"TRADEFLOW_KAFKA_SASL_PASSWORD": PASSWORD, "TRADEFLOW_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "PROTOCOL"),
    ],
)
def test_user_misconfigured_when_read_then_config_error_without_the_password(
    extra: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        client_security({"TRADEFLOW_KAFKA_SASL_USERNAME": "trading", **extra})
    assert PASSWORD not in str(exc.value)


def test_worker_app_when_a_user_is_set_then_faust_gets_scram_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from faust.auth import SASLCredentials
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from runtime.faust_app import WorkerSettings, create_app

    monkeypatch.setenv("TRADEFLOW_KAFKA_SASL_USERNAME", "features")
    monkeypatch.setenv("TRADEFLOW_KAFKA_SASL_PASSWORD", PASSWORD)
    app = create_app(WorkerSettings(app_id="t-sasl", bootstrap="127.0.0.1:1", data_dir=str(tmp_path)))
    creds = app.conf.broker_credentials
    assert isinstance(creds, SASLCredentials) and PASSWORD not in repr(creds)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert auth["sasl_plain_username"] == "features" and auth["sasl_plain_password"] == PASSWORD
