"""Trading-core checkpoints: a core sealed after any input and restored in a
fresh object continues byte-identically to the uninterrupted core (real
Binance candles, seeded paper timeouts, a signed kill switch and a forged
release in the stream); the sealed bytes never contain a control secret; a
tampered, foreign, mis-configured or unkeyed checkpoint is refused before it
is unpickled."""

from __future__ import annotations

import copyreg
import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import pytest

from agents.control.signing import Keyring, new_control_event
from agents.execution.paper import PaperConfig
from agents.risk.breaker import VolatilityBreaker
from agents.trading.checkpoint import CheckpointError, dump_core, open_checkpoint, seal
from agents.trading.checkpointer import JournalGap, JournalOrder
from agents.trading.core import TradingConfig, TradingCore
from tests.builders import intent
from tests.unit.test_trading_determinism import load_bars, stub_signal
from topics.records import Bar, ControlCommand, ControlEvent, Signal
from topics.schema import Record, codec_for

SECRET = b"checkpoint-test-secret-0123456789abcdef"
KEYRING = Keyring({"ops1": SECRET})
CONFIG = TradingConfig(paper=PaperConfig(default_timeout_probability=0.05, seed=11))
OFFSETS = {"signals": {0: 12, 3: 4}, "market.bars": {1: 99}}

Input = Bar | Signal | ControlEvent


def inputs() -> list[Input]:
    bars = load_bars()[:160]
    out: list[Input] = []
    for i, bar in enumerate(bars):
        out.append(bar)
        if i == 60:
            cmd = new_control_event(
                command=ControlCommand.KILL_SWITCH_ON,
                scope="global",
                target="*",
                params={"duration_s": 4 * 3600},
                reason="drill",
                operator="alice",
                key_id="ops1",
                nonce="n-60",
                ts_event=bar.ts_event,
                ts_init=bar.ts_event,
                expires_at=None,
                keyring=KEYRING,
            )
            out += [cmd, dataclasses.replace(cmd, command=ControlCommand.KILL_SWITCH_OFF, nonce="n-61")]
        out.append(stub_signal(bars, i))
    return out


def feed(core: TradingCore, events: list[Input]) -> list[bytes]:
    out: list[Record] = []
    for ev in events:
        if isinstance(ev, Bar):
            out += core.on_bar(ev).records
        elif isinstance(ev, Signal):
            out += core.on_signal(ev).records
        else:
            out += core.on_control(ev).records
    return [type(r).__name__.encode() + b":" + codec_for(type(r)).encode(r) for r in out]


@pytest.mark.determinism
def test_restore_after_any_split_then_outputs_byte_identical_to_uninterrupted_run() -> None:
    events = inputs()
    whole = feed(TradingCore(CONFIG, KEYRING), events)
    assert sum(r.startswith(b"Fill:") for r in whole) > 5  # the scenario trades
    for split in (1, 45, 61, 62, 63, 150, 250, len(events) - 1):
        first = TradingCore(CONFIG, KEYRING)
        head = feed(first, events[:split])
        cp = seal(first, config_hash="h1", offsets=OFFSETS, events_applied=split, keyring=KEYRING)
        restored = open_checkpoint(cp, KEYRING, account=CONFIG.account, config_hash="h1")
        assert restored is not first
        tail = feed(restored, events[split:])
        assert head + tail == whole, f"split at {split}"


def test_restored_core_then_redelivered_inputs_stay_idempotent() -> None:
    events = inputs()
    core = TradingCore(CONFIG, KEYRING)
    feed(core, events[:200])
    cp = seal(core, config_hash="h1", offsets=OFFSETS, events_applied=200, keyring=KEYRING)
    restored = open_checkpoint(cp, KEYRING, account=CONFIG.account, config_hash="h1")
    again = feed(restored, [e for e in events[:200] if not isinstance(e, ControlEvent)])
    assert not any(r.startswith((b"Fill:", b"OrderIntent:")) for r in again)  # nothing traded twice


def test_sealed_state_then_holds_no_secret_and_keyring_reattached() -> None:
    core = TradingCore(CONFIG, KEYRING)
    feed(core, inputs()[:130])
    blob = dump_core(core)
    assert SECRET not in blob and SECRET.hex().encode() not in blob
    cp = seal(core, config_hash="h1", offsets=OFFSETS, events_applied=1, keyring=KEYRING)
    restored = open_checkpoint(cp, KEYRING, account=CONFIG.account, config_hash="h1")
    assert restored.risk.verifier._keyring is KEYRING  # the live keyring, not a copy
    assert restored.active_kill_switches() == core.active_kill_switches()
    assert restored.risk.verifier.nonce_count == core.risk.verifier.nonce_count == 1


