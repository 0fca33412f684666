"""Audit: replay a recorded time range through the trading core and prove the
decisions come out again, byte for byte, or name the first one that does not.

An audit loads every recorded input of the account (``ev_signals``, ``ev_market_bars``,
``ev_control``, ``ev_model_registry``) from the start of its history, feeds them in the order
the agent applied them to a fresh :class:`~agents.trading.core.TradingCore` with the same
configuration and no wall clock, and compares the outputs stamped in ``[start, end)`` with
the recorded rows: both sides ordered by ``(ts_init, topic, event_id)`` and hashed with
:mod:`topics.streamhash` (the *decision hash*); on a difference, the first divergent record
side by side with the differing fields. Compared: all of the account's outputs (:class:`Scope`:
strategy intents and protective exits with their decisions, orders and fills, ...); a recorded
row in the range outside it is counted in the report, never dropped unsaid.

Input order: the agent's input journal (``trading_input_journal``) when there is one, else
the canonical ``(ts_event, registry < control < bars < signals, symbol, partition, offset)``;
the report says which. A ccxt account's venue answers are journaled inputs, replayed through
``on_execution``, so it is audited from its journal only. Counterfactual mode (``overrides``)
replays the same inputs under another configuration and reports the difference as information.

Design: docs/audit.md#audit-replay
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from agents.control.signing import Keyring
from agents.execution.interface import client_order_id_for
from agents.risk.engine import COMPONENT as RISK_COMPONENT
from agents.signals.signing import SignalVerifier
from agents.trading.core import ExecutionMode, TradingConfig, TradingCore
from runtime.errors import Retriable
from storage import audit as recorded
from storage.connection import Conn
from topics.catalogue import DEFAULT_TOPIC, spec
from topics.records import (
    Alert,
    Bar,
    ControlAudit,
    ControlEvent,
    Fill,
    ModelRegistryEvent,
    OrderIntent,
    OrderUpdate,
    PortfolioSnapshot,
    RiskDecision,
    Signal,
)
from topics.schema import Record, codec_for
from topics.streamhash import stream_hash

__all__ = [
    "FAR_FUTURE_NS",
    "AuditReport",
    "Divergence",
    "LeftOut",
    "Scope",
    "SinkBehind",
    "apply_overrides",
    "audit",
    "compare",
    "decision_hash",
    "load_inputs",
    "replay_outputs",
    "replay_steps",
    "split_scope",
]

INPUTS: tuple[tuple[str, type[Record]], ...] = (
    ("models.registry", ModelRegistryEvent),
    ("control", ControlEvent),
    ("market.bars", Bar),
    ("signals", Signal),
)
OUTPUTS = (
    "orders.intents",
    "risk.decisions",
    "orders.updates",
    "fills",
    "portfolio.state",
    "control.audit",
    "ops.alerts",
)
#: Venue answers: inputs of an external-execution account, found only through its journal.
EXECUTION_INPUTS: tuple[tuple[str, type[Record]], ...] = (("orders.updates", OrderUpdate), ("fills", Fill))
_OUTPUT_RANK = {name: i for i, name in enumerate(OUTPUTS)}
_INPUT_RANK = {name: i for i, (name, _) in enumerate(INPUTS)}
#: An open end of the range (``tradeflow audit`` without ``--to``).
FAR_FUTURE_NS = 2**63 - 1
#: Alerts about inputs that never decoded: nothing to replay them from.
NOT_REPLAYABLE_ALERTS = ("control_undecodable",)


class SinkBehind(Retriable, RuntimeError):
    """The sink has not stored the outputs the journal's inputs made yet: audit again when it has."""


