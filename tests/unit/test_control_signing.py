"""Control-event signing and verification: authentic commands pass once;
forged, altered, unsigned, unknown-key, expired, stale, future and replayed
ones are refused with a reason code; nothing raises; secrets never show."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from agents.control.signing import (
    ControlVerifier,
    Keyring,
    VerifierConfig,
    VerifyReason,
    canonical_payload,
    load_keyring,
    new_control_event,
    sign_control_event,
)
from runtime.env import ConfigError
from tests.factories import strategy_for
from topics.records import ControlCommand, ControlEvent
from topics.schema import codec_for
from topics.units import NS_PER_SECOND as S

NOW = 1_609_459_200_000_000_000 + 3600 * S
SECRET = b"s" * 40
OTHER_SECRET = b"o" * 40
KEYRING = Keyring({"ops1": SECRET})


def command(
    nonce: str = "n-1",
    *,
    ts: int = NOW,
    expires_at: int | None = NOW + 60 * S,
    key_id: str = "ops1",
    keyring: Keyring = KEYRING,
    **params: float,
) -> ControlEvent:
    return new_control_event(
        command=ControlCommand.KILL_SWITCH_ON,
        scope="global",
        target="*",
        params=params,
        reason="drill",
        operator="alice",
        key_id=key_id,
        nonce=nonce,
        ts_event=ts,
        ts_init=ts,
        expires_at=expires_at,
        keyring=keyring,
    )


def test_signed_command_then_verifies_once_and_replay_is_refused() -> None:
    verifier = ControlVerifier(KEYRING)
    event = command()
    assert verifier.verify(event, NOW).ok
    again = verifier.verify(event, NOW + S)
    assert not again.ok and again.reason is VerifyReason.REPLAYED


def test_signed_command_through_the_wire_codec_then_still_verifies() -> None:
    codec = codec_for(ControlEvent)
    event = command(duration_s=1.5)
    assert ControlVerifier(KEYRING).verify(codec.decode(codec.encode(event)), NOW).ok


_TAMPERED: dict[str, Any] = {
    "command": ControlCommand.KILL_SWITCH_OFF,
    "scope": "track",
    "target": "live",
    "params": {"duration_s": 1},
    "reason": "other",
    "operator": "mallory",
    "nonce": "n-2",
    "expires_at": NOW + 3600 * S,
    "ts_event": NOW + S,
    "ts_init": NOW + S,
    "event_id": "x" * 32,
    "correlation_id": "c",
    "causation_id": "c",
}


@pytest.mark.parametrize("field", sorted(_TAMPERED))
def test_any_field_altered_after_signing_then_bad_signature(field: str) -> None:
    event = dataclasses.replace(command(), **{field: _TAMPERED[field]})
    verdict = ControlVerifier(KEYRING).verify(event, NOW)
    assert not verdict.ok and verdict.reason is VerifyReason.BAD_SIGNATURE


def test_signed_with_another_secret_then_forged() -> None:
    forged = command(keyring=Keyring({"ops1": OTHER_SECRET}))
    verdict = ControlVerifier(KEYRING).verify(forged, NOW)
    assert verdict.reason is VerifyReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("", VerifyReason.UNSIGNED),
        ("hmac-sha256:zz", VerifyReason.MALFORMED_SIGNATURE),
        ("ed25519:" + "0" * 64, VerifyReason.MALFORMED_SIGNATURE),
    ],
)
def test_unsigned_or_malformed_signature_then_refused(signature: str, reason: VerifyReason) -> None:
    event = dataclasses.replace(command(), signature=signature)
    assert ControlVerifier(KEYRING).verify(event, NOW).reason is reason


def test_unknown_key_id_then_refused() -> None:
    event = command(key_id="ops9", keyring=Keyring({"ops9": SECRET}))
    assert ControlVerifier(KEYRING).verify(event, NOW).reason is VerifyReason.UNKNOWN_KEY


def test_expires_at_in_the_past_then_expired() -> None:
    event = command(expires_at=NOW - 1)
    assert ControlVerifier(KEYRING).verify(event, NOW).reason is VerifyReason.EXPIRED


def test_ts_event_older_than_max_age_then_stale() -> None:
    event = command(ts=NOW - 301 * S, expires_at=None)
    assert ControlVerifier(KEYRING).verify(event, NOW).reason is VerifyReason.STALE


def test_ts_event_far_in_the_future_then_not_yet_valid() -> None:
    event = command(ts=NOW + 31 * S)
    assert ControlVerifier(KEYRING).verify(event, NOW).reason is VerifyReason.NOT_YET_VALID


def test_refused_command_then_nonce_not_consumed() -> None:
    verifier = ControlVerifier(KEYRING)
    forged = command(keyring=Keyring({"ops1": OTHER_SECRET}))
    assert not verifier.verify(forged, NOW).ok
    assert verifier.nonce_count == 0
    assert verifier.verify(command(), NOW).ok


def test_nonces_older_than_the_window_then_forgotten_and_cache_bounded() -> None:
    verifier = ControlVerifier(KEYRING, VerifierConfig(max_age_ns=10 * S, max_future_skew_ns=S, max_nonces=2))
    assert verifier.verify(command("a"), NOW).ok
    assert verifier.verify(command("b"), NOW).ok
    full = verifier.verify(command("c"), NOW)
    assert full.reason is VerifyReason.NONCE_CACHE_FULL  # fail closed: never evict a live nonce
    later = NOW + 20 * S
    assert verifier.verify(command("c", ts=later, expires_at=None), later).ok
    assert verifier.nonce_count == 1
    # The forgotten nonce "a" is still refused: as stale, by time.
    assert verifier.verify(command("a"), later).reason is VerifyReason.STALE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(strategy_for(ControlEvent))
def test_arbitrary_control_events_then_verdict_never_exception(event: ControlEvent) -> None:
    verdict = ControlVerifier(KEYRING).verify(event, NOW)
    assert not verdict.ok
    assert isinstance(verdict.reason, VerifyReason)


def test_garbage_in_record_fields_then_malformed_not_raised() -> None:
    event = dataclasses.replace(command(), params={"x": object()})  # type: ignore[dict-item]  # not JSON on purpose
    assert ControlVerifier(KEYRING).verify(event, NOW).reason is VerifyReason.MALFORMED


def test_canonical_payload_then_excludes_signature_only() -> None:
    event = command()
    assert canonical_payload(event) == canonical_payload(dataclasses.replace(event, signature="anything"))
    assert b'"signature"' not in canonical_payload(event)
    assert b'"nonce":"n-1"' in canonical_payload(event)
    assert canonical_payload(event).startswith(b"tradeflow.control.v1\n")


def test_keyring_repr_and_errors_then_never_show_the_secret(tmp_path: Path) -> None:
    secret = "correct-horse-battery-staple-0123456789"
    keyring = load_keyring({"TRADEFLOW_CONTROL_KEY_OPS1": secret, "UNRELATED": "x"})
    assert keyring.key_ids == ("ops1",)
    assert keyring.secret("ops1") == secret.encode()
    assert secret not in repr(keyring) and secret not in str(keyring)
    with pytest.raises(TypeError):
        pickle.dumps(keyring)
    with pytest.raises(ValueError) as short:
        load_keyring({"TRADEFLOW_CONTROL_KEY_OPS2": "too-short-secret"})
    assert "too-short-secret" not in str(short.value)


def test_keyring_from_file_and_hex_then_loaded(tmp_path: Path) -> None:
    key_file = tmp_path / "ops.key"
    key_file.write_text("hex:" + "ab" * 32 + "\n", encoding="utf-8")
    keyring = load_keyring({"TRADEFLOW_CONTROL_KEY_OPS1_FILE": str(key_file)})
    assert keyring.secret("ops1") == bytes.fromhex("ab" * 32)
    event = command(keyring=keyring)
    assert ControlVerifier(keyring).verify(event, NOW).ok


def test_keyring_misconfigured_then_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no control keys"):
        load_keyring({})
    with pytest.raises(ValueError, match="defined twice"):
        path = tmp_path / "k"
        path.write_text("k" * 40, encoding="utf-8")
        load_keyring({"TRADEFLOW_CONTROL_KEY_A": "a" * 40, "TRADEFLOW_CONTROL_KEY_A_FILE": str(path)})
    with pytest.raises(ValueError, match="cannot read"):
        load_keyring({"TRADEFLOW_CONTROL_KEY_A_FILE": str(tmp_path / "missing")})


def test_keyring_blank_or_bad_secrets_then_config_errors_naming_the_variable(tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n", encoding="utf-8")
    cases = [
        ({"TRADEFLOW_CONTROL_KEY_OPS1": "  "}, "at least 32 bytes"),  # set but blank: too short, not absent
        ({"TRADEFLOW_CONTROL_KEY_OPS1_FILE": str(empty)}, "TRADEFLOW_CONTROL_KEY_OPS1_FILE"),
        ({"TRADEFLOW_CONTROL_KEY_OPS1": "hex:zz" + "a" * 64}, "TRADEFLOW_CONTROL_KEY_OPS1: value after 'hex:'"),
        ({"TRADEFLOW_CONTROL_KEY_OPS1": "a" * 40, "TRADEFLOW_CONTROL_KEY_ops1": "b" * 40}, "defined twice"),
    ]
    for env, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_keyring(env)


def test_keyring_file_variable_then_not_paired_with_a_key_named_like_it(tmp_path: Path) -> None:
    """``<ID>_FILE_FILE`` is the file of key ``<id>_file``; ``<ID>_FILE`` stays the file of key ``<id>``."""
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    a.write_text("a" * 40, encoding="utf-8")
    b.write_text("b" * 40, encoding="utf-8")
    keyring = load_keyring({"TRADEFLOW_CONTROL_KEY_X_FILE": str(a), "TRADEFLOW_CONTROL_KEY_X_FILE_FILE": str(b)})
    assert keyring.secret("x") == b"a" * 40 and keyring.secret("x_file") == b"b" * 40


def test_sign_with_unknown_key_then_key_error() -> None:
    event = dataclasses.replace(command(), key_id="nope", signature="")
    with pytest.raises(KeyError):
        sign_control_event(event, KEYRING)