@pytest.mark.parametrize(
    ("change", "account", "config_hash", "keyring", "message"),
    [
        ({"mac": "0" * 64}, "paper", "h1", KEYRING, "MAC does not verify"),
        ({"state": b"\x80\x05N."}, "paper", "h1", KEYRING, "MAC does not verify"),
        ({"offsets": {"signals": {0: 13}}}, "paper", "h1", KEYRING, "MAC does not verify"),
        ({"events_applied": 2}, "paper", "h1", KEYRING, "MAC does not verify"),
        ({}, "other", "h1", KEYRING, "belongs to account"),
        ({}, "paper", "h2", KEYRING, "configuration"),
        ({"format": 99}, "paper", "h1", KEYRING, "format"),
        ({}, "paper", "h1", Keyring({"ops2": SECRET}), "not in the keyring"),
        ({}, "paper", "h1", Keyring({"ops1": b"another-secret-0123456789abcdefghijkl"}), "MAC does not verify"),
    ],
    ids=[
        "forged_mac",
        "swapped_state",
        "moved_offsets",
        "changed_counter",
        "foreign_account",
        "other_config",
        "other_format",
        "signing_key_removed",
        "other_secret",
    ],
)
def test_bad_checkpoint_then_refused_before_unpickling(
    change: dict[str, object], account: str, config_hash: str, keyring: Keyring, message: str
) -> None:
    core = TradingCore(CONFIG, KEYRING)
    feed(core, inputs()[:20])
    cp = dataclasses.replace(seal(core, config_hash="h1", offsets=OFFSETS, events_applied=1, keyring=KEYRING), **change)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(cp, keyring, account=account, config_hash=config_hash)


def test_fast_dataclass_reduction_then_same_bytes_as_standard_pickling() -> None:
    import io

    from agents.trading import checkpoint as ck

    core = TradingCore(CONFIG, KEYRING)
    feed(core, inputs())
    fast = dump_core(core)

    class Standard(ck._CorePickler):  # the same dispatch table and blobs, without the per-class field cache
        def reducer_override(self, obj: Any) -> Any:
            blob = self.blob(obj)
            return NotImplemented if blob is None else blob

    buf = io.BytesIO()
    Standard(buf, plain=(core.risk._decisions, core._order_strategy)).dump(core)
    assert buf.getvalue() == fast
    restored = ck.load_core(fast, KEYRING)  # and it restores to the same state (continuation: tests above)
    assert restored.portfolio_state() == core.portfolio_state() and restored.clock.now_ns() == core.clock.now_ns()


def _signed_row(fmt: int, state: bytes, *, events: int) -> Any:
    """A row of format ``fmt`` holding ``state``, signed as the agent signs its own."""
    from agents.trading import checkpoint as ck

    mac = ck._mac(
        ck._mac_key(KEYRING, "ops1"),
        account="paper",
        fmt=fmt,
        config_hash="h1",
        offsets=OFFSETS,
        events=events,
        state=state,
    )
    return ck.Checkpoint(
        account="paper",
        format=fmt,
        config_hash="h1",
        key_id="ops1",
        offsets=OFFSETS,
        events_applied=events,
        state=state,
        mac=mac,
    )


@pytest.mark.parametrize(
    ("fmt", "why"),
    [
        (2, "volatility breaker"),
        (3, "volatility breaker"),
        (4, "volatility breaker"),
        (5, "open external"),
        (6, "per-strategy consecutive-loss counts"),
    ],
)
def test_row_of_an_older_format_then_refused_with_why_before_unpickling(fmt: int, why: str) -> None:
    """Formats before 5 hold no breaker window, 5 no open external orders, 6 no per-strategy loss counts:
    refused, saying so."""
    from agents.trading import checkpoint as ck

    core = TradingCore(CONFIG, KEYRING)
    feed(core, inputs()[:20])
    cp = _signed_row(fmt, b"\x80\x05N.", events=1)  # never unpickled: the format is refused first
    with pytest.raises(CheckpointError, match=f"format {fmt} is not this code's {ck.FORMAT} .*{why}.*row"):
        open_checkpoint(cp, KEYRING, account="paper", config_hash="h1")


@pytest.mark.determinism
def test_row_of_format_7_then_upgraded_and_outputs_byte_identical_to_uninterrupted_run() -> None:
    """Format 7 kept the risk engine's cached decisions as records; such a row still loads, its cache
    becomes rows, and a redelivered intent then gets the very decision the first run made."""
    from agents.risk.engine import _decision_from_row
    from agents.trading import checkpoint as ck

    events = inputs()
    whole = feed(TradingCore(CONFIG, KEYRING), events)
    first = TradingCore(CONFIG, KEYRING)
    head = feed(first, events[:150])
    decisions = first.risk._decisions
    assert decisions  # the scenario decided intents before the split
    old = {k: _decision_from_row(v) for k, v in decisions.items()}
    first.risk._decisions = old  # type: ignore[assignment]  # the layout format 7 pickled

    class Format7(ck._CorePickler):  # ... and the breaker as format 7 pickled it: its slots, a _Point per bar
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, VolatilityBreaker):
                return copyreg.__newobj__, (VolatilityBreaker,), (None, {"_series": obj._series})  # type: ignore[attr-defined]
            return super().reducer_override(obj)

    buf = io.BytesIO()
    Format7(buf).dump(first)
    state = buf.getvalue()
    assert b"_breaker_from_rows" not in state and first.risk.breaker._series  # the old layout, a window kept
    restored = open_checkpoint(_signed_row(7, state, events=150), KEYRING, account=CONFIG.account, config_hash="h1")
    assert all(isinstance(v, tuple) for v in restored.risk._decisions.values())
    assert head + feed(restored, events[150:]) == whole
    intent_id, decision = next(iter(old.items()))
    again = dataclasses.replace(intent(symbol=decision.symbol), event_id=intent_id)  # a cache hit reads the id only
    assert restored.risk.on_intent(again) == decision


