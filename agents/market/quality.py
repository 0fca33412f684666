"""Data-quality checks on bar streams, and the block/release state they drive.

The :class:`DataQualityEngine` is a pure engine: feed it every bar
(``on_bar``), ask it about time passing (``check_staleness(now_ns)``) and about
the end of a finite input (``finish``); it returns
:class:`~topics.records.DataQualityEvent` records and keeps, per
``(venue, symbol, timeframe)`` stream, whether trading on that data is blocked.

Checks (:class:`Check`): gaps, duplicates and revisions, out-of-order bars, stale feed, OHLC
inconsistency, spikes (absolute range, open jump, robust return z-score), zero volume,
partial bars. :class:`QualityPolicy` decides which findings block (default: every error); a
blocked stream is released, and a ``released`` event reported, after
``release_after_clean_bars`` clean bars; warnings do not break a clean streak. Rolling
statistics keep a bar's first version. Events are deterministic, with ids from
``(venue, symbol, timeframe, check, ref_time)``, so a replay dedupes.

Design: docs/market_data.md#data-quality-checks (the table of checks and severities)
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import median

from agents.clock import Clock, FunctionClock
from topics.records import Bar, DataQualityEvent, Severity, Timeframe
from topics.schema import keyword_constructor

__all__ = [
    "BarsAudit",
    "Check",
    "DataQualityEngine",
    "QualityConfig",
    "QualityPolicy",
    "audit_bars",
]


# ---------------------------------------------------------------------------
# Checks, configuration, policy
# ---------------------------------------------------------------------------


class Check(enum.StrEnum):
    """Names used in ``DataQualityEvent.check``. Stable: dashboards and alerts key on them."""

    GAP = "gap"
    DUPLICATE = "duplicate"
    CONFLICTING_REVISION = "conflicting_revision"
    REVISED = "revised"
    STALE_REVISION = "stale_revision"
    OUT_OF_ORDER = "out_of_order"
    STALE_FEED = "stale_feed"
    OHLC_INCONSISTENT = "ohlc_inconsistent"
    SPIKE_RANGE = "spike_range"
    SPIKE_OPEN_JUMP = "spike_open_jump"
    SPIKE_RETURN = "spike_return"
    ZERO_VOLUME = "zero_volume"
    PARTIAL = "partial"
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """Thresholds. Defaults are set against the real histories in ``ops/sample_data``.

    gap_error_bars (3)
        A gap of this many missing bars or more is an error (blocks by default):
        rolling features over it would silently span the wrong time. Shorter gaps
        are warnings.
    stale_after_bars (3.0)
        The feed is stale when ``now`` is more than this many timeframes past the
        close of the newest bar.
    max_bar_range (0.5)
        ``high/low - 1`` above this is an impossible bar. BTC's worst real hour in
        2017-2022 (2020-03-13 02:00) is 0.395; the first Binance candle is 2.80.
    max_open_jump (0.05)
        ``|open/prev_close - 1|`` above this between adjacent bars. On a continuous
        market the open is the previous close give or take a tick; the gymcrypto
        30m histories never exceed 0.011, Binance has four hours above 0.05.
    spike_window (168), spike_warmup (48), spike_mad_z (30.0), spike_min_scale (1e-4)
        The robust return check: the close-to-close log return is compared with
        the median and MAD (scaled by 1.4826) of the previous ``spike_window``
        returns once ``spike_warmup`` of them exist. 30 is deliberately high:
        crypto is fat-tailed and this check should name the handful of most
        extreme bars (6 in five years of BTC/USDT 1h), not every volatile day.
        ``spike_min_scale`` floors the MAD (in log units) so a flat stretch (an
        exchange halt) does not make the next ordinary move infinitely unusual.
    partial_volume_window (24), partial_volume_ratio (0.35)
        :meth:`DataQualityEngine.finish` calls the last bar partial when its
        volume is below ``ratio`` times the median volume of the previous
        ``window`` bars. On BTC/USDT 1h about 1% of complete bars fall that low,
        so it is a warning only, and only ever applied to the final bar.
    zero_volume_error_bars (3)
        A run of this many zero-volume bars is a halted market (Binance's
        maintenance windows: up to 33 hours in 2018-02), an error that blocks by
        default; an isolated empty bar is a warning.
    history_bars (2000)
        Bars per stream remembered for duplicate and revision detection.
    """

    gap_error_bars: int = 3
    stale_after_bars: float = 3.0
    max_bar_range: float = 0.5
    max_open_jump: float = 0.05
    spike_window: int = 168
    spike_warmup: int = 48
    spike_mad_z: float = 30.0
    spike_min_scale: float = 1e-4
    partial_volume_window: int = 24
    partial_volume_ratio: float = 0.35
    zero_volume_error_bars: int = 3
    history_bars: int = 2000

    def __post_init__(self) -> None:
        if min(self.gap_error_bars, self.zero_volume_error_bars, self.history_bars) < 1:
            raise ValueError("gap_error_bars, zero_volume_error_bars and history_bars must be >= 1")
        if not 2 <= self.spike_warmup <= self.spike_window:
            raise ValueError("need 2 <= spike_warmup <= spike_window")
        if self.partial_volume_window < 1:
            raise ValueError("partial_volume_window must be >= 1")
        for name in ("stale_after_bars", "max_bar_range", "max_open_jump", "spike_mad_z", "spike_min_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 < self.partial_volume_ratio < 1:
            raise ValueError("partial_volume_ratio must be in (0, 1)")


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    """Which findings block trading on a stream, and when the block lifts.

    A finding blocks when its check is in ``always_block``, or its severity is at
    least ``block_at_severity`` and its check is not in ``never_block``
    (``block_at_severity=None``: only ``always_block`` blocks). ``released`` never
    blocks. A blocked stream is released after ``release_after_clean_bars``
    consecutive new bars without a blocking finding.
    """

    block_at_severity: Severity | None = Severity.ERROR
    always_block: frozenset[str] = frozenset()
    never_block: frozenset[str] = frozenset()
    release_after_clean_bars: int = 3

    def __post_init__(self) -> None:
        if self.release_after_clean_bars < 1:
            raise ValueError("release_after_clean_bars must be >= 1")
        both = self.always_block & self.never_block
        if both:
            raise ValueError(f"checks both always and never blocking: {sorted(both)}")

    def blocks(self, check: str, severity: Severity) -> bool:
        if check == Check.RELEASED:
            return False
        if check in self.always_block:
            return True
        if check in self.never_block or self.block_at_severity is None:
            return False
        return _SEVERITY_RANK[severity] >= _SEVERITY_RANK[self.block_at_severity]


# ---------------------------------------------------------------------------
# Per-stream state
# ---------------------------------------------------------------------------

_StreamKey = tuple[str, str, Timeframe]


@dataclass(frozen=True, slots=True)
class _Seen:
    revision: int
    values: tuple[float, float, float, float, float, bool]


#: ``_Seen(...)`` without the frozen ``__init__``'s per-field cost (one per bar).
_make_seen = keyword_constructor(_Seen)


@dataclass(frozen=True, slots=True)
class _Finding:
    check: Check
    severity: Severity
    ref_time: int
    value: float | None
    detail: str


class _RollingRobust:
    """Median and MAD of the last ``size`` values, kept sorted for O(size) updates."""

    __slots__ = ("_fifo", "_sorted")

    def __init__(self, size: int) -> None:
        self._fifo: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._fifo)

    def push(self, x: float) -> None:
        fifo = self._fifo
        if fifo.maxlen is not None and len(fifo) == fifo.maxlen:
            old = fifo[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        fifo.append(x)
        bisect.insort(self._sorted, x)

    def median(self) -> float:
        return _median_of_sorted(self._sorted)

    def mad(self, center: float) -> float:
        """Median of ``|x - center|``: the same float as the median of the sorted deviations.

        Over the sorted values the deviations are a descending run (below ``center``) then an
        ascending one; the middle order statistics of their union are selected by bisection
        (O(log n)) instead of building and merging all ``n`` of them.
        """
        values = self._sorted
        n = len(values)
        if n == 0:
            raise ValueError("median of no values")
        split = bisect.bisect_left(values, center)
        lower, upper = _middle_deviations(values, split, center, n // 2)
        return upper if n % 2 else (lower + upper) / 2


def _middle_deviations(values: list[float], split: int, center: float, k: int) -> tuple[float, float]:
    """The ``k - 1``-th and ``k``-th smallest (0-based; the first is meaningful for ``k >= 1``) of
    ``abs(x - center)`` over sorted ``values``.

    ``values[:split]`` are below ``center``: their deviations ascend going left; the rest ascend going
    right. Rounded subtraction is monotonic, so both runs are sorted and the answers are among their
    computed floats: bisect how many of the ``k + 1`` smallest come from the lower run; the largest of
    those is the ``k``-th, the next largest the ``k - 1``-th.
    """
    n_above = len(values) - split
    # the j-th smallest deviation (0-based) is abs(values[split - 1 - j] - center) below, abs(values[split + j]
    # - center) above; written out inline (the hot loop of the data-quality engine)
    lo = max(0, k + 1 - n_above)
    hi = min(k + 1, split)
    while True:
        take = (lo + hi) // 2  # from the lower run; k + 1 - take from the upper
        rest = k + 1 - take
        if take > 0 and rest < n_above and abs(values[split - take] - center) > abs(values[split + rest] - center):
            hi = take - 1
        elif (
            rest > 0
            and take < split
            and abs(values[split + rest - 1] - center) > abs(values[split - 1 - take] - center)
        ):
            lo = take + 1
        else:
            break
    top_below = abs(values[split - take] - center) if take > 0 else -1.0
    top_above = abs(values[split + rest - 1] - center) if rest > 0 else -1.0
    if top_below >= top_above:
        next_below = abs(values[split - take + 1] - center) if take > 1 else -1.0
        return (next_below if next_below > top_above else top_above), top_below
    next_above = abs(values[split + rest - 2] - center) if rest > 1 else -1.0
    return (next_above if next_above > top_below else top_below), top_above


def _median_of_sorted(values: list[float]) -> float:
    """``statistics.median`` of an already sorted list, without its copy and re-sort (same arithmetic,
    so the same float)."""
    n = len(values)
    if n == 0:
        raise ValueError("median of no values")
    i = n // 2
    return values[i] if n % 2 else (values[i - 1] + values[i]) / 2


@dataclass(slots=True)
class _Stream:
    venue: str
    symbol: str
    timeframe: Timeframe
    last: Bar | None = None
    history: dict[int, _Seen] = field(default_factory=dict)
    returns: _RollingRobust = field(default_factory=lambda: _RollingRobust(1))
    volumes: deque[float] = field(default_factory=deque)
    stale_ref: int | None = None
    zero_run: int = 0
    blocked: bool = False
    reasons: list[str] = field(default_factory=list)
    clean_streak: int = 0


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------


class DataQualityEngine:
    """Runs every check on every bar and keeps each stream's block state."""

    def __init__(
        self,
        clock: Clock,
        config: QualityConfig | None = None,
        policy: QualityPolicy | None = None,
    ) -> None:
        self._clock = clock
        self.config = config or QualityConfig()
        self.policy = policy or QualityPolicy()
        self._streams: dict[_StreamKey, _Stream] = {}

    # -- public API -----------------------------------------------------------

    def on_bar(self, bar: Bar) -> list[DataQualityEvent]:
        """Check one bar; return its findings (and a release, if it completes one)."""
        stream = self._stream(bar)
        seen = stream.history.get(bar.open_time)
        last = stream.last
        if seen is not None:
            findings = self._check_repeat(stream, bar, seen)
            return self._conclude(stream, bar, findings, new_bar=False)
        if last is not None and bar.open_time < last.open_time:
            findings = self._check_out_of_order(stream, bar)
            return self._conclude(stream, bar, findings, new_bar=False)

        findings = []
        if last is not None:
            findings.extend(self._check_gap(stream, last, bar))
        stream.zero_run = stream.zero_run + 1 if bar.volume == 0 else 0
        findings.extend(self._check_bar(bar, zero_run=stream.zero_run))
        findings.extend(self._check_continuity(stream, last, bar))
        self._remember(stream, bar)
        stream.last = bar
        stream.volumes.append(bar.volume)
        stream.stale_ref = None
        return self._conclude(stream, bar, findings, new_bar=True)

    def on_bars(self, bars: Iterable[Bar]) -> list[DataQualityEvent]:
        """:meth:`on_bar` over many bars (a file, a replay batch)."""
        out: list[DataQualityEvent] = []
        for bar in bars:
            out.extend(self.on_bar(bar))
        return out

    def check_staleness(self, now_ns: int) -> list[DataQualityEvent]:
        """Report streams with no new bar for more than ``stale_after_bars`` timeframes.

        Reported once per silence (the next bar ends it); blocks by default.
        """
        out: list[DataQualityEvent] = []
        for stream in self._streams.values():
            last = stream.last
            if last is None:
                continue
            tf_ns = stream.timeframe.nanos
            expected = last.open_time + tf_ns  # open time of the first bar that has not come
            silent_bars = (now_ns - last.ts_event) / tf_ns
            if silent_bars <= self.config.stale_after_bars or stream.stale_ref == expected:
                continue
            stream.stale_ref = expected
            finding = _Finding(
                Check.STALE_FEED,
                Severity.ERROR,
                expected,
                silent_bars,
                f"no {stream.timeframe.value} bar since the one closing {_iso(last.ts_event)}: "
                f"{silent_bars:.1f} timeframes of silence at {_iso(now_ns)} "
                f"(limit {self.config.stale_after_bars})",
            )
            out.append(self._record(stream, finding, ts_event=now_ns, cause=last))
        return out

    def finish(self, last_known_ns: int | None = None) -> list[DataQualityEvent]:
        """End of a finite input: flag each stream's newest bar if it is partial.

        ``last_known_ns`` is when the input was taken (an export's time, the
        stream's last event time). A bar closing after it cannot be complete. When
        it is unknown (a file with no export time), a bar whose volume is far below
        its neighbours' is reported as a suspected partial.
        """
        out: list[DataQualityEvent] = []
        for stream in self._streams.values():
            bar = stream.last
            if bar is None or not bar.is_closed:
                continue  # a bar not closed was already reported partial by on_bar
            reasons: list[str] = []
            value: float | None = None
            if last_known_ns is not None and bar.ts_event > last_known_ns:
                elapsed = (last_known_ns - bar.open_time) / stream.timeframe.nanos
                value = max(0.0, elapsed)
                reasons.append(
                    f"closes at {_iso(bar.ts_event)}, after the input's last known time {_iso(last_known_ns)}"
                )
            previous = list(stream.volumes)[:-1]
            if len(previous) >= max(1, self.config.partial_volume_window // 2):
                typical = median(previous)
                if typical > 0 and bar.volume < self.config.partial_volume_ratio * typical:
                    ratio = bar.volume / typical
                    value = ratio if value is None else value
                    reasons.append(
                        f"volume {bar.volume:g} is {ratio:.2f} of the median {typical:g} of the previous "
                        f"{len(previous)} bars (limit {self.config.partial_volume_ratio})"
                    )
            if reasons:
                finding = _Finding(
                    Check.PARTIAL,
                    Severity.WARNING,
                    bar.open_time,
                    value,
                    "last bar looks partial: " + "; ".join(reasons),
                )
                out.append(self._record(stream, finding, ts_event=bar.ts_event, cause=bar))
        return out

    def is_blocked(self, symbol: str, timeframe: Timeframe, venue: str | None = None) -> tuple[bool, tuple[str, ...]]:
        """Whether trading on this data is blocked, and the findings that blocked it.

        With ``venue=None`` any venue's stream of the symbol counts.
        """
        blocked = False
        reasons: list[str] = []
        for (v, s, tf), stream in self._streams.items():
            if s == symbol and tf == timeframe and (venue is None or v == venue) and stream.blocked:
                blocked = True
                reasons.extend(stream.reasons)
        return blocked, tuple(reasons)

    # -- per-bar checks ---------------------------------------------------------

    def _check_bar(self, bar: Bar, *, zero_run: int = 1) -> list[_Finding]:
        """Checks that need only the bar itself (so they also run on revisions).

        ``zero_run`` is the length of the zero-volume run this bar ends (for new bars).
        """
        out: list[_Finding] = []
        o, h, lo, c = bar.open, bar.high, bar.low, bar.close
        if h < max(o, c, lo) or lo > min(o, c):
            out.append(
                _Finding(
                    Check.OHLC_INCONSISTENT,
                    Severity.ERROR,
                    bar.open_time,
                    None,
                    f"open {o:g} high {h:g} low {lo:g} close {c:g}: high must be >= open, close, low "
                    "and low <= open, close",
                )
            )
        bar_range = h / lo - 1.0
        if bar_range > self.config.max_bar_range:
            out.append(
                _Finding(
                    Check.SPIKE_RANGE,
                    Severity.ERROR,
                    bar.open_time,
                    bar_range,
                    f"high {h:g} / low {lo:g} = {bar_range:.1%} range within one bar "
                    f"(limit {self.config.max_bar_range:.0%}); open {o:g} close {c:g}",
                )
            )
        if bar.volume == 0:
            halted = zero_run >= self.config.zero_volume_error_bars
            out.append(
                _Finding(
                    Check.ZERO_VOLUME,
                    Severity.ERROR if halted else Severity.WARNING,
                    bar.open_time,
                    float(zero_run),
                    f"no volume traded; {zero_run} empty bar(s) in a row"
                    + (f" (limit {self.config.zero_volume_error_bars}: market looks halted)" if halted else ""),
                )
            )
        if not bar.is_closed:
            out.append(
                _Finding(Check.PARTIAL, Severity.WARNING, bar.open_time, None, "bar is not closed (is_closed=False)")
            )
        return out

    def _check_gap(self, stream: _Stream, last: Bar, bar: Bar) -> list[_Finding]:
        tf_ns = stream.timeframe.nanos
        missing = (bar.open_time - last.open_time) // tf_ns - 1
        if missing <= 0:
            return []
        first_missing = last.open_time + tf_ns
        last_missing = bar.open_time - tf_ns
        severity = Severity.ERROR if missing >= self.config.gap_error_bars else Severity.WARNING
        return [
            _Finding(
                Check.GAP,
                severity,
                first_missing,
                float(missing),
                f"{missing} missing {stream.timeframe.value} bars: {_iso(first_missing)} .. {_iso(last_missing)} "
                f"(between {_iso(last.open_time)} and {_iso(bar.open_time)})",
            )
        ]

    def _check_continuity(self, stream: _Stream, last: Bar | None, bar: Bar) -> list[_Finding]:
        """Open-vs-previous-close jump and the robust return test; adjacent bars only."""
        if last is None or bar.open_time != last.open_time + stream.timeframe.nanos:
            return []  # across a gap the price may legitimately have moved
        cfg = self.config
        out: list[_Finding] = []
        jump = bar.open / last.close - 1.0
        if abs(jump) > cfg.max_open_jump:
            out.append(
                _Finding(
                    Check.SPIKE_OPEN_JUMP,
                    Severity.WARNING,
                    bar.open_time,
                    jump,
                    f"open {bar.open:g} is {jump:+.2%} from the previous close {last.close:g} "
                    f"(limit {cfg.max_open_jump:.0%})",
                )
            )
        ret = math.log(bar.close / last.close)
        window = stream.returns
        if len(window) >= cfg.spike_warmup:
            center = window.median()
            distance = abs(ret - center)
            floor = 1.4826 * cfg.spike_min_scale
            if distance > cfg.spike_mad_z * floor:  # cheap pre-test: MAD only for candidates
                scale = 1.4826 * max(window.mad(center), cfg.spike_min_scale)
                z = distance / scale
                if z > cfg.spike_mad_z:
                    out.append(
                        _Finding(
                            Check.SPIKE_RETURN,
                            Severity.WARNING,
                            bar.open_time,
                            z,
                            f"close-to-close log return {ret:+.4f} is {z:.1f} robust z from the median "
                            f"{center:+.5f} of the previous {len(window)} returns (limit {cfg.spike_mad_z:g})",
                        )
                    )
        window.push(ret)
        return out

    # -- repeats and disorder ----------------------------------------------------

    def _check_repeat(self, stream: _Stream, bar: Bar, seen: _Seen) -> list[_Finding]:
        values = _values(bar)
        if values == seen.values:
            return [
                _Finding(
                    Check.DUPLICATE,
                    Severity.INFO,
                    bar.open_time,
                    float(bar.revision),
                    f"bar {_iso(bar.open_time)} received again with identical values (revision {bar.revision})",
                )
            ]
        if bar.revision < seen.revision:
            return [
                _Finding(
                    Check.STALE_REVISION,
                    Severity.INFO,
                    bar.open_time,
                    float(bar.revision),
                    f"revision {bar.revision} arrived after revision {seen.revision}; readers keep the highest",
                )
            ]
        if bar.revision == seen.revision:
            return [
                _Finding(
                    Check.CONFLICTING_REVISION,
                    Severity.ERROR,
                    bar.open_time,
                    float(bar.revision),
                    f"revision {bar.revision} of {_iso(bar.open_time)} seen with different values: "
                    f"{_describe(seen.values)} then {_describe(values)}",
                )
            ]
        findings = [
            _Finding(
                Check.REVISED,
                Severity.INFO,
                bar.open_time,
                float(bar.revision),
                f"revision {seen.revision} -> {bar.revision}: {_describe(seen.values)} -> {_describe(values)}",
            )
        ]
        findings.extend(self._check_bar(bar))
        stream.history[bar.open_time] = _Seen(bar.revision, values)
        if stream.last is not None and stream.last.open_time == bar.open_time:
            stream.last = bar
            if stream.volumes:
                stream.volumes[-1] = bar.volume
        return findings

    def _check_out_of_order(self, stream: _Stream, bar: Bar) -> list[_Finding]:
        assert stream.last is not None  # only called when a newer bar exists
        horizon = stream.last.open_time - self.config.history_bars * stream.timeframe.nanos
        if bar.open_time <= horizon:
            return [
                _Finding(
                    Check.OUT_OF_ORDER,
                    Severity.WARNING,
                    bar.open_time,
                    None,
                    f"bar {_iso(bar.open_time)} arrived after {_iso(stream.last.open_time)} and is older than the "
                    f"{self.config.history_bars} bars remembered: cannot tell a duplicate from a fill",
                )
            ]
        findings = [
            _Finding(
                Check.OUT_OF_ORDER,
                Severity.INFO,
                bar.open_time,
                None,
                f"bar {_iso(bar.open_time)} arrived after {_iso(stream.last.open_time)}: fills an earlier gap",
            )
        ]
        findings.extend(self._check_bar(bar))
        stream.history[bar.open_time] = _Seen(bar.revision, _values(bar))
        return findings

    # -- state and output ---------------------------------------------------------

    def _stream(self, bar: Bar) -> _Stream:
        key = (bar.venue, bar.symbol, bar.timeframe)
        stream = self._streams.get(key)
        if stream is None:
            stream = _Stream(
                venue=bar.venue,
                symbol=bar.symbol,
                timeframe=bar.timeframe,
                returns=_RollingRobust(self.config.spike_window),
                volumes=deque(maxlen=self.config.partial_volume_window + 1),
            )
            self._streams[key] = stream
        return stream

    def _remember(self, stream: _Stream, bar: Bar) -> None:
        history = stream.history
        history[bar.open_time] = _make_seen(revision=bar.revision, values=_values(bar))
        if len(history) > 2 * self.config.history_bars:  # amortised pruning
            horizon = bar.open_time - self.config.history_bars * stream.timeframe.nanos
            stream.history = {t: s for t, s in history.items() if t > horizon}

    def _conclude(
        self, stream: _Stream, bar: Bar, findings: list[_Finding], *, new_bar: bool
    ) -> list[DataQualityEvent]:
        """Turn findings into records and move the block state (one bar's worth)."""
        out: list[DataQualityEvent] = []
        blocked_now = False
        for finding in findings:
            event = self._record(stream, finding, ts_event=bar.ts_event, cause=bar)
            blocked_now = blocked_now or event.blocking
            out.append(event)
        if blocked_now or not new_bar or not stream.blocked:
            return out
        stream.clean_streak += 1
        if stream.clean_streak >= self.policy.release_after_clean_bars:
            detail = f"released after {stream.clean_streak} clean bars; was blocked by: " + " | ".join(stream.reasons)
            stream.blocked = False
            stream.reasons = []
            stream.clean_streak = 0
            released = _Finding(
                Check.RELEASED, Severity.INFO, bar.open_time, float(self.policy.release_after_clean_bars), detail
            )
            out.append(self._record(stream, released, ts_event=bar.ts_event, cause=bar))
        return out

    def _record(self, stream: _Stream, finding: _Finding, *, ts_event: int, cause: Bar) -> DataQualityEvent:
        blocking = self.policy.blocks(finding.check.value, finding.severity)
        if blocking:
            stream.blocked = True
            stream.clean_streak = 0
            stream.reasons.append(f"{finding.check.value}@{_iso(finding.ref_time)}: {finding.detail}")
        event = DataQualityEvent.new(
            ts_init=self._clock.now_ns(),
            ts_event=ts_event,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            venue=stream.venue,
            symbol=stream.symbol,
            timeframe=stream.timeframe,
            check=finding.check.value,
            severity=finding.severity,
            ref_time=finding.ref_time,
            value=finding.value,
            detail=finding.detail,
            blocking=blocking,
        )
        return event


# ---------------------------------------------------------------------------
# A finite input at once (research on a file)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BarsAudit:
    """What the pipeline's checks and policy make of a finite list of bars.

    ``withheld`` counts the bars the pipeline would not trade on: those after which
    their stream is blocked (the features agent withholds their features).
    """

    bars: int
    withheld: int
    findings: dict[str, int]
    blocking: tuple[DataQualityEvent, ...]

    def summary(self, *, examples: int = 5) -> dict[str, object]:
        return {
            "bars": self.bars,
            "bars_withheld_by_policy": self.withheld,
            "findings": dict(sorted(self.findings.items())),
            "blocking_findings": len(self.blocking),
            "first_blocking": [f"{e.check}: {e.detail}" for e in self.blocking[:examples]],
        }


def audit_bars(
    bars: Iterable[Bar], config: QualityConfig | None = None, policy: QualityPolicy | None = None
) -> BarsAudit:
    """Run :class:`DataQualityEngine` over ``bars`` in order, event time as the clock, then ``finish``."""
    now = 0

    def clock() -> int:
        return now

    engine = DataQualityEngine(FunctionClock(clock), config, policy)
    counts: Counter[str] = Counter()
    blocking: list[DataQualityEvent] = []
    n = withheld = 0
    for bar in bars:
        now = bar.ts_event
        n += 1
        events = engine.on_bar(bar)
        if engine.is_blocked(bar.symbol, bar.timeframe, bar.venue)[0]:
            withheld += 1
        for e in events:
            counts[e.check] += 1
            if e.blocking:
                blocking.append(e)
    for e in engine.finish():
        counts[e.check] += 1
        if e.blocking:
            blocking.append(e)
    return BarsAudit(bars=n, withheld=withheld, findings=dict(counts), blocking=tuple(blocking))


def _values(bar: Bar) -> tuple[float, float, float, float, float, bool]:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.is_closed)


def _describe(values: tuple[float, float, float, float, float, bool]) -> str:
    o, h, lo, c, v, closed = values
    return f"O {o:g} H {h:g} L {lo:g} C {c:g} V {v:g}{'' if closed else ' (partial)'}"


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