# ---------------------------------------------------------------------------
# pure part
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One output record as bytes, with its canonical sort key."""

    ts_init: int
    topic: str
    event_id: str
    payload: str

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.ts_init, _OUTPUT_RANK[self.topic], self.event_id)


def item_of(rec: Record) -> Item:
    topic = DEFAULT_TOPIC[type(rec)]
    return Item(rec.ts_init, topic, rec.event_id, codec_for(type(rec)).encode(rec).decode())


def decision_hash(items: Iterable[Item]) -> str:
    """The project's stream hash (:mod:`topics.streamhash`) over the items in canonical order."""
    return stream_hash((spec(it.topic).record.KIND, it.payload.encode()) for it in sorted(items, key=lambda i: i.key))


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first record where the two streams differ (``None`` side: absent there)."""

    topic: str
    ts_init: int
    event_id: str
    recorded: str | None
    replayed: str | None
    fields: tuple[str, ...]

    def side_by_side(self) -> str:
        def fmt(p: str | None) -> dict[str, Any]:
            return {} if p is None else dict(json.loads(p))

        rec, rep = fmt(self.recorded), fmt(self.replayed)
        keys = sorted(set(rec) | set(rep))
        width = max((len(k) for k in keys), default=5)
        lines = [
            f"first divergence: {self.topic} event {self.event_id} at ts_init {self.ts_init}",
            f"  {'field':<{width}}  {'recorded':<40}  replayed",
        ]
        if self.recorded is None:
            lines.append("  (not in the recorded stream: the replay produced a record the live run did not)")
        if self.replayed is None:
            lines.append("  (not produced by the replay: the live run recorded a decision the replay does not make)")
        for k in keys:
            a, b = rec.get(k, "-"), rep.get(k, "-")
            mark = "  *" if k in self.fields else ""
            lines.append(f"  {k:<{width}}  {json.dumps(a)[:40]:<40}  {json.dumps(b)[:60]}{mark}")
        return "\n".join(lines)


def compare(recorded: Sequence[Item], replayed: Sequence[Item]) -> Divergence | None:
    """The first divergence in canonical order, or ``None`` when the streams are identical."""
    a = sorted(recorded, key=lambda i: i.key)
    b = sorted(replayed, key=lambda i: i.key)
    i = j = 0
    while i < len(a) or j < len(b):
        x = a[i] if i < len(a) else None
        y = b[j] if j < len(b) else None
        if x is not None and y is not None and x.key == y.key:
            if x.payload != y.payload:
                fields = _differing(x.payload, y.payload)
                return Divergence(x.topic, x.ts_init, x.event_id, x.payload, y.payload, fields)
            i, j = i + 1, j + 1
        elif y is None or (x is not None and x.key < y.key):
            assert x is not None
            return Divergence(x.topic, x.ts_init, x.event_id, x.payload, None, ())
        else:
            return Divergence(y.topic, y.ts_init, y.event_id, None, y.payload, ())
    return None


def _differing(p: str, q: str) -> tuple[str, ...]:
    a, b = json.loads(p), json.loads(q)
    return tuple(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))


def replay_outputs(
    config: TradingConfig,
    keyring: Keyring,
    inputs: Iterable[tuple[Record, int | None]],
    signal_verifier: SignalVerifier | None = None,
) -> list[Record]:
    """Every output of a fresh core fed ``(input, arrival bound)`` in order (no wall clock)."""
    return [r for step in replay_steps(config, keyring, inputs, signal_verifier) for r in step]


def replay_steps(
    config: TradingConfig,
    keyring: Keyring,
    inputs: Iterable[tuple[Record, int | None]],
    signal_verifier: SignalVerifier | None = None,
) -> list[tuple[Record, ...]]:
    """The outputs of a fresh core fed ``(input, arrival bound)`` in order (no wall clock), input by input.
    ``signal_verifier``: the live agent's (the same signals refused, the same alerts)."""
    core = TradingCore(config, keyring, signal_verifier)
    out: list[tuple[Record, ...]] = []
    for rec, arrival in inputs:
        if isinstance(rec, Bar):
            out.append(core.on_bar(rec, arrival).records)
        elif isinstance(rec, Signal):
            out.append(core.on_signal(rec, arrival).records)
        elif isinstance(rec, ControlEvent):
            out.append(core.on_control(rec, arrival).records)
        elif isinstance(rec, ModelRegistryEvent):
            out.append(core.on_registry(rec, arrival).records)
        elif isinstance(rec, OrderUpdate | Fill):  # a venue's answer (external execution; arrival is None)
            out.append(core.on_execution(rec).records)
        else:  # pragma: no cover - load_inputs yields only these
            raise TypeError(f"not a trading input: {type(rec).__name__}")
    return out


