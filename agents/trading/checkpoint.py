"""Trading-core checkpoints: the engines' exact state plus the input offsets it covers.

A checkpoint *is* the state (every engine, the clock), taken between two input messages with
the next offset of every input partition, so re-feeding the inputs from those offsets gives
byte-identical outputs. Format: a pickle of the :class:`~agents.trading.core.TradingCore`
graph without the keyrings (re-attached from the environment on load), authenticated by
HMAC-SHA256 under a key derived from the account's control keys before it is unpickled.

Refusals (:class:`CheckpointError`, the worker exits with code 2): another account's row, an
unreadable ``format``, another configuration hash, an unknown key id, a bad MAC, a state
that does not unpickle. The row is read and written by :mod:`storage.trading`; when the agent
takes and restores one: :mod:`agents.trading.checkpointer`.

Design: docs/trading_engines.md#trading-checkpoints
"""

from __future__ import annotations

import copyreg
import dataclasses
import hashlib
import hmac
import io
import marshal
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import orjson

from agents.control.signing import Keyring
from agents.signals.signing import SignalVerifier
from agents.trading.core import TradingCore
from runtime.errors import NeedsOperator
from runtime.seen import SeenIds
from storage.trading import Checkpoint, Offsets

__all__ = ["FORMAT", "CheckpointError", "dump_core", "load_core", "open_checkpoint", "seal"]

#: Bumped whenever an engine's attributes change shape: an old pickle is then refused, with the
#: reason from ``_REFUSED``.
FORMAT = 8  # 8: RiskEngine._decisions holds rows of plain values; seen-id windows, plain caches and
# the volatility breaker's window are marshalled blobs (7 is upgraded on load)
# 7: per-strategy loss counts (RiskEngine, TradingCore), the last opening status, the signal
# verifier (a reference, re-attached on restore); 6: TradingCore._open
# (external orders in flight); 5: RiskEngine.breaker, RiskConfig's breaker fields
#: Older formats and why this code cannot read them.
_REFUSED: dict[int, str] = {
    **dict.fromkeys(
        (2, 3, 4), "it predates the volatility breaker's window state and its runtime-settable configuration"
    ),
    5: "it predates the open external orders a restart reconciles with the venue",
    6: "it predates the per-strategy consecutive-loss counts and the published opening status",
}


def _upgrade_7(core: TradingCore) -> None:
    """Format 7 -> 8: the risk engine's cached decisions from records to rows."""
    from agents.risk.engine import _decision_row

    cache = core.risk._decisions
    for key, value in cache.items():
        if not isinstance(value, tuple):
            cache[key] = _decision_row(value)


#: Older formats this code reads, and how each is brought to :data:`FORMAT` after it is unpickled.
_UPGRADES: dict[int, Any] = {7: _upgrade_7}
_MAC_CONTEXT = b"tradeflow.trading.checkpoint.v1"
_KEYRING_REF = "tradeflow:keyring"


class CheckpointError(NeedsOperator):
    """A checkpoint that must not be used (the message says why and what to do)."""


# ---------------------------------------------------------------------------
# Pickling the core without its secrets
# ---------------------------------------------------------------------------