def test_seen_windows_and_plain_caches_then_blobs_that_restore_equal_and_in_order() -> None:
    """The seen-id windows, the decision rows and the order -> strategy map round-trip through their
    marshalled blobs (contents, order, capacity, policy); a window holding what marshal refuses (an enum)
    is pickled the usual way."""
    from agents.trading import checkpoint as ck
    from runtime.seen import SeenIds
    from topics.records import Side

    core = TradingCore(CONFIG, KEYRING)
    feed(core, inputs())
    core.paper._seen = SeenIds(3, ["a", "b", "c", "d"], refresh_on_hit=True)  # "a" already forgotten
    core.risk._exited.add(("BTC/USDT", None, 0.5))
    odd: SeenIds[Any] = SeenIds(5, [Side.BUY, Side.SELL])
    core.strategy._seen = odd
    assert core.risk._decisions and core._order_strategy
    blob = dump_core(core)
    assert b"_seen_ids" in blob and b"_ordered_rows" in blob
    restored = ck.load_core(blob, KEYRING)
    for before, after in [
        (core.paper._seen, restored.paper._seen),
        (core.portfolio._seen, restored.portfolio._seen),
        (core.risk._exited, restored.risk._exited),
        (odd, restored.strategy._seen),
    ]:
        assert list(after) == list(before)
        assert (after.capacity, after.refresh_on_hit) == (before.capacity, before.refresh_on_hit)
    assert list(restored.strategy._seen) == [Side.BUY, Side.SELL]  # enums stay enums
    assert list(restored.risk._decisions.items()) == list(core.risk._decisions.items())
    assert list(restored._order_strategy.items()) == list(core._order_strategy.items())
    assert b"_breaker_from_rows" in blob
    series = core.risk.breaker._series
    assert series and restored.risk.breaker._series == series  # same keys, same points, same order


# ---------------------------------------------------------------------------
# JournalOrder: inputs re-read after a restart, applied in the journal's order
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Msg:
    topic: str
    partition: int
    offset: int


def _ev(topic: str, partition: int, offset: int) -> _Msg:
    return _Msg(topic, partition, offset)


def _ids(records: list[Any]) -> list[tuple[str, int, int]]:
    return [(r.topic, r.partition, r.offset) for r in records]


def test_journal_order_then_reread_inputs_come_out_in_the_journal_order() -> None:
    """Journal: bar 0, signal 0, bar 1, signal 1. The broker re-delivers the bars' backlog first."""
    order = JournalOrder([("bars", 0, 0), ("sig", 0, 0), ("bars", 0, 1), ("sig", 0, 1)])
    assert order.order([_ev("bars", 0, 0), _ev("bars", 0, 1), _ev("bars", 0, 2)]) == [_ev("bars", 0, 0)]
    assert order.active
    # signal 0 arrives: it, then bar 1; signal 1 still missing, so bar 2 (not journaled) waits behind it
    assert _ids(order.order([_ev("sig", 0, 0)])) == [("sig", 0, 0), ("bars", 0, 1)]
    assert _ids(order.order([_ev("sig", 0, 1), _ev("sig", 0, 2)])) == [("sig", 0, 1), ("bars", 0, 2), ("sig", 0, 2)]
    assert not order.active
    assert _ids(order.order([_ev("bars", 0, 3)])) == [("bars", 0, 3)]  # then plain arrival order


def test_journal_order_then_unjournaled_inputs_below_the_next_entry_pass_and_a_gap_is_refused() -> None:
    order = JournalOrder([("sig", 0, 5), ("ctl", 0, 2)])
    # offsets 3, 4 of sig: held by the state already, or undecodable (never journaled): they go when reached
    assert _ids(order.order([_ev("ctl", 0, 2), _ev("sig", 0, 3), _ev("sig", 0, 4), _ev("sig", 0, 5)])) == [
        ("sig", 0, 3),
        ("sig", 0, 4),
        ("sig", 0, 5),
        ("ctl", 0, 2),
    ]
    gap = JournalOrder([("sig", 0, 5)])
    with pytest.raises(JournalGap, match=r"sig\[0\]@5.*offset 6"):
        gap.order([_ev("sig", 0, 6)])
    held = JournalOrder([("sig", 0, 0), ("bars", 0, 0)])
    assert held.order([_ev("bars", 0, 0)]) == []
    held.reset()  # sought back: bar 0 will be delivered again, and is not kept twice
    assert _ids(held.order([_ev("sig", 0, 0), _ev("bars", 0, 0)])) == [("sig", 0, 0), ("bars", 0, 0)]