@dataclass(frozen=True, slots=True)
class Scope:
    """Which output records are one account's decision stream (see docs/audit.md#what-is-compared).

    Intents of its strategy, and the risk engine's protective exits (stop loss, take profit) on its
    track; the risk decisions, order updates and fills of those intents (``intent_ids``: every one
    known, recorded or replayed, from the whole history: an order in the range can be for an intent
    made before it); its portfolio snapshots, the risk component's control audits and its alerts.
    A recorded record outside is left out of the comparison *and counted* in the report, by reason.
    """

    account: str
    strategy_id: str
    protective_strategy_id: str
    track: str
    alert_source: str
    intent_ids: frozenset[str] = frozenset()
    coids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, config: TradingConfig, intent_ids: Iterable[str] = ()) -> Scope:
        ids = frozenset(intent_ids)
        return cls(
            account=config.account,
            strategy_id=config.strategy.strategy_id,
            protective_strategy_id=config.risk.protective_strategy_id,
            track=config.risk.track,
            alert_source=config.component,
            intent_ids=ids,
            coids=frozenset(client_order_id_for(i) for i in ids),
        )

    @property
    def strategy_ids(self) -> tuple[str, str]:
        return (self.strategy_id, self.protective_strategy_id)

    def owns_intent(self, strategy_id: str, track: str) -> bool:
        """A strategy intent (any track), or a protective exit on this account's track."""
        return strategy_id == self.strategy_id or (strategy_id == self.protective_strategy_id and track == self.track)

    def exclusion(self, rec: Record) -> str | None:
        """``None`` when ``rec`` is this account's; else why it is not (a short phrase for the report)."""
        if isinstance(rec, OrderIntent):
            return None if self.owns_intent(rec.strategy_id, rec.track) else "intent of another strategy or track"
        if isinstance(rec, RiskDecision):
            mine = rec.intent_event_id in self.intent_ids or rec.strategy_id == self.strategy_id
            return None if mine else "decision on an intent not this account's"
        if isinstance(rec, OrderUpdate | Fill):
            return None if rec.client_order_id in self.coids else "order of an intent not this account's"
        if isinstance(rec, PortfolioSnapshot):
            return None if rec.account == self.account else "another account's portfolio"
        if isinstance(rec, ControlAudit):
            return None if rec.component == RISK_COMPONENT else "another component's control audit"
        if isinstance(rec, Alert):
            if rec.source != self.alert_source:
                return "another source's alert"
            if rec.code in NOT_REPLAYABLE_ALERTS:
                return f"{rec.code} alert (its input never decoded: nothing to replay)"
            return None
        return f"not an output of the trading core ({type(rec).__name__})"  # pragma: no cover - OUTPUTS only

    def describe(self) -> str:
        return (
            f"intents of strategy {self.strategy_id} and protective exits ({self.protective_strategy_id}, "
            f"track {self.track}), with their risk decisions, order updates and fills; portfolio.state of "
            f"account {self.account}; control.audit of component {RISK_COMPONENT}; ops.alerts of {self.alert_source}"
        )


@dataclass(frozen=True, slots=True)
class LeftOut:
    """Records of one topic in the range left out of the comparison, and why."""

    topic: str
    reason: str
    recorded: int
    replayed: int