def _mappingproxy(data: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    """Unpickling helper: configs and records freeze their mappings in proxies."""
    return MappingProxyType(data)


def _reduce_mappingproxy(proxy: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _mappingproxy, (dict(proxy),)


def _keyring_ref() -> Keyring:
    """Stands for the keyring in a pickle; only :class:`_CoreUnpickler` resolves it (to the live keyring)."""
    raise pickle.UnpicklingError("a checkpoint's keyring reference is resolved by its own unpickler only")


def _reduce_keyring(_: Keyring) -> tuple[Any, tuple[()]]:
    return _keyring_ref, ()


def _no_signal_verifier() -> None:
    """Stands for the core's signal verifier (it holds secrets): loads as None, the restore re-attaches it."""
    return None


def _reduce_signal_verifier(_: SignalVerifier) -> tuple[Any, tuple[()]]:
    return _no_signal_verifier, ()


#: class -> its field names when the standard reduction of its instances is the slotted-dataclass one, else ().
_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}
_STANDARD_GETSTATE = getattr(dataclasses, "_dataclass_getstate", None)


def _dataclass_fields(cls: type) -> tuple[str, ...]:
    """Field names of a slotted dataclass reduced the standard way (``()``: leave it to pickle).

    Only classes whose ``__getstate__`` is the one ``dataclass(slots=True)`` installs and that override
    no reduction hook qualify: for them ``object.__reduce_ex__`` gives ``copyreg.__newobj__``, ``(cls,)``
    and the field values in field order, which is what :meth:`_CorePickler.reducer_override` returns.
    """
    names = _DATACLASS_FIELDS.get(cls)
    if names is None:
        names = ()
        if (
            _STANDARD_GETSTATE is not None
            and dataclasses.is_dataclass(cls)
            and getattr(cls, "__getstate__", None) is _STANDARD_GETSTATE
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and not hasattr(cls, "__getnewargs_ex__")
            and not hasattr(cls, "__getnewargs__")
        ):
            names = tuple(f.name for f in dataclasses.fields(cls))
        _DATACLASS_FIELDS[cls] = names
    return names


def _seen_ids(capacity: int, refresh_on_hit: bool, keys: bytes) -> SeenIds[Any]:
    """Unpickling helper: a :class:`SeenIds` from its marshalled keys (oldest first)."""
    return SeenIds(capacity, marshal.loads(keys), refresh_on_hit=refresh_on_hit)  # noqa: S302 - MAC-verified bytes


def _ordered_rows(items: bytes) -> OrderedDict[Any, Any]:
    """Unpickling helper: an ordered cache of plain values from its marshalled items."""
    return OrderedDict(marshal.loads(items))  # noqa: S302 - MAC-verified bytes


class _CorePickler(pickle.Pickler):
    """The core's pickler: secrets as references, slotted dataclasses without ``dataclasses.fields()``
    per object, and the large caches of plain values (the seen-id windows, the risk engine's decision
    rows, the order -> strategy map) each as one marshalled blob. Pickle memoizes every object it writes
    (each id string, each row) for shared references these caches never have; marshal writes them
    several times faster. A cache holding anything marshal refuses (an enum, a record) is pickled
    the usual way."""

    def __init__(self, file: io.BytesIO, plain: Sequence[object] = ()) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        #: ids of the ordered caches whose keys and values are plain by construction
        self.plain = {id(c) for c in plain}
        self.dispatch_table = {
            **copyreg.dispatch_table,
            MappingProxyType: _reduce_mappingproxy,
            Keyring: _reduce_keyring,
            SignalVerifier: _reduce_signal_verifier,
        }

    def reducer_override(self, obj: Any) -> Any:
        """Seen-id windows and plain caches as blobs; slotted dataclasses field by field; everything else
        as usual."""
        blob = self.blob(obj)
        if blob is not None:
            return blob
        cls = type(obj)
        names = _dataclass_fields(cls)
        if not names:
            return NotImplemented
        return copyreg.__newobj__, (cls,), [getattr(obj, n) for n in names]  # type: ignore[attr-defined]

    def blob(self, obj: Any) -> tuple[Any, tuple[Any, ...]] | None:
        """The reduction of a seen-id window or a plain cache to one marshalled blob (None: not one, or
        it holds something marshal does not write)."""
        cls = type(obj)
        try:
            if cls is SeenIds:
                return _seen_ids, (obj.capacity, obj.refresh_on_hit, marshal.dumps(list(obj)))
            if cls is OrderedDict and id(obj) in self.plain:
                return _ordered_rows, (marshal.dumps(list(obj.items())),)
        except ValueError:
            return None
        return None


class _CoreUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, keyring: Keyring) -> None:
        super().__init__(io.BytesIO(data))
        self._keyring = keyring

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name == _keyring_ref.__name__:
            keyring = self._keyring
            return lambda: keyring
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        """Rows written before the keyring became a global reference."""
        if pid != _KEYRING_REF:
            raise pickle.UnpicklingError(f"unknown persistent reference {pid!r}")
        return self._keyring


def dump_core(core: TradingCore) -> bytes:
    """The core's whole state as bytes; the keyring is a reference, not its secrets."""
    buf = io.BytesIO()
    _CorePickler(buf, plain=(core.risk._decisions, core._order_strategy)).dump(core)
    return buf.getvalue()


