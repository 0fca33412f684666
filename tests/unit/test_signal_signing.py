"""Signed signals: signing and verification (per model version), the schema change (v1 records still
decode, as unsigned), the trading core refusing an unauthenticated signal (a decision, an alert, no
order, no state change), checkpoints without the secrets, and the configuration from the environment."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.control.signing import Keyring
from agents.execution.paper import PaperConfig
from agents.signals.signing import (
    SignalAuthReason,
    SignalSigner,
    SignalVerifier,
    canonical_payload,
    signal_signer_from_env,
    signal_verifier_from_env,
)
from agents.strategy.engine import SizingReason
from agents.trading.checkpoint import dump_core, load_core, open_checkpoint, seal
from agents.trading.core import TradingConfig, TradingCore
from runtime.env import ConfigError
from tests import builders
from tests.unit.test_trading_determinism import KEYRING, load_bars, stub_signal
from topics.records import Alert, OrderIntent, Signal
from topics.schema import RecordError, codec_for, event_id_for

SECRET = b"signal-test-key-0123456789abcdef-xyz"
SIGNAL_KEYS = Keyring({"inference": SECRET})
SIGNER = SignalSigner(SIGNAL_KEYS, "inference")
CODEC = codec_for(Signal)


def _verifier(require: bool = True) -> SignalVerifier:
    return SignalVerifier(SIGNAL_KEYS, require_signed=require)


def _reidentified(sig: Signal, **changes: Any) -> Signal:
    """``sig`` with fields changed after signing, its id re-derived, the signature kept."""
    changed = dataclasses.replace(sig, **changes)
    eid = event_id_for(Signal.KIND, *(getattr(changed, f) for f in Signal.IDENTITY))
    return dataclasses.replace(changed, event_id=eid, correlation_id=eid)


# ---------------------------------------------------------------------------
# signing and verification
# ---------------------------------------------------------------------------


def test_signed_signal_when_sent_over_the_wire_then_verifies() -> None:
    signed = SIGNER.sign(builders.signal(score=0.4, p_up=0.7, p_flat=0.1, p_down=0.2))
    assert signed.key_id == "inference" and (signed.signature or "").startswith("hmac-sha256:")
    wire = CODEC.decode(CODEC.encode(signed))
    assert _verifier().verify(wire).reason is SignalAuthReason.SIGNED
    assert _verifier().verify(signed).ok


def test_signal_signed_with_integers_where_floats_go_then_still_verifies_after_decoding() -> None:
    raw = dataclasses.replace(builders.signal(score=0.0), p_up=1, p_flat=0, p_down=0, expected_return=0, score=0)
    assert _verifier().verify(CODEC.decode(CODEC.encode(SIGNER.sign(raw)))).ok


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"score": 0.99}, SignalAuthReason.BAD_SIGNATURE),  # a field changed after signing
        ({"expected_return": 0.5}, SignalAuthReason.BAD_SIGNATURE),
        ({"model_version": "2"}, SignalAuthReason.BAD_SIGNATURE),  # another version's key
        ({"ts_event": builders.T0 + 3_600_000_000_000}, SignalAuthReason.BAD_SIGNATURE),
        ({"key_id": "other"}, SignalAuthReason.UNKNOWN_KEY),
        ({"signature": "hmac-sha256:xyz"}, SignalAuthReason.MALFORMED_SIGNATURE),
        ({"signature": "sha1:" + "0" * 64}, SignalAuthReason.MALFORMED_SIGNATURE),
        ({"signature": "hmac-sha256:" + "0" * 64}, SignalAuthReason.BAD_SIGNATURE),
        ({"signature": None}, SignalAuthReason.MALFORMED_SIGNATURE),  # a key id without a signature
        ({"key_id": None, "signature": None}, SignalAuthReason.UNSIGNED),
    ],
)
def test_tampered_or_unsigned_signal_when_verified_then_refused_with_its_reason(
    change: dict[str, Any], reason: SignalAuthReason
) -> None:
    signed = SIGNER.sign(builders.signal(score=0.5))
    verdict = _verifier().verify(_reidentified(signed, **change))
    assert not verdict.ok and verdict.reason is reason


def test_signature_of_another_key_when_verified_then_bad_signature() -> None:
    other = SignalSigner(Keyring({"inference": b"an-attacker-guessed-key-0123456789abcdef"}), "inference")
    assert _verifier().verify(other.sign(builders.signal(score=0.5))).reason is SignalAuthReason.BAD_SIGNATURE


def test_require_signed_off_when_verified_then_unsigned_accepted_and_bad_signature_still_refused() -> None:
    lenient = _verifier(require=False)
    assert lenient.verify(builders.signal(score=0.5)).reason is SignalAuthReason.UNSIGNED_ACCEPTED
    forged = dataclasses.replace(SIGNER.sign(builders.signal(score=0.5)), score=0.9)
    assert lenient.verify(forged).reason is SignalAuthReason.BAD_SIGNATURE


def test_canonical_payload_when_read_then_covers_every_field_but_the_signature() -> None:
    signed = SIGNER.sign(builders.signal(score=0.5))
    fields = orjson.loads(canonical_payload(signed).split(b"\n", 1)[1])
    assert len(fields) == len(dataclasses.fields(Signal)) - 1
    assert signed.signature not in fields and "inference" in fields


def test_signer_and_verifier_when_shown_or_pickled_then_no_secret() -> None:
    for obj in (SIGNER, _verifier()):
        assert SECRET.decode() not in repr(obj)
    with pytest.raises(TypeError):
        pickle.dumps(_verifier())


# ---------------------------------------------------------------------------
# schema: v2, v1 still decodes
# ---------------------------------------------------------------------------


def test_v1_signal_when_decoded_then_read_as_an_unsigned_v2() -> None:
    wire = orjson.loads(CODEC.encode(builders.signal(score=0.5)))
    assert wire["schema_version"] == 2
    del wire["key_id"], wire["signature"]
    old = CODEC.decode(orjson.dumps({**wire, "schema_version": 1}))
    assert old.schema_version == 2 and old.key_id is None and old.signature is None
    assert old.event_id == wire["event_id"]
    with pytest.raises(RecordError):  # a v1 object carrying the v2 fields is not upgraded
        CODEC.decode(orjson.dumps({**wire, "schema_version": 1, "key_id": "k", "signature": "x"}))
    with pytest.raises(RecordError):  # a version nobody wrote
        CODEC.decode(orjson.dumps({**wire, "schema_version": 3, "key_id": None, "signature": None}))


# ---------------------------------------------------------------------------
# the trading core
# ---------------------------------------------------------------------------


def _core(verifier: SignalVerifier | None) -> tuple[TradingCore, Signal]:
    bars = load_bars()
    core = TradingCore(TradingConfig(paper=PaperConfig()), KEYRING, verifier)
    for i in range(10):
        core.on_bar(bars[i])
    signal = dataclasses.replace(stub_signal(bars, 9), score=0.9, expected_return=0.02, shadow=False)
    return core, signal


def test_core_with_a_verifier_when_a_signed_signal_arrives_then_an_order() -> None:
    core, signal = _core(_verifier())
    step = core.on_signal(SIGNER.sign(signal))
    assert [type(r).__name__ for r in step.records][:2] == ["OrderIntent", "RiskDecision"]
    assert step.sizing is not None and step.sizing.reason is SizingReason.ORDER


@pytest.mark.parametrize("kind", ["unsigned", "forged", "other_key"])
def test_core_with_a_verifier_when_an_unauthenticated_signal_arrives_then_alert_and_nothing_else(kind: str) -> None:
    core, signal = _core(_verifier())
    bad = {
        "unsigned": signal,
        "forged": dataclasses.replace(SIGNER.sign(dataclasses.replace(signal, score=0.1)), score=0.9),
        "other_key": SignalSigner(Keyring({"inference": b"x" * 40}), "inference").sign(signal),
    }[kind]
    before = dump_core(core)
    step = core.on_signal(bad, arrival_ns=bad.ts_event + 10**12)
    assert dump_core(core) == before  # no state moved, not even the clocks
    (alert,) = step.records
    assert isinstance(alert, Alert) and alert.code == "signal_unauthenticated"
    assert alert.labels["reason"] in ("unsigned", "bad_signature") and alert.causation_id == bad.event_id
    assert codec_for(Alert).decode(codec_for(Alert).encode(alert)) == alert
    assert step.sizing is not None and step.sizing.reason is SizingReason.SIGNAL_UNAUTHENTICATED
    assert step.sizing.intent is None and not step.to_submit
    # the authentic signal with the same identity still trades afterwards
    after = core.on_signal(SIGNER.sign(signal))
    assert any(isinstance(r, OrderIntent) for r in after.records)


def test_core_without_a_verifier_when_an_unsigned_signal_arrives_then_an_order_as_before() -> None:
    core, signal = _core(None)
    assert any(isinstance(r, OrderIntent) for r in core.on_signal(signal).records)


def test_core_with_a_verifier_when_checkpointed_then_no_secret_in_the_state_and_restore_reattaches() -> None:
    core, signal = _core(_verifier())
    state = dump_core(core)
    assert SECRET not in state
    assert load_core(state, KEYRING).signal_verifier is None  # the restore re-attaches the live one
    cp = seal(core, config_hash="h", offsets={"signals": {0: 1}}, events_applied=1, keyring=KEYRING)
    restored = open_checkpoint(cp, KEYRING, account=core.config.account, config_hash="h")
    assert restored.signal_verifier is None
    restored.signal_verifier = core.signal_verifier  # what agents.trading.checkpointer.restore does
    assert any(isinstance(r, OrderIntent) for r in restored.on_signal(SIGNER.sign(signal)).records)
    assert not any(isinstance(r, OrderIntent) for r in restored.on_signal(_reidentified(signal, score=0.8)).records)


# ---------------------------------------------------------------------------
# configuration from the environment
# ---------------------------------------------------------------------------


def test_verifier_from_env_when_configured_then_required_by_default_and_refusals_named(tmp_path: Path) -> None:
    assert signal_verifier_from_env({}) is None  # no key: signals unverified (the agent warns)
    key = tmp_path / "k"
    key.write_text(SECRET.decode())
    v = signal_verifier_from_env({"TRADEFLOW_SIGNAL_KEY_INFERENCE_FILE": str(key)})
    assert v is not None and v.require_signed and v.key_ids == ("inference",)
    v = signal_verifier_from_env(
        {"TRADEFLOW_SIGNAL_KEY_INFERENCE": SECRET.decode(), "TRADEFLOW_SIGNAL_REQUIRE_SIGNED": "0"}
    )
    assert v is not None and not v.require_signed
    with pytest.raises(ConfigError, match="no signal key"):
        signal_verifier_from_env({"TRADEFLOW_SIGNAL_REQUIRE_SIGNED": "1"})
    with pytest.raises(ConfigError, match=r"TRADEFLOW_SIGNAL_KEY_.*'inference'") as exc:
        signal_verifier_from_env({"TRADEFLOW_SIGNAL_KEY_INFERENCE": "short"})
    assert "short" not in str(exc.value)


def test_signer_from_env_when_configured_then_signs_with_the_named_key() -> None:
    assert signal_signer_from_env({}) is None
    two = {"TRADEFLOW_SIGNAL_KEY_A": "a" * 32, "TRADEFLOW_SIGNAL_KEY_B": "b" * 32}
    with pytest.raises(ConfigError, match="TRADEFLOW_SIGNAL_SIGNING_KEY_ID"):
        signal_signer_from_env(two)
    signer = signal_signer_from_env({**two, "TRADEFLOW_SIGNAL_SIGNING_KEY_ID": "B"})
    assert signer is not None and signer.key_id == "b"
    with pytest.raises(ConfigError, match="not in the keyring"):
        signal_signer_from_env({**two, "TRADEFLOW_SIGNAL_SIGNING_KEY_ID": "c"})
