"""Model governance engine: gate windows promote a shadow model up the ladder,
failing windows roll it back (restoring the previous active version), every
decision is audited; manual commands act only with a verified signature.
Engine unit tests: no broker, records built in process."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from agents.control.signing import Keyring, new_control_event
from agents.governance.config import GovernanceConfig, capital_fraction, next_stage
from agents.governance.engine import GovernanceEngine, Step, track_for
from tests import builders
from topics.records import (
    Alert,
    ControlAudit,
    ControlCommand,
    ControlEvent,
    ControlOutcome,
    GateResult,
    GateStatus,
    ModelRegistryEvent,
    ModelStage,
    RolloutAction,
    RolloutDecision,
    RolloutTrigger,
)
from topics.schema import Record, codec_for
from topics.units import NS_PER_DAY as DAY

KEYRING = Keyring({"ops1": b"g" * 40})
T0 = 1_700_000_000_000_000_000
MODEL = "mlp-btcusdt-1h"
BTC = "BTC/USDT"
REQUIRED = ("hard_metrics:sharpe_daily", "hard_metrics:max_drawdown", "parity:deviation_30d")
P, F, I = GateStatus.PASSED, GateStatus.FAILED, GateStatus.INSUFFICIENT_OBSERVATION  # noqa: E741


def config(**overrides: object) -> GovernanceConfig:
    kwargs: dict[str, object] = {"windows_to_promote": 2, "windows_to_rollback": 2, "required_gates": REQUIRED}
    kwargs.update(overrides)
    return GovernanceConfig(**kwargs)  # type: ignore[arg-type]


def registry(
    version: str, stage: ModelStage, ts: int, *, model_id: str = MODEL, symbol: str = BTC
) -> ModelRegistryEvent:
    return builders.registry_event(
        version=version,
        stage=stage,
        ts=ts,
        model_id=model_id,
        config={"symbol": symbol, "timeframe": "1h", "window": 8},
        data_start=T0 - 400 * DAY,
        data_end=T0 - 100 * DAY,
        seed=7,
        metrics={"val_ic": 0.03},
        checkpoint_path=f"/m/{version}.ckpt",
    )


def gate(req: str, status: GateStatus, end: int, *, track: str = MODEL, ts: int | None = None) -> GateResult:
    g, _, metric = req.partition(":")
    return builders.gate_result(
        status=status,
        value=None if status is I else (2.0 if status is P else 0.1),
        gate=g,
        track=track,
        metric=metric,
        window_end=end,
        observations=0 if status is I else 30,
        ts=end if ts is None else ts,
        ts_init=end,
    )


def window(
    engine: GovernanceEngine, day: int, statuses: Sequence[GateStatus] | GateStatus, *, track: str = MODEL
) -> Step:
    """All required gate results of window ``day``; returns the step of the result that completed it."""
    per = [statuses] * len(REQUIRED) if isinstance(statuses, GateStatus) else list(statuses)
    steps = [engine.on_gate(gate(req, st, T0 + day * DAY, track=track)) for req, st in zip(REQUIRED, per, strict=True)]
    assert all(not s.records for s in steps[:-1]), "a window is only decided once complete"
    return steps[-1]


def engine_with_active_and_shadow(cfg: GovernanceConfig | None = None) -> GovernanceEngine:
    eng = GovernanceEngine(cfg or config(), KEYRING)
    eng.on_registry(registry("v1", ModelStage.REGISTERED, T0 - 20 * DAY))
    eng.on_registry(registry("v1", ModelStage.ACTIVE, T0 - 19 * DAY))
    eng.on_registry(registry("v2", ModelStage.REGISTERED, T0 - 10 * DAY))
    eng.on_registry(registry("v2", ModelStage.SHADOW, T0 - 9 * DAY))
    return eng


def decisions(step: Step) -> list[RolloutDecision]:
    return [r for r in step.records if isinstance(r, RolloutDecision)]


def stages(step: Step) -> list[tuple[str, ModelStage]]:
    return [(r.version, r.stage) for r in step.records if isinstance(r, ModelRegistryEvent)]


def control(
    command: ControlCommand, version: str, nonce: str, ts: int, *, model_id: str = MODEL, keyring: Keyring = KEYRING
) -> ControlEvent:
    return new_control_event(
        command=command,
        scope="model",
        target=model_id,
        params={"model_id": model_id, "version": version},
        reason="operator drill",
        operator="alice",
        key_id="ops1",
        nonce=nonce,
        ts_event=ts,
        ts_init=ts,
        expires_at=None,
        keyring=keyring,
    )


def wire(records: Sequence[Record]) -> list[bytes]:
    return [codec_for(type(r)).encode(r) for r in records]


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


def test_default_config_when_built_then_ladder_fractions_and_stable_hash() -> None:
    cfg = GovernanceConfig()
    assert [
        capital_fraction(s) for s in (ModelStage.SHADOW, ModelStage.CANARY_10, ModelStage.CANARY_30, ModelStage.ACTIVE)
    ] == [0.0, 0.1, 0.3, 1.0]
    for off in (ModelStage.REGISTERED, ModelStage.RETIRED, ModelStage.ROLLED_BACK):
        assert capital_fraction(off) == 0.0
    assert cfg.config_hash() == GovernanceConfig().config_hash()
    assert cfg.config_hash() != config().config_hash()
    assert next_stage(ModelStage.REGISTERED) is ModelStage.SHADOW
    assert next_stage(ModelStage.CANARY_30) is ModelStage.ACTIVE
    assert next_stage(ModelStage.ACTIVE) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"windows_to_promote": 0}, "windows_to_promote"),
        ({"windows_to_rollback": 0}, "windows_to_rollback"),
        ({"required_gates": ()}, "at least one"),
        ({"required_gates": ("sharpe",)}, "not 'gate:metric'"),
        ({"shadow_fraction": 0.05}, "shadow signals never trade"),
        ({"canary_10_fraction": 0.5}, "must not decrease"),
    ],
)
def test_invalid_config_when_built_then_refused_with_the_rule(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_config_from_env_when_set_then_used_and_bad_value_names_the_variable() -> None:
    cfg = GovernanceConfig.from_env(
        {"TRADEFLOW_GOVERNANCE_WINDOWS_TO_PROMOTE": "4", "TRADEFLOW_GOVERNANCE_REQUIRED_GATES": "a:b, c:d"}
    )
    assert cfg.windows_to_promote == 4 and cfg.required_gates == ("a:b", "c:d")
    assert GovernanceConfig.from_env({}) == GovernanceConfig()
    with pytest.raises(ValueError, match="TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK"):
        GovernanceConfig.from_env({"TRADEFLOW_GOVERNANCE_WINDOWS_TO_ROLLBACK": "two"})


# ---------------------------------------------------------------------------
# gate-driven promotion
# ---------------------------------------------------------------------------


def test_shadow_model_when_windows_pass_then_promoted_through_every_stage_and_old_active_retired() -> None:
    eng = engine_with_active_and_shadow()
    seen: list[tuple[str, ModelStage, ModelStage, RolloutAction]] = []
    published: list[tuple[str, ModelStage]] = []
    for day in range(1, 7):
        step = window(eng, day, P)
        (d,) = decisions(step)
        assert d.from_stage is not None and d.to_stage is not None
        seen.append((d.version, d.from_stage, d.to_stage, d.action))
        published += stages(step)
        assert d.trigger is RolloutTrigger.GATES and d.actor == "governance" and d.window_status is P
        assert d.gates == dict.fromkeys(REQUIRED, "passed") and len(d.gate_result_ids) == 3
        assert d.window_end == T0 + day * DAY and (d.windows_to_promote, d.windows_to_rollback) == (2, 2)
        assert d.config_hash == config().config_hash()
    H, PR = RolloutAction.HOLD, RolloutAction.PROMOTE
    assert seen == [
        ("v2", ModelStage.SHADOW, ModelStage.SHADOW, H),
        ("v2", ModelStage.SHADOW, ModelStage.CANARY_10, PR),
        ("v2", ModelStage.CANARY_10, ModelStage.CANARY_10, H),
        ("v2", ModelStage.CANARY_10, ModelStage.CANARY_30, PR),
        ("v2", ModelStage.CANARY_30, ModelStage.CANARY_30, H),
        ("v2", ModelStage.CANARY_30, ModelStage.ACTIVE, PR),
    ]
    assert published == [
        ("v2", ModelStage.CANARY_10),
        ("v2", ModelStage.CANARY_30),
        ("v2", ModelStage.ACTIVE),
        ("v1", ModelStage.RETIRED),
    ]
    view = eng.rollout(MODEL, BTC)
    assert view is not None and (view.active, view.previous_active, view.candidate) == ("v2", "v1", None)
    assert eng.stage_of(MODEL, "v1") is ModelStage.RETIRED


def test_published_registry_event_when_built_then_copies_the_version_and_is_stamped_after_it() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 1, P)
    step = window(eng, 2, P)
    (ev,) = [r for r in step.records if isinstance(r, ModelRegistryEvent)]
    original = registry("v2", ModelStage.SHADOW, T0 - 9 * DAY)
    assert ev.stage is ModelStage.CANARY_10 and ev.ts_event > original.ts_event
    assert (ev.config, ev.checkpoint_sha256, ev.metrics, ev.seed) == (
        original.config,
        original.checkpoint_sha256,
        original.metrics,
        original.seed,
    )
    (d,) = decisions(step)
    assert ev.causation_id == d.event_id and ev.event_id != original.event_id


def test_own_registry_events_when_they_come_back_then_nothing_changes() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 1, P)
    step = window(eng, 2, P)
    before = eng.rollout(MODEL, BTC)
    for rec in step.records:
        if isinstance(rec, ModelRegistryEvent):
            assert eng.on_registry(rec).records == ()
    assert eng.rollout(MODEL, BTC) == before


def test_redelivered_gate_result_when_window_already_counted_then_never_advances_twice() -> None:
    eng = engine_with_active_and_shadow()
    step = window(eng, 1, P)
    assert decisions(step)[0].passing_windows == 1
    for req in REQUIRED:  # the whole window again, as a redelivery would bring it
        assert eng.on_gate(gate(req, P, T0 + DAY)).records == ()
    view = eng.rollout(MODEL, BTC)
    assert view is not None and view.passing == 1 and view.candidate_stage is ModelStage.SHADOW


def test_window_missing_a_required_gate_when_others_pass_then_not_decided() -> None:
    eng = engine_with_active_and_shadow()
    for req in REQUIRED[:2]:
        assert eng.on_gate(gate(req, P, T0 + DAY)).records == ()
    assert eng.on_gate(gate("hard_metrics:unrequired", P, T0 + DAY)).records == ()
    view = eng.rollout(MODEL, BTC)
    assert view is not None and view.passing == 0


def test_one_failed_gate_when_others_pass_then_window_fails_and_names_it() -> None:
    eng = engine_with_active_and_shadow()
    (d,) = decisions(window(eng, 1, [P, F, P]))
    assert d.window_status is F and d.action is RolloutAction.HOLD and d.failing_windows == 1
    assert "hard_metrics:max_drawdown" in d.reason


def test_insufficient_window_when_between_passes_then_neither_advances_nor_counts_as_failure() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 1, P)
    (d,) = decisions(window(eng, 2, [P, I, P]))
    assert d.window_status is I and d.action is RolloutAction.HOLD
    assert (d.passing_windows, d.failing_windows) == (0, 0)
    assert "neither advances nor counts as a failure" in d.reason
    (d,) = decisions(window(eng, 3, P))
    assert d.action is RolloutAction.HOLD and d.passing_windows == 1  # the run of passes was broken
    (d,) = decisions(window(eng, 4, P))
    assert d.action is RolloutAction.PROMOTE


def test_insufficient_window_when_between_failures_then_failure_count_kept_and_rollback_happens() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 1, F)
    (d,) = decisions(window(eng, 2, I))
    assert d.failing_windows == 1 and d.action is RolloutAction.HOLD
    (d,) = decisions(window(eng, 3, F))
    assert d.action is RolloutAction.ROLLBACK


def test_failed_window_when_it_breaks_a_run_of_passes_then_promotion_needs_a_new_run() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 1, P)
    window(eng, 2, F)
    (d,) = decisions(window(eng, 3, P))
    assert (d.action, d.passing_windows, d.failing_windows) == (RolloutAction.HOLD, 1, 0)


def test_stale_or_out_of_order_window_when_received_then_ignored() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 3, P)
    for req in REQUIRED:  # an older window arriving late is not evidence any more
        assert eng.on_gate(gate(req, P, T0 + 2 * DAY)).records == ()
    # a window that ended before the candidate entered shadow says nothing about it
    fresh = engine_with_active_and_shadow()
    for req in REQUIRED:
        assert fresh.on_gate(gate(req, P, T0 - 9 * DAY - 1)).records == ()


def test_gate_results_when_track_unrelated_or_no_rollout_then_no_decision() -> None:
    eng = engine_with_active_and_shadow()
    assert window(eng, 1, P, track="another-model").records == ()
    empty = GovernanceEngine(config(), KEYRING)
    assert window(empty, 1, P).records == ()


def test_symbol_track_when_model_serves_two_symbols_then_only_that_rollout_decides() -> None:
    eng = engine_with_active_and_shadow()
    eng.on_registry(registry("e1", ModelStage.SHADOW, T0 - 9 * DAY, symbol="ETH/USDT"))
    step = window(eng, 1, P, track=track_for(MODEL, "ETH/USDT"))
    assert [(d.symbol, d.version) for d in decisions(step)] == [("ETH/USDT", "e1")]
    step = window(eng, 2, P, track=track_for(MODEL))
    assert [(d.symbol, d.version) for d in decisions(step)] == [("BTC/USDT", "v2"), ("ETH/USDT", "e1")]


# ---------------------------------------------------------------------------
# automatic rollback
# ---------------------------------------------------------------------------


def test_canary_when_windows_fail_then_rolled_back_and_active_version_republished() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 1, P)
    window(eng, 2, P)  # -> canary_10
    (d,) = decisions(window(eng, 3, F))
    assert d.action is RolloutAction.HOLD and d.failing_windows == 1
    step = window(eng, 4, F)
    (d,) = decisions(step)
    assert (d.action, d.from_stage, d.to_stage, d.restored_version) == (
        RolloutAction.ROLLBACK,
        ModelStage.CANARY_10,
        ModelStage.ROLLED_BACK,
        "v1",
    )
    assert d.failing_windows == 2 and "windows_failed" in d.reason
    assert stages(step) == [("v2", ModelStage.ROLLED_BACK), ("v1", ModelStage.ACTIVE)]
    view = eng.rollout(MODEL, BTC)
    assert view is not None and (view.active, view.candidate) == ("v1", None)
    # the rolled-back version is out: later windows judge the active version, nothing to promote
    (d,) = decisions(window(eng, 5, P))
    assert d.version == "v1" and d.action is RolloutAction.HOLD and d.reason.startswith("active_monitoring")


def test_active_model_when_it_degrades_after_full_rollout_then_previous_version_restored() -> None:
    eng = engine_with_active_and_shadow()
    for day in range(1, 7):
        window(eng, day, P)
    assert eng.stage_of(MODEL, "v2") is ModelStage.ACTIVE
    window(eng, 7, F)
    step = window(eng, 8, F)
    (d,) = decisions(step)
    assert (d.version, d.action, d.from_stage, d.restored_version) == (
        "v2",
        RolloutAction.ROLLBACK,
        ModelStage.ACTIVE,
        "v1",
    )
    assert stages(step) == [("v2", ModelStage.ROLLED_BACK), ("v1", ModelStage.ACTIVE)]


def test_shadow_without_any_active_version_when_rolled_back_then_nothing_restored() -> None:
    eng = GovernanceEngine(config(), KEYRING)
    eng.on_registry(registry("v2", ModelStage.SHADOW, T0 - 9 * DAY))
    window(eng, 1, F)
    step = window(eng, 2, F)
    (d,) = decisions(step)
    assert d.restored_version is None and stages(step) == [("v2", ModelStage.ROLLED_BACK)]


# ---------------------------------------------------------------------------
# manual commands
# ---------------------------------------------------------------------------


def audits(step: Step) -> list[ControlAudit]:
    return [r for r in step.records if isinstance(r, ControlAudit)]


def test_signed_manual_promote_when_verified_then_applied_and_audited_both_ways() -> None:
    eng = engine_with_active_and_shadow()
    now = T0 + DAY
    step = eng.on_control(control(ControlCommand.ROLLOUT_PROMOTE, "v2", "n1", now), arrival_ns=now)
    (d,) = decisions(step)
    assert (d.action, d.from_stage, d.to_stage, d.trigger, d.actor) == (
        RolloutAction.MANUAL_PROMOTE,
        ModelStage.SHADOW,
        ModelStage.CANARY_10,
        RolloutTrigger.CONTROL,
        "operator:alice",
    )
    assert d.window_end is None and "operator drill" in d.reason
    assert stages(step) == [("v2", ModelStage.CANARY_10)]
    (a,) = audits(step)
    assert a.outcome is ControlOutcome.ACCEPTED and a.component == "governance" and a.changes == ("v2: -> canary_10",)


def test_signed_manual_promote_of_registered_version_then_it_enters_shadow() -> None:
    eng = GovernanceEngine(config(), KEYRING)
    eng.on_registry(registry("v3", ModelStage.REGISTERED, T0 - DAY))
    step = eng.on_control(control(ControlCommand.ROLLOUT_PROMOTE, "v3", "n1", T0))
    assert stages(step) == [("v3", ModelStage.SHADOW)]
    view = eng.rollout(MODEL, BTC)
    assert view is not None and (view.candidate, view.candidate_stage) == ("v3", ModelStage.SHADOW)


def test_signed_manual_rollback_when_verified_then_rolled_back_and_active_restored() -> None:
    eng = engine_with_active_and_shadow()
    step = eng.on_control(control(ControlCommand.ROLLOUT_ROLLBACK, "v2", "n1", T0))
    (d,) = decisions(step)
    assert (d.action, d.to_stage, d.restored_version) == (RolloutAction.MANUAL_ROLLBACK, ModelStage.ROLLED_BACK, "v1")
    assert stages(step) == [("v2", ModelStage.ROLLED_BACK), ("v1", ModelStage.ACTIVE)]


def test_forged_manual_command_when_received_then_rejected_audited_alerted_and_nothing_changes() -> None:
    eng = engine_with_active_and_shadow()
    before = eng.rollout(MODEL, BTC)
    forged = control(ControlCommand.ROLLOUT_PROMOTE, "v2", "n1", T0, keyring=Keyring({"ops1": b"x" * 40}))
    step = eng.on_control(forged)
    (d,) = decisions(step)
    assert (d.action, d.from_stage, d.to_stage, d.symbol) == (RolloutAction.REJECTED, None, None, None)
    assert d.reason.startswith("bad_signature") and d.actor == "operator:alice"
    (a,) = audits(step)
    assert a.outcome is ControlOutcome.REJECTED and a.alert and a.reason == "bad_signature"
    assert [r.code for r in step.records if isinstance(r, Alert)] == ["control_rejected"]
    assert stages(step) == [] and eng.rollout(MODEL, BTC) == before
    assert eng.clock.now_ns() == T0 - 9 * DAY  # forged traffic does not move time either


def test_replayed_manual_command_when_received_again_then_rejected_as_replayed() -> None:
    eng = engine_with_active_and_shadow()
    cmd = control(ControlCommand.ROLLOUT_PROMOTE, "v2", "n1", T0)
    eng.on_control(cmd)
    step = eng.on_control(cmd)
    (d,) = decisions(step)
    assert d.action is RolloutAction.REJECTED and d.reason.startswith("replayed")
    assert eng.stage_of(MODEL, "v2") is ModelStage.CANARY_10


def test_expired_manual_command_when_received_then_rejected_as_expired() -> None:
    eng = engine_with_active_and_shadow()
    cmd = new_control_event(
        command=ControlCommand.ROLLOUT_PROMOTE,
        scope="model",
        target=MODEL,
        params={"model_id": MODEL, "version": "v2"},
        reason="",
        operator="bob",
        key_id="ops1",
        nonce="n9",
        ts_event=T0,
        ts_init=T0,
        expires_at=T0 - 1,
        keyring=KEYRING,
    )
    (d,) = decisions(eng.on_control(cmd))
    assert d.action is RolloutAction.REJECTED and d.reason.startswith("expired")


@pytest.mark.parametrize(
    "command, version, reason",
    [
        (ControlCommand.ROLLOUT_PROMOTE, "v404", "unknown_version"),
        (ControlCommand.ROLLOUT_PROMOTE, "v1", "no_next_stage"),
        (ControlCommand.ROLLOUT_ROLLBACK, "v0", "not_in_rollout"),
    ],
)
def test_authentic_impossible_transition_when_commanded_then_rejected_and_nothing_changes(
    command: ControlCommand, version: str, reason: str
) -> None:
    eng = engine_with_active_and_shadow()
    eng.on_registry(registry("v0", ModelStage.RETIRED, T0 - 30 * DAY))
    before = eng.rollout(MODEL, BTC)
    step = eng.on_control(control(command, version, "n1", T0))
    (d,) = decisions(step)
    assert d.action is RolloutAction.REJECTED and d.reason.startswith(reason)
    (a,) = audits(step)
    assert a.outcome is ControlOutcome.REJECTED and a.reason == reason and not a.alert
    assert stages(step) == [] and eng.rollout(MODEL, BTC) == before


def test_second_candidate_when_promoted_while_one_is_in_rollout_then_rejected() -> None:
    eng = engine_with_active_and_shadow()
    eng.on_registry(registry("v3", ModelStage.REGISTERED, T0 - DAY))
    (d,) = decisions(eng.on_control(control(ControlCommand.ROLLOUT_PROMOTE, "v3", "n1", T0)))
    assert d.action is RolloutAction.REJECTED and d.reason.startswith("candidate_in_rollout")


def test_kill_switch_command_when_received_then_audited_ignored_not_for_governance() -> None:
    eng = engine_with_active_and_shadow()
    cmd = new_control_event(
        command=ControlCommand.KILL_SWITCH_ON,
        scope="global",
        target="*",
        params={},
        reason="halt",
        operator="alice",
        key_id="ops1",
        nonce="k1",
        ts_event=T0,
        ts_init=T0,
        expires_at=None,
        keyring=KEYRING,
    )
    step = eng.on_control(cmd)
    assert decisions(step) == []
    (a,) = audits(step)
    assert a.outcome is ControlOutcome.IGNORED and a.reason == "not_for_governance"


def test_manual_command_when_params_malformed_then_rejected_invalid_params() -> None:
    eng = engine_with_active_and_shadow()
    cmd = new_control_event(
        command=ControlCommand.ROLLOUT_PROMOTE,
        scope="model",
        target=MODEL,
        params={"model_id": MODEL, "version": 3},
        reason="",
        operator="alice",
        key_id="ops1",
        nonce="p1",
        ts_event=T0,
        ts_init=T0,
        expires_at=None,
        keyring=KEYRING,
    )
    (d,) = decisions(eng.on_control(cmd))
    assert d.action is RolloutAction.REJECTED and d.reason.startswith("invalid_params")


def test_manual_promote_when_applied_then_evidence_before_it_does_not_carry_over() -> None:
    eng = engine_with_active_and_shadow()
    window(eng, 1, P)
    eng.on_control(control(ControlCommand.ROLLOUT_PROMOTE, "v2", "n1", T0 + DAY + 5))
    view = eng.rollout(MODEL, BTC)
    assert view is not None and view.passing == 0 and view.candidate_stage is ModelStage.CANARY_10


# ---------------------------------------------------------------------------
# records and determinism
# ---------------------------------------------------------------------------


def scenario(eng: GovernanceEngine) -> list[Record]:
    out: list[Record] = []
    for day in range(1, 5):
        out += window(eng, day, P).records
    out += eng.on_control(control(ControlCommand.ROLLOUT_PROMOTE, "v2", "n1", T0 + 4 * DAY + 1)).records
    forged = dataclasses.replace(
        control(ControlCommand.ROLLOUT_ROLLBACK, "v2", "n2", T0 + 4 * DAY + 2), signature="hmac-sha256:" + "0" * 64
    )
    out += eng.on_control(forged).records
    for day in range(5, 8):
        out += window(eng, day, [F, P, I]).records
    return out


@pytest.mark.determinism
def test_same_inputs_when_replayed_then_byte_identical_outputs_that_pass_the_strict_codec() -> None:
    first = scenario(engine_with_active_and_shadow())
    second = scenario(engine_with_active_and_shadow())
    assert wire(first) == wire(second)
    for rec in first:
        codec = codec_for(type(rec))
        assert codec.decode(codec.encode(rec)) == rec
    ids = [r.event_id for r in first]
    assert len(ids) == len(set(ids)), "every output has its own deterministic id"
    actions = [r.action for r in first if isinstance(r, RolloutDecision)]
    assert actions.count(RolloutAction.ROLLBACK) == 1 and actions.count(RolloutAction.REJECTED) == 1


def test_decision_key_when_symbol_unknown_then_model_and_star() -> None:
    eng = engine_with_active_and_shadow()
    (d,) = decisions(eng.on_control(control(ControlCommand.ROLLOUT_PROMOTE, "v404", "n1", T0)))
    assert d.key() == f"{MODEL}|*".encode()
    (d,) = decisions(window(eng, 1, P))
    assert d.key() == f"{MODEL}|{BTC}".encode()


# ---------------------------------------------------------------------------
# restart
# ---------------------------------------------------------------------------


def test_restarted_engine_when_restored_from_registry_and_audit_then_redelivery_counts_nothing_twice() -> None:
    first = engine_with_active_and_shadow()
    registry_log = [
        registry("v1", ModelStage.REGISTERED, T0 - 20 * DAY),
        registry("v1", ModelStage.ACTIVE, T0 - 19 * DAY),
        registry("v2", ModelStage.REGISTERED, T0 - 10 * DAY),
        registry("v2", ModelStage.SHADOW, T0 - 9 * DAY),
    ]
    out: list[Record] = []
    out += window(first, 1, P).records
    out += window(first, 2, P).records  # -> canary_10
    out += window(first, 3, P).records  # 1/2 at canary_10
    cmd = control(ControlCommand.ROLLOUT_PROMOTE, "v2", "n1", T0 + 3 * DAY + 1)
    out += first.on_control(cmd).records  # -> canary_30
    out += window(first, 4, F).records  # failing 1/2 at canary_30

    restarted = GovernanceEngine(config(), KEYRING)
    for ev in registry_log + [r for r in out if isinstance(r, ModelRegistryEvent)]:
        restarted.on_registry(ev)
    for d in decisions(Step(records=tuple(out))):
        restarted.restore(d)
    assert restarted.rollout(MODEL, BTC) == first.rollout(MODEL, BTC)
    (d,) = decisions(restarted.on_control(cmd))  # the command redelivered: fresh nonce cache, still refused
    assert d.action is RolloutAction.REJECTED and d.reason.startswith("replayed")
    for req in REQUIRED:  # window 4 redelivered after the crash
        assert restarted.on_gate(gate(req, F, T0 + 4 * DAY)).records == ()
    (d,) = decisions(window(restarted, 5, F))
    assert d.action is RolloutAction.ROLLBACK and d.restored_version == "v1"


def test_registry_event_without_symbol_when_folded_then_noted_and_not_governed() -> None:
    eng = GovernanceEngine(config(), KEYRING)
    ev = dataclasses.replace(registry("v9", ModelStage.SHADOW, T0), config={"timeframe": "1h"})
    step = eng.on_registry(ev)
    assert step.note is not None and "symbol" in step.note and list(eng.rollouts()) == []
    assert eng.stage_of(MODEL, "v9") is ModelStage.SHADOW


# ---------------------------------------------------------------------------
# promote to a named stage
# ---------------------------------------------------------------------------


def promote_to(
    version: str, to: object, nonce: str, ts: int, command: ControlCommand = ControlCommand.ROLLOUT_PROMOTE
) -> ControlEvent:
    return new_control_event(
        command=command,
        scope="model",
        target=MODEL,
        params={"model_id": MODEL, "version": version, "to": to},  # type: ignore[dict-item]
        reason="go live",
        operator="alice",
        key_id="ops1",
        nonce=nonce,
        ts_event=ts,
        ts_init=ts,
        expires_at=None,
        keyring=KEYRING,
    )


def test_signed_promote_to_active_when_verified_then_every_stage_decided_and_announced_in_order() -> None:
    eng = engine_with_active_and_shadow()
    step = eng.on_control(promote_to("v2", "active", "t1", T0))
    assert [(d.from_stage, d.to_stage, d.action) for d in decisions(step)] == [
        (ModelStage.SHADOW, ModelStage.CANARY_10, RolloutAction.MANUAL_PROMOTE),
        (ModelStage.CANARY_10, ModelStage.CANARY_30, RolloutAction.MANUAL_PROMOTE),
        (ModelStage.CANARY_30, ModelStage.ACTIVE, RolloutAction.MANUAL_PROMOTE),
    ]
    assert [d.reason for d in decisions(step)] == [f"applied: go live (step {i}/3 to active)" for i in (1, 2, 3)]
    assert len({d.event_id for d in decisions(step)}) == 3
    assert stages(step) == [
        ("v2", ModelStage.CANARY_10),
        ("v2", ModelStage.CANARY_30),
        ("v2", ModelStage.ACTIVE),
        ("v1", ModelStage.RETIRED),
    ]
    # each registry event is stamped after the one before: the latest stage is the last announced
    stamps = [r.ts_event for r in step.records if isinstance(r, ModelRegistryEvent) and r.version == "v2"]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    (a,) = audits(step)
    assert a.outcome is ControlOutcome.ACCEPTED
    assert a.changes == ("v2: -> canary_10", "v2: -> canary_30", "v2: -> active", "v1: -> retired")
    assert eng.stage_of(MODEL, "v2") is ModelStage.ACTIVE and eng.stage_of(MODEL, "v1") is ModelStage.RETIRED
    view = eng.rollout(MODEL, BTC)
    assert view is not None and (view.active, view.previous_active, view.candidate) == ("v2", "v1", None)
    assert all(codec_for(type(r)).decode(codec_for(type(r)).encode(r)) == r for r in step.records)


def test_promote_to_the_next_stage_when_named_then_same_as_a_plain_promote() -> None:
    plain = engine_with_active_and_shadow().on_control(control(ControlCommand.ROLLOUT_PROMOTE, "v2", "n1", T0))
    named = engine_with_active_and_shadow().on_control(promote_to("v2", "canary_10", "n1", T0))
    assert [d.to_stage for d in decisions(named)] == [d.to_stage for d in decisions(plain)] == [ModelStage.CANARY_10]
    assert stages(named) == stages(plain)
    assert [d.event_id for d in decisions(named)] == [d.event_id for d in decisions(plain)]


@pytest.mark.parametrize(
    "version, to, command, reason",
    [
        ("v2", "shadow", ControlCommand.ROLLOUT_PROMOTE, "target_not_above"),
        ("v1", "active", ControlCommand.ROLLOUT_PROMOTE, "no_next_stage"),
        ("v2", "retired", ControlCommand.ROLLOUT_PROMOTE, "invalid_params"),
        ("v2", 3, ControlCommand.ROLLOUT_PROMOTE, "invalid_params"),
        ("v2", "active", ControlCommand.ROLLOUT_ROLLBACK, "invalid_params"),
    ],
)
def test_promote_to_a_stage_it_cannot_reach_then_rejected_and_nothing_changes(
    version: str, to: object, command: ControlCommand, reason: str
) -> None:
    eng = engine_with_active_and_shadow()
    before = eng.rollout(MODEL, BTC)
    step = eng.on_control(promote_to(version, to, "x1", T0, command))
    (d,) = decisions(step)
    assert d.action is RolloutAction.REJECTED and d.reason.startswith(reason)
    (a,) = audits(step)
    assert a.outcome is ControlOutcome.REJECTED and a.reason == reason
    assert stages(step) == [] and eng.rollout(MODEL, BTC) == before


def test_restarted_engine_after_a_promote_to_active_then_the_command_is_not_applied_twice() -> None:
    eng = engine_with_active_and_shadow()
    cmd = promote_to("v2", "active", "r1", T0)
    step = eng.on_control(cmd)
    again = engine_with_active_and_shadow()
    for r in step.records:
        if isinstance(r, ModelRegistryEvent):
            again.on_registry(r)
    for d in decisions(step):
        again.restore(d)
    (d,) = decisions(again.on_control(cmd))
    assert d.action is RolloutAction.REJECTED and d.reason.startswith("replayed")
    assert again.stage_of(MODEL, "v2") is ModelStage.ACTIVE
