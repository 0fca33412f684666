"""Codec properties: every record type round-trips; every kind of bad input is named."""

from __future__ import annotations

import contextlib
import functools

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import builders
from tests.factories import strategy_for
from topics.records import ALL_RECORDS, Bar, DeadLetter, Signal
from topics.schema import ErrorReason, Record, RecordError, codec_for, event_id_for
from topics.units import NS_PER_HOUR as H

T0 = 1_600_000_000_000_000_000 // H * H


@pytest.mark.parametrize("cls", ALL_RECORDS, ids=lambda c: c.__name__)
def test_any_valid_record_when_encoded_then_decodes_to_an_equal_record(cls: type[Record]) -> None:
    codec = codec_for(cls)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(strategy_for(cls))
    def roundtrip(rec: Record) -> None:
        data = codec.encode(rec)
        back = codec.decode(data)
        assert back == rec
        assert codec.encode(back) == data  # canonical: re-encoding is byte-identical

    roundtrip()


def _bar(**overrides: object) -> dict[str, object]:
    b = builders.bar(
        open_time=T0, open=100.0, high=110.0, low=90.0, close=105.0, volume=12.5, trade_count=3, ts_init=T0
    )
    d = codec_for(Bar).to_dict(b)
    d.update(overrides)
    return d


BAD = [
    ("not json", b"{nope", ErrorReason.INVALID_JSON),
    ("array", b"[1, 2, 3]", ErrorReason.NOT_AN_OBJECT),
    ("nan token", orjson.dumps(_bar()).replace(b'"open":100.0', b'"open":NaN'), ErrorReason.NOT_FINITE),
    ("inf literal", orjson.dumps(_bar()).replace(b'"open":100.0', b'"open":1e999'), ErrorReason.NOT_FINITE),
    ("negative price", orjson.dumps(_bar(low=-1.0)), ErrorReason.OUT_OF_RANGE),
    ("zero price", orjson.dumps(_bar(close=0.0)), ErrorReason.OUT_OF_RANGE),
    ("negative volume", orjson.dumps(_bar(volume=-0.5)), ErrorReason.OUT_OF_RANGE),
    ("string number", orjson.dumps(_bar(open="100")), ErrorReason.WRONG_TYPE),
    ("bool as int", orjson.dumps(_bar(trade_count=True)), ErrorReason.WRONG_TYPE),
    ("float as int", orjson.dumps(_bar(open_time=float(T0))), ErrorReason.WRONG_TYPE),
    ("unknown enum", orjson.dumps(_bar(timeframe="7h")), ErrorReason.UNKNOWN_ENUM),
    ("missing field", orjson.dumps({k: v for k, v in _bar().items() if k != "close"}), ErrorReason.MISSING_FIELD),
    ("extra field", orjson.dumps(_bar(extra=1)), ErrorReason.UNKNOWN_FIELD),
    ("schema v2", orjson.dumps(_bar(schema_version=2)), ErrorReason.SCHEMA_VERSION),
    ("schema as str", orjson.dumps(_bar(schema_version="1")), ErrorReason.SCHEMA_VERSION),
    ("ms timestamp", orjson.dumps(_bar(ts_event=T0 // 1_000_000)), ErrorReason.BAD_TIMESTAMP),
    ("far future", orjson.dumps(_bar(open_time=5_000_000_000 * 10**9)), ErrorReason.BAD_TIMESTAMP),
    ("bad symbol", orjson.dumps(_bar(symbol="btcusdt")), ErrorReason.BAD_SYMBOL),
    ("oversize", orjson.dumps(_bar(source="x" * 300_000)), ErrorReason.OVERSIZE),
]


@pytest.mark.parametrize(("name", "data", "reason"), BAD, ids=[b[0] for b in BAD])
def test_malformed_bar_when_decoded_then_record_error_names_the_reason(
    name: str, data: bytes, reason: ErrorReason
) -> None:
    with pytest.raises(RecordError) as info:
        codec_for(Bar).decode(data)
    assert info.value.reason is reason, (name, info.value)


def test_signal_probabilities_not_summing_to_one_when_decoded_then_invalid_value() -> None:
    sig = builders.signal(ts=T0, p_up=0.5, p_flat=0.3, p_down=0.2, expected_return=0.001, score=0.3)
    d = codec_for(Signal).to_dict(sig)
    d["p_up"] = 0.9
    with pytest.raises(RecordError) as info:
        codec_for(Signal).decode(orjson.dumps(d))
    assert info.value.reason is ErrorReason.INVALID_VALUE


def test_same_identity_when_built_twice_then_same_event_id_and_different_identity_differs() -> None:
    bar = functools.partial(builders.bar, venue="v", open_time=T0, ts_event=T0, trade_count=0, source="s")
    a = bar(ts_init=1, open=1.0, volume=0.0)
    b = bar(ts_init=999, open=2.0, volume=1.0)
    c = bar(ts_init=1, open=1.0, volume=0.0, revision=1)
    assert a.event_id == b.event_id  # identity = venue, symbol, timeframe, open_time, revision
    assert a.event_id != c.event_id
    assert a.correlation_id == a.event_id and a.causation_id is None
    assert event_id_for("bar", "x") != event_id_for("tick", "x")


def test_dead_letter_of_oversize_message_when_encoded_then_still_decodes() -> None:
    from topics.deadletter import dead_letter_for

    raw = b"x" * 400_000
    err = RecordError(ErrorReason.OVERSIZE, "too big")
    dl = dead_letter_for(
        consumer="c", topic="t", partition=0, offset=5, key=None, value=raw, error=err, ts_event=T0, ts_init=T0
    )
    back = codec_for(DeadLetter).decode(codec_for(DeadLetter).encode(dl))
    assert back.original_size == 400_000 and back.reason == "oversize"


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_when_decoded_then_only_record_error_is_raised(data: bytes) -> None:
    for cls in (Bar, Signal):
        with contextlib.suppress(RecordError):  # any other exception type fails the test
            codec_for(cls).decode(data)
