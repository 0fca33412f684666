"""Turning an unprocessable message into a DeadLetter record (pure)."""

from __future__ import annotations

import base64

from topics.records import DeadLetter
from topics.schema import TS_MAX_NS, TS_MIN_NS, ErrorReason, RecordError


def dead_letter_for(
    *,
    consumer: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: RecordError | Exception,
    ts_event: int,
    ts_init: int,
    reason: str | None = None,
) -> DeadLetter:
    """A DeadLetter carrying the reason and the original bytes, unmodified.

    ``reason`` overrides the error's reason code (e.g. a file importer's own
    codes). ``ts_event`` is the broker timestamp of the original message (clamped to
    the sane window so the dead letter itself always validates).
    """
    if isinstance(error, RecordError):
        default_reason, detail = error.reason.value, error.detail
    else:
        default_reason, detail = ErrorReason.INVALID_VALUE.value, f"{type(error).__name__}: {error}"
    reason = reason or default_reason
    raw = value or b""
    ts_event = min(max(ts_event, TS_MIN_NS), TS_MAX_NS - 1)
    return DeadLetter.new(
        ts_event=ts_event,
        ts_init=min(max(ts_init, TS_MIN_NS), TS_MAX_NS - 1),
        consumer=consumer,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        reason=reason,
        detail=detail[:1000],
        original_key_b64=None if key is None else base64.b64encode(key).decode(),
        original_b64=base64.b64encode(raw).decode(),
        original_size=len(raw),
    )
