"""``parse_notification``: Alertmanager's webhook payload (version 4) -> typed alerts, or a reason code.

The payload shape is Alertmanager's own (notify/webhook and template.Data); the real Alertmanager posts
it to the real receiver in tests/integration/test_alerting.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ops.observability.alert_receiver import BadNotification, parse_listen, parse_notification


def payload() -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}/{severity="P1"}:{alertname="KillSwitchEngaged"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ops-page",
        "groupLabels": {"alertname": "KillSwitchEngaged"},
        "commonLabels": {"alertname": "KillSwitchEngaged", "severity": "P1"},
        "commonAnnotations": {},
        "externalURL": "http://am:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "KillSwitchEngaged", "severity": "P1", "account": "paper"},
                "annotations": {"summary": "1 kill switch(es) in force on account paper"},
                "startsAt": "2026-12-05T04:40:01.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prom:9090/graph?g0.expr=x",
                "fingerprint": "c0ffee0123456789",
            },
            {
                "status": "resolved",
                "labels": {"alertname": "KillSwitchEngaged", "severity": "P1", "account": "live"},
                "annotations": {},
                "startsAt": "2026-12-05T05:40:01+01:00",
                "endsAt": "2026-12-05T04:50:00Z",
                "generatorURL": "",
                "fingerprint": "0123abcd",
            },
        ],
    }


def test_a_notification_when_parsed_then_one_alert_each_with_utc_times_and_no_end_while_firing() -> None:
    firing, resolved = parse_notification(orjson.dumps(payload()))
    assert firing.receiver == resolved.receiver == "ops-page"
    assert firing.group_key == payload()["groupKey"]
    assert (firing.status, firing.fingerprint, firing.alertname) == ("firing", "c0ffee0123456789", "KillSwitchEngaged")
    assert firing.starts_at == datetime(2026, 12, 5, 4, 40, 1, 123456, tzinfo=UTC)  # Go's nanoseconds cut to us
    assert firing.ends_at is None  # Alertmanager's zero time while firing
    assert firing.labels["account"] == "paper"
    assert firing.annotations == {"summary": "1 kill switch(es) in force on account paper"}
    assert resolved.status == "resolved"
    assert resolved.starts_at == datetime(2026, 12, 5, 4, 40, 1, tzinfo=UTC)  # +01:00 to UTC
    assert resolved.ends_at == datetime(2026, 12, 5, 4, 50, tzinfo=UTC)
    assert resolved.generator_url == ""


def _broken(path: tuple[Any, ...], value: Any = None, delete: bool = False) -> bytes:
    doc = copy.deepcopy(payload())
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("body", "reason", "names"),
    [
        (b"", "not_json", ""),
        (b'{"version": "4", ', "not_json", ""),
        (b"[1, 2]", "not_an_object", "list"),
        (_broken(("version",), "3"), "unsupported_version", "'3'"),
        (_broken(("version",), delete=True), "missing_field", "version"),
        (_broken(("receiver",), ""), "bad_field", "receiver"),
        (_broken(("groupKey",), delete=True), "missing_field", "groupKey"),
        (_broken(("status",), "pending"), "bad_field", "status"),
        (_broken(("alerts",), []), "no_alerts", ""),
        (_broken(("alerts",), {"a": 1}), "bad_field", "alerts must be a list"),
        (_broken(("alerts", 0), "x"), "bad_field", "alerts[0]"),
        (_broken(("alerts", 1, "status"), "ok"), "bad_field", "alerts[1].status"),
        (_broken(("alerts", 0, "labels"), {"alertname": 1}), "bad_field", "alerts[0].labels"),
        (_broken(("alerts", 0, "labels"), {"severity": "P1"}), "missing_field", "alerts[0].labels.alertname"),
        (_broken(("alerts", 0, "annotations"), delete=True), "missing_field", "alerts[0].annotations"),
        (_broken(("alerts", 0, "fingerprint"), "not hex!"), "bad_field", "alerts[0].fingerprint"),
        (_broken(("alerts", 0, "fingerprint"), delete=True), "missing_field", "alerts[0].fingerprint"),
        (_broken(("alerts", 0, "startsAt"), "yesterday"), "bad_field", "alerts[0].startsAt"),
        (_broken(("alerts", 0, "startsAt"), "2026-12-05T04:40:01"), "bad_field", "time zone"),
        (_broken(("alerts", 0, "startsAt"), "0001-01-01T00:00:00Z"), "bad_field", "zero time"),
        (_broken(("alerts", 1, "endsAt"), "0001-01-01T00:00:00Z"), "bad_field", "alerts[1].endsAt"),
        (_broken(("alerts", 1, "generatorURL"), None), "bad_field", "alerts[1].generatorURL"),
        (_broken(("alerts", 0, "labels"), {"alertname": "A\x00"}), "bad_field", "alerts[0].labels"),
        (_broken(("alerts", 0, "annotations"), {"x\x00": "y"}), "bad_field", "alerts[0].annotations"),
        (_broken(("receiver",), "ops\x00"), "bad_field", "without NUL"),
    ],
)
def test_a_bad_payload_when_parsed_then_bad_notification_with_a_stable_reason(
    body: bytes, reason: str, names: str
) -> None:
    with pytest.raises(BadNotification) as err:
        parse_notification(body)
    assert err.value.reason == reason
    assert names in err.value.detail


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9095", ("127.0.0.1", 9095)), ("0.0.0.0:1", ("0.0.0.0", 1)), ("[::1]:80", ("::1", 80))],
)
def test_listen_when_host_port_then_split(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9095", ":9095", "host:", "host:port", "host:0", "host:70000"])
def test_listen_when_not_host_port_then_value_error(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(listen)
