"""What the trading core does with a signal that fails verification: a sizing decision
(``signal_unauthenticated``) and an alert, no order. Pure; used by :mod:`agents.trading.core`.

Design: docs/risk.md#signed-signals
"""

from __future__ import annotations

from agents.signals.signing import SignalVerdict
from agents.strategy.engine import SizingDecision, SizingReason
from topics.records import Alert, Severity, Signal

__all__ = ["refused_signal"]


def refused_signal(
    signal: Signal, verdict: SignalVerdict, *, account: str, source: str, position: float, ts_init: int
) -> tuple[SizingDecision, Alert]:
    """The decision and the alert for ``signal`` refused by ``verdict``.

    The labels repeat what the signal *claimed* (model, version, key id): useful to find the
    sender, never a proof of identity. One alert per signal (a redelivery dedupes onto it).
    """
    decision = SizingDecision(
        signal_event_id=signal.event_id,
        symbol=signal.symbol,
        reason=SizingReason.SIGNAL_UNAUTHENTICATED,
        target_position=position,
        current_position=position,
        adjustments=(),
        intent=None,
    )
    claimed = f"{signal.model_id}@{signal.model_version}"
    alert = Alert.new(
        ts_init=ts_init,
        correlation_id=signal.correlation_id,
        causation_id=signal.event_id,
        ts_event=signal.ts_event,
        severity=Severity.ERROR,
        source=source,
        code="signal_unauthenticated",
        message=f"signal {signal.event_id} ({claimed} {signal.symbol}) refused: {verdict.reason.value}",
        dedupe_key=f"{signal.event_id}|{verdict.reason.value}",
        labels={
            "account": account,
            "reason": verdict.reason.value,
            "symbol": signal.symbol,
            "claimed_model": claimed,
            "claimed_key_id": signal.key_id or "",
        },
    )
    return decision, alert