def split_scope(
    recorded: Sequence[tuple[Record, Item]], replayed: Sequence[Record], recorded_scope: Scope, replayed_scope: Scope
) -> tuple[list[Item], list[Item], list[LeftOut]]:
    """Both sides cut to the account's scope, and what each cut left out, counted by topic and reason."""
    left: dict[tuple[str, str], list[int]] = {}
    rec_in: list[Item] = []
    for rec, it in recorded:
        why = recorded_scope.exclusion(rec)
        if why is None:
            rec_in.append(it)
        else:
            left.setdefault((it.topic, why), [0, 0])[0] += 1
    rep_in: list[Item] = []
    for r in replayed:
        it = item_of(r)
        why = replayed_scope.exclusion(r)
        if why is None:
            rep_in.append(it)
        else:
            left.setdefault((it.topic, why), [0, 0])[1] += 1
    out = [
        LeftOut(t, why, a, b)
        for (t, why), (a, b) in sorted(left.items(), key=lambda kv: (_OUTPUT_RANK[kv[0][0]], kv[0][1]))
    ]
    return rec_in, rep_in, out


def apply_overrides(config: TradingConfig, overrides: Mapping[str, str]) -> TradingConfig:
    """``{"risk.max_order_notional": "5000", "account": "x"}`` applied to a trading config.

    Values are parsed by the type of the field (float, int, bool, str, tuples
    of str as comma lists); the configs' own validation runs on the result.
    """
    for path, text in overrides.items():
        parts = path.split(".")
        config = _replace_path(config, parts, text, path)
    return config