def load_core(state: bytes, keyring: Keyring) -> TradingCore:
    """Inverse of :func:`dump_core` with ``keyring`` re-attached. Only for authenticated bytes."""
    core = _CoreUnpickler(state, keyring).load()
    if not isinstance(core, TradingCore):
        raise CheckpointError(f"checkpoint state is a {type(core).__name__}, not a TradingCore")
    return core


# ---------------------------------------------------------------------------
# Sealing and opening
# ---------------------------------------------------------------------------


def _mac_key(keyring: Keyring, key_id: str) -> bytes:
    secret = keyring.secret(key_id)
    if secret is None:
        raise CheckpointError(
            f"checkpoint was sealed with control key {key_id!r}, which is not in the keyring; restore that key "
            "or delete the account's trading_checkpoints row to start it flat"
        )
    return hmac.new(secret, _MAC_CONTEXT, hashlib.sha256).digest()


def _offsets_json(offsets: Offsets) -> bytes:
    plain = {t: {str(p): int(o) for p, o in parts.items()} for t, parts in offsets.items()}
    return orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)


def _mac(key: bytes, *, account: str, fmt: int, config_hash: str, offsets: Offsets, events: int, state: bytes) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (
        account.encode(),
        str(fmt).encode(),
        config_hash.encode(),
        _offsets_json(offsets),
        str(events).encode(),
        hashlib.sha256(state).digest(),
    ):
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.hexdigest()


def seal(core: TradingCore, *, config_hash: str, offsets: Offsets, events_applied: int, keyring: Keyring) -> Checkpoint:
    """Snapshot ``core`` now (synchronously: the caller must not be mid-message) and sign it."""
    if not keyring.key_ids:
        raise CheckpointError("no control key to seal the checkpoint with")
    key_id = keyring.key_ids[0]
    state = dump_core(core)
    frozen = {t: dict(parts) for t, parts in offsets.items()}
    account = core.config.account
    mac = _mac(
        _mac_key(keyring, key_id),
        account=account,
        fmt=FORMAT,
        config_hash=config_hash,
        offsets=frozen,
        events=events_applied,
        state=state,
    )
    return Checkpoint(
        account=account,
        format=FORMAT,
        config_hash=config_hash,
        key_id=key_id,
        offsets=frozen,
        events_applied=events_applied,
        state=state,
        mac=mac,
    )


def open_checkpoint(cp: Checkpoint, keyring: Keyring, *, account: str, config_hash: str) -> TradingCore:
    """Verify ``cp`` (account, format, configuration, MAC) and restore its core."""
    if cp.account != account:
        raise CheckpointError(f"checkpoint belongs to account {cp.account!r}, not {account!r}")
    if cp.format != FORMAT and cp.format not in _UPGRADES:
        why = _REFUSED.get(cp.format, "this code never wrote it")
        raise CheckpointError(
            f"checkpoint format {cp.format} is not this code's {FORMAT} ({why}); delete the account's "
            "trading_checkpoints row to start it flat"
        )
    if cp.config_hash != config_hash:
        raise CheckpointError(
            f"checkpoint was built with trading configuration {cp.config_hash}, this worker runs {config_hash}; "
            "start with the same TRADEFLOW_TRADING_* / _STRATEGY_* / _RISK_* / _TRACK_* settings, or "
            "delete the account's trading_checkpoints row to start it flat"
        )
    expected = _mac(
        _mac_key(keyring, cp.key_id),
        account=cp.account,
        fmt=cp.format,
        config_hash=cp.config_hash,
        offsets=cp.offsets,
        events=cp.events_applied,
        state=cp.state,
    )
    if not hmac.compare_digest(expected, cp.mac):
        raise CheckpointError(
            "checkpoint MAC does not verify: the row was not written by this account's "
            "trading agent (or was altered); refusing to load it"
        )
    try:
        core = load_core(cp.state, keyring)
        upgrade = _UPGRADES.get(cp.format)
        if upgrade is not None:
            upgrade(core)
        return core
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint state does not load: {type(exc).__name__}: {exc}") from None
