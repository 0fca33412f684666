"""Bars -> data-quality findings + feature vectors, gated by the quality policy (pure).

The one place that decides whether a bar's features may flow on to models:
every bar goes through the :class:`~agents.market.quality.DataQualityEngine`
first, then advances the :class:`~agents.features.engine.FeatureEngine` (so
feature state stays continuous even while blocked), and the vector is emitted
only when the quality policy does not block the stream. The live agent and the
backtest replay both drive this class, so they gate identically.

Redelivery: a bar the feature stream has already applied (at-least-once
delivery after a crash) is recognised by the feature engine (``duplicate``,
or the latest bar returning the same vector) and is not re-checked for
quality, so a redelivery is not reported as a data defect.

Feature engines are kept per ``data_version`` = the bar's ``source``, so
bars of different provenance never mix in one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.clock import Clock
from agents.features.engine import BarRejected, FeatureEngine, RejectReason, SymbolState
from agents.features.spec import DEFAULT_SPEC, FeatureSpec
from agents.market.quality import DataQualityEngine, QualityConfig, QualityPolicy
from topics.records import Bar, DataQualityEvent, FeatureVector
from topics.schema import keyword_constructor


@dataclass(frozen=True, slots=True)
class PipelineOutput:
    quality: tuple[DataQualityEvent, ...]
    features: FeatureVector | None
    #: Findings that blocked the vector (empty when not blocked).
    blocked_by: tuple[str, ...] = ()
    #: Why the feature engine did not apply the bar, if it did not.
    rejected: RejectReason | None = None
    needs_recompute: bool = False


#: ``PipelineOutput(...)`` without the frozen ``__init__``'s per-field cost (one per bar).
_make_output = keyword_constructor(PipelineOutput)


class FeaturePipeline:
    def __init__(
        self,
        clock: Clock,
        spec: FeatureSpec = DEFAULT_SPEC,
        quality_config: QualityConfig | None = None,
        policy: QualityPolicy | None = None,
    ) -> None:
        self.clock = clock
        self.spec = spec
        self.quality = DataQualityEngine(clock, quality_config or QualityConfig(), policy or QualityPolicy())
        self._engines: dict[str, FeatureEngine] = {}

    def engine(self, data_version: str) -> FeatureEngine:
        eng = self._engines.get(data_version)
        if eng is None:
            eng = self._engines[data_version] = FeatureEngine(data_version=data_version, spec=self.spec)
        return eng

    # -- the step -----------------------------------------------------------
    def on_bar(self, bar: Bar) -> PipelineOutput:
        eng = self._engines.get(bar.source) or self.engine(bar.source)
        st = eng.state(bar.venue, bar.symbol, bar.timeframe)
        is_new = st is None or bar.open_time > st.last_open_time
        findings: tuple[DataQualityEvent, ...] = ()
        if is_new:
            findings = tuple(self.quality.on_bar(bar))
        try:
            fv = eng.update(bar, self.clock.now_ns())
        except BarRejected as rej:
            if rej.reason is not RejectReason.DUPLICATE and not is_new:
                # a revision or an out-of-order bar is a data event worth a finding
                findings = tuple(self.quality.on_bar(bar))
            return PipelineOutput(findings, None, rejected=rej.reason, needs_recompute=rej.needs_recompute)
        if fv is None:
            return _make_output(quality=findings, features=None)
        blocked, reasons = self.quality.is_blocked(bar.symbol, bar.timeframe, bar.venue)
        if blocked:
            return PipelineOutput(findings, None, blocked_by=reasons)
        return _make_output(quality=findings, features=fv)

    # -- state for the agent's table ----------------------------------------------
    def snapshot(self, bar: Bar) -> dict[str, Any] | None:
        st = self.engine(bar.source).state(bar.venue, bar.symbol, bar.timeframe)
        return None if st is None else {"source": bar.source, "state": st.to_state()}

    def restore(self, snap: dict[str, Any]) -> None:
        self.engine(snap["source"]).restore(SymbolState.from_state(snap["state"], self.spec))

    def has_state(self, bar: Bar) -> bool:
        return self.engine(bar.source).state(bar.venue, bar.symbol, bar.timeframe) is not None