def _replace_path(obj: Any, parts: list[str], text: str, path: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    if parts[0] not in names:
        raise ValueError(f"unknown setting {path!r}: {type(obj).__name__} has no field {parts[0]!r}")
    current = getattr(obj, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"unknown setting {path!r}: {parts[0]!r} is not a section")
        value = _replace_path(current, parts[1:], text, path)
    else:
        value = _parse_like(current, text, path)
    return dataclasses.replace(obj, **{parts[0]: value})


def _parse_like(current: Any, text: str, path: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(current, int) and not isinstance(current, bool):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return type(current)(text) if type(current) is not str else text
        if isinstance(current, tuple) and all(isinstance(x, str) for x in current):
            return tuple(x.strip() for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"setting {path!r}: cannot parse {text!r} as {type(current).__name__}") from None
    raise ValueError(f"setting {path!r} ({type(current).__name__}) cannot be set from the command line")


# ---------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditReport:
    start_ns: int
    end_ns: int
    order: str  # "journal" or "canonical"
    inputs: int
    recorded: int
    replayed: int
    recorded_hash: str
    replayed_hash: str
    counts: dict[str, tuple[int, int]]  # topic -> (recorded, replayed)
    divergence: Divergence | None
    counterfactual: bool = False
    overrides: dict[str, str] = field(default_factory=dict)
    final_equity: tuple[float | None, float | None] = (None, None)
    #: recorded outputs left out: made after the journal's last checkpoint (their inputs are not journaled yet)
    beyond_horizon: int = 0
    #: which records are the account's (:meth:`Scope.describe`), and the ones in the range outside it
    scope: str = ""
    left_out: tuple[LeftOut, ...] = ()

    @property
    def identical(self) -> bool:
        """Same hash, no divergent record and, kind by kind, as many records replayed as recorded."""
        counts_equal = all(a == b for a, b in self.counts.values())
        return self.divergence is None and self.recorded_hash == self.replayed_hash and counts_equal

    def render(self) -> str:
        head = "counterfactual" if self.counterfactual else "audit"
        lines = [
            f"{head}: {self.inputs} inputs replayed in {self.order} order; outputs in range: "
            f"{self.recorded} recorded, {self.replayed} replayed",
            f"recorded decision hash  {self.recorded_hash}",
            f"replayed decision hash  {self.replayed_hash}",
        ]
        lines.append(f"range (ts_init, market time): {_iso_ns(self.start_ns)} .. {_iso_ns(self.end_ns)}")
        if self.beyond_horizon:
            lines.append(
                f"{self.beyond_horizon} recorded outputs after the journal's last checkpoint left out "
                "(their inputs are journaled with the next one)"
            )
        if self.overrides:
            lines.append("overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(self.overrides.items())))
        for topic, (a, b) in self.counts.items():
            lines.append(f"  {topic:<16} recorded {a:>7}  replayed {b:>7}" + ("" if a == b else "  <-"))
        if self.scope:
            lines.append(f"compared: {self.scope}")
        if self.left_out:
            lines.append("left out of the comparison (in the range, outside that scope):")
            for lo in self.left_out:
                lines.append(f"  {lo.topic:<16} recorded {lo.recorded:>7}  replayed {lo.replayed:>7}  {lo.reason}")
        rec_eq, rep_eq = self.final_equity
        if rec_eq is not None or rep_eq is not None:
            lines.append(f"  final equity     recorded {rec_eq}  replayed {rep_eq}")
        if self.identical:
            lines.append("IDENTICAL: every recorded decision in the range is reproduced byte for byte")
        else:
            lines.append("DIVERGENT" + (" (expected under other settings)" if self.counterfactual else ""))
            if self.divergence is not None:
                lines.append(self.divergence.side_by_side())
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        d = self.divergence
        return {
            "identical": self.identical,
            "order": self.order,
            "inputs": self.inputs,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "recorded_hash": self.recorded_hash,
            "replayed_hash": self.replayed_hash,
            "counts": {k: list(v) for k, v in self.counts.items()},
            "counterfactual": self.counterfactual,
            "overrides": self.overrides,
            "final_equity": list(self.final_equity),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "beyond_horizon": self.beyond_horizon,
            "scope": self.scope,
            "left_out": [
                {"topic": lo.topic, "reason": lo.reason, "recorded": lo.recorded, "replayed": lo.replayed}
                for lo in self.left_out
            ],
            "divergence": None
            if d is None
            else {
                "topic": d.topic,
                "ts_init": d.ts_init,
                "event_id": d.event_id,
                "fields": list(d.fields),
                "recorded": None if d.recorded is None else json.loads(d.recorded),
                "replayed": None if d.replayed is None else json.loads(d.replayed),
            },
        }


@dataclass(frozen=True, slots=True)
class Inputs:
    """What an audit replays: ``(input, arrival bound)`` in consumption order, which order that is, and
    for a journal the output horizon of its last checkpoint (empty: unknown, or no journal)."""

    items: list[tuple[Record, int | None]]
    order: str
    horizon: dict[str, dict[int, int]] = field(default_factory=dict)
    arrivals: list[int | None] = field(default_factory=list)


async def load_inputs(conn: Conn, config: TradingConfig, history_from_ns: int, end_ns: int) -> Inputs:
    """The account's recorded inputs with their arrival bounds, in consumption order; and which order that is.

    With a journal: every journaled input (from the first: the state is rebuilt
    from the account's whole history), with the arrival bound the agent used,
    and the output horizon saved with the journal's last rows (one snapshot).
    Without: inputs with ``history_from <= ts_event < end`` in canonical order.
    """
    classes = dict(INPUTS + EXECUTION_INPUTS)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        journal = await recorded.journal(conn, config.account)
        horizon = await recorded.output_horizon(conn, config.account) if journal else {}
    if journal:
        payloads: dict[str, str] = {}
        for name in classes:
            ids = [r.event_id for r in journal if r.topic == name]
            payloads.update(await recorded.payloads(conn, name, ids))
        missing = [r.event_id for r in journal if r.event_id not in payloads]
        if missing:
            raise SinkBehind(
                f"{len(missing)} journaled inputs are not stored yet (first {missing[0]}); "
                "wait for the sink to catch up and run the audit again"
            )
        items = [(codec_for(classes[r.topic]).decode(payloads[r.event_id]), r.arrival_ns) for r in journal]
        return Inputs(items, "journal", horizon, [r.arrival_ns for r in journal])
    if config.execution is ExecutionMode.EXTERNAL:
        raise ValueError(
            f"account {config.account!r} uses external execution: its venue answers are inputs, "
            "and only the agent's input journal says where they were applied; it has no journal"
        )
    timeframes = [t.value for t in config.timeframes]
    loaded: list[tuple[tuple[int, int, str, int, int], Record]] = []
    for name, cls in INPUTS:
        codec = codec_for(cls)
        for r in await recorded.inputs_in_range(
            conn, name, history_from_ns, end_ns, timeframes if cls is Bar else None
        ):
            rec = codec.decode(r.payload)
            tie = str(getattr(rec, "symbol", ""))
            loaded.append(((r.ts_event, _INPUT_RANK[name], tie, r.kafka_partition, r.kafka_offset), rec))
    return Inputs([(rec, None) for _, rec in sorted(loaded, key=lambda kv: kv[0])], "canonical")


async def load_recorded(
    conn: Conn, start_ns: int, end_ns: int, horizon: Mapping[str, Mapping[int, int]]
) -> tuple[list[tuple[Record, Item]], int]:
    """Recorded outputs in the range: each decoded (for scoping) with its bytes exactly as stored; and
    how many were left out past ``horizon`` (a non-empty horizon: outputs of a topic partition past its
    offset there, or of a partition not in it, were sent after the journal's last checkpoint)."""
    out: list[tuple[Record, Item]] = []
    beyond = 0
    for name in OUTPUTS:
        codec = codec_for(spec(name).record)
        last = horizon.get(name, {})
        for row in await recorded.outputs_in_range(conn, name, start_ns, end_ns):
            rec = codec.decode(row.payload)
            if horizon and row.kafka_offset > last.get(row.kafka_partition, -1):
                beyond += 1
                continue
            out.append((rec, Item(rec.ts_init, name, rec.event_id, row.payload)))
    return out, beyond


async def wait_for_sink(conn: Conn, horizon: Mapping[str, Mapping[int, int]], settle_s: float) -> None:
    """Wait until the sink stored every output up to ``horizon`` (it runs a little behind the agent's
    checkpoints); :class:`SinkBehind` after ``settle_s``."""
    deadline = time.monotonic() + settle_s
    while True:
        behind = []
        for topic, parts in sorted(horizon.items()):
            stored = await recorded.stored_through(conn, topic)
            behind += [
                f"{topic}[{p}] {stored.get(p, -1)} < {o}" for p, o in sorted(parts.items()) if stored.get(p, -1) < o
            ]
        if not behind:
            return
        if time.monotonic() >= deadline:
            raise SinkBehind(
                f"the sink has not stored the trading agent's outputs up to its last checkpoint after {settle_s:.0f} s "
                f"({', '.join(behind[:3])}); is the sink running? run the audit again when it has caught up"
            )
        await asyncio.sleep(0.5)


async def audit(
    dsn: str,
    config: TradingConfig,
    keyring: Keyring,
    start_ns: int,
    end_ns: int,
    *,
    history_from_ns: int = 0,
    overrides: Mapping[str, str] | None = None,
    since_arrival_ns: int | None = None,
    settle_s: float = 30.0,
    signal_verifier: SignalVerifier | None = None,
) -> AuditReport:
    """Replay ``[history_from, end)`` and compare the outputs in ``[start, end)`` with the recorded ones.

    ``since_arrival_ns`` (``tradeflow audit --last``): the range starts at the first output made by an
    input that arrived at or after that wall time (journal only; ``start_ns`` is then ignored).
    With a journal, the recorded outputs are cut at its last checkpoint's output horizon, after waiting
    up to ``settle_s`` for the sink to store everything up to there (:class:`SinkBehind` otherwise).
    """
    if since_arrival_ns is None and start_ns >= end_ns:
        raise ValueError("the range is empty or inverted: --from must be before --to")
    if since_arrival_ns is None and history_from_ns > start_ns:
        raise ValueError("--history-from must not be after --from (state is rebuilt from the history)")
    replay_config = apply_overrides(config, overrides or {})
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + settle_s
        while True:  # the sink stores the journaled inputs a moment after the agent applied them
            try:
                inputs = await load_inputs(conn, config, history_from_ns, end_ns)
                break
            except SinkBehind:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)
        if inputs.horizon:  # before the replay: its CPU time must not eat the sink's settle time
            await wait_for_sink(conn, inputs.horizon, max(0.0, deadline - time.monotonic()))
        steps = replay_steps(replay_config, keyring, inputs.items, signal_verifier)
        if since_arrival_ns is not None:
            start_ns = _window_start(inputs, steps, since_arrival_ns)
        recorded_all, beyond = await load_recorded(conn, start_ns, end_ns, inputs.horizon)
        recorded_intents = await recorded.intent_tracks(conn, Scope.of(config).strategy_ids, end_ns)
    finally:
        await conn.close()
    replayed_all = [r for step in steps for r in step if start_ns <= r.ts_init < end_ns]
    recorded_scope, replayed_scope = _scopes(config, replay_config, recorded_intents, steps)
    rec_items, rep_items, left_out = split_scope(recorded_all, replayed_all, recorded_scope, replayed_scope)
    counts = {
        t: (sum(1 for i in rec_items if i.topic == t), sum(1 for i in rep_items if i.topic == t)) for t in OUTPUTS
    }
    return AuditReport(
        start_ns=start_ns,
        end_ns=end_ns,
        order=inputs.order,
        inputs=len(inputs.items),
        recorded=len(rec_items),
        replayed=len(rep_items),
        recorded_hash=decision_hash(rec_items),
        replayed_hash=decision_hash(rep_items),
        counts=counts,
        divergence=compare(rec_items, rep_items),
        counterfactual=bool(overrides),
        overrides=dict(overrides or {}),
        final_equity=(_final_equity(rec_items), _final_equity(rep_items)),
        beyond_horizon=beyond,
        scope=recorded_scope.describe(),
        left_out=tuple(left_out),
    )


def _scopes(
    config: TradingConfig,
    replay_config: TradingConfig,
    recorded_intents: Mapping[str, tuple[str, str]],
    steps: Sequence[Sequence[Record]],
) -> tuple[Scope, Scope]:
    """The scopes of the recorded (live configuration) and the replayed side (``--set`` applied), over one
    set of intents: every one either side's rule owns, recorded or replayed, in the whole history."""
    rec_rule, rep_rule = Scope.of(config), Scope.of(replay_config)
    ids = {eid for eid, (sid, track) in recorded_intents.items() if rec_rule.owns_intent(sid, track)}
    ids |= {
        r.event_id
        for step in steps
        for r in step
        if isinstance(r, OrderIntent) and rep_rule.owns_intent(r.strategy_id, r.track)
    }
    return Scope.of(config, ids), Scope.of(replay_config, ids)


def _window_start(inputs: Inputs, steps: Sequence[Sequence[Record]], since_arrival_ns: int) -> int:
    """The earliest ``ts_init`` of an output made by an input that arrived at or after ``since_arrival_ns``."""
    if inputs.order != "journal":
        raise ValueError("--last needs the account's input journal (arrival times); give --from instead")
    stamps = [
        r.ts_init
        for arrival, step in zip(inputs.arrivals, steps, strict=True)
        if arrival is not None and arrival >= since_arrival_ns
        for r in step
    ]
    if not stamps:
        raise ValueError(
            "no input of the account arrived in that window: nothing to audit (is the market feed running?)"
        )
    return min(stamps)


def _iso_ns(ns: int) -> str:
    if ns >= FAR_FUTURE_NS:
        return "open"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _final_equity(items: Sequence[Item]) -> float | None:
    snaps = [i for i in items if i.topic == "portfolio.state"]
    if not snaps:
        return None
    last = max(snaps, key=lambda i: i.key)
    value = json.loads(last.payload).get("equity")
    return None if value is None else float(value)
