"""Which model versions serve which symbol, and the streaming inference step (pure).

``RolloutState`` folds ``models.registry`` events (latest per (model_id,
version) by event time wins, so broker compaction is not needed) into the set
of versions to run per (symbol, timeframe): the newest version in an active
stage (``active``, ``canary_10``, ``canary_30``) emits trading signals, the
newest ``shadow`` version emits shadow signals that never trade.

``InferenceStep`` keeps the last feature vectors per stream and, for a micro-
batch of incoming vectors, returns the windows to score grouped by model
version. Scoring is the caller's (it owns the checkpoints); everything here is
deterministic, so the offline batch path and the worker agree bit for bit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from topics.records import FeatureVector, ModelRegistryEvent, ModelStage

ACTIVE_STAGES = frozenset({ModelStage.ACTIVE, ModelStage.CANARY_10, ModelStage.CANARY_30})


@dataclass(frozen=True)
class Served:
    model_id: str
    version: str
    shadow: bool
    event: ModelRegistryEvent

    @property
    def window(self) -> int:
        return int(self.event.config["window"])


class RolloutState:
    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], ModelRegistryEvent] = {}

    def apply(self, ev: ModelRegistryEvent) -> bool:
        """Fold one registry event; True when it changed the state."""
        key = (ev.model_id, ev.version)
        cur = self._latest.get(key)
        if cur is not None and (cur.ts_event, cur.event_id) >= (ev.ts_event, ev.event_id):
            return False
        self._latest[key] = ev
        return True

    def serving(self, symbol: str, timeframe: str) -> list[Served]:
        """Per model_id: the newest active-stage version, and the newest shadow version."""
        best: dict[tuple[str, bool], ModelRegistryEvent] = {}
        for ev in self._latest.values():
            if ev.config.get("symbol") != symbol or ev.config.get("timeframe") != timeframe:
                continue
            if ev.stage in ACTIVE_STAGES:
                shadow = False
            elif ev.stage is ModelStage.SHADOW:
                shadow = True
            else:
                continue
            k = (ev.model_id, shadow)
            if k not in best or (best[k].ts_event, best[k].version) < (ev.ts_event, ev.version):
                best[k] = ev
        return sorted(
            (Served(ev.model_id, ev.version, shadow, ev) for (_, shadow), ev in best.items()),
            key=lambda s: (s.model_id, s.shadow),
        )


@dataclass
class InferenceStep:
    """Per-stream windows of consecutive feature vectors."""

    max_window: int = 512
    _windows: dict[tuple[str, str, str, str, str], deque[FeatureVector]] = field(default_factory=dict)

    def push(self, fv: FeatureVector) -> deque[FeatureVector]:
        key = (fv.venue, fv.symbol, fv.timeframe.value, fv.feature_set_version, fv.data_version)
        buf = self._windows.get(key)
        if buf is None:
            buf = self._windows[key] = deque(maxlen=self.max_window)
        if buf:
            last = buf[-1]
            if fv.bar_open_time <= last.bar_open_time:
                return buf  # a redelivered or older vector: the window already holds it
            if fv.bar_open_time - last.bar_open_time != fv.timeframe.nanos:
                buf.clear()  # a gap: windows must be consecutive bars, start again
        buf.append(fv)
        return buf

    @staticmethod
    def window_of(buf: deque[FeatureVector], fv: FeatureVector, length: int) -> list[FeatureVector] | None:
        """The ``length`` vectors ending at ``fv``, or None when not (yet) available."""
        if not buf or buf[-1].event_id != fv.event_id or len(buf) < length:
            return None
        return list(buf)[-length:]
