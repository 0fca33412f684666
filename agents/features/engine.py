"""Incremental feature engine: one closed bar in, one feature vector out.

Pure and deterministic: no I/O, no clock (``ts_init`` comes from the caller),
no randomness. State is per (venue, symbol, timeframe) stream, in a
:class:`SymbolState` that round-trips through a dict of plain JSON types so an
agent can keep it in a faust table. Each bar costs O(1) amortized work.

Invariants: every feature is a function of the last ``spec.window`` bars (73) and nothing
older; exponential averages are seeded inside that window, so batch, live, replayed and
restored computations agree. The first ``window - 1`` bars give no vector. Window sums are
fresh sums (two-stack sliding window), never add/subtract running sums, so a flat window has
exactly zero variance. A stream accepts only bars after its last open time (a redelivered
latest bar returns the same vector again); anything else raises :class:`BarRejected` with
what to do (``duplicate``: skip; ``revised`` / ``out_of_order``: reset and replay).

Design: docs/market_data.md#feature-engine (every formula, numerics, records)
"""

from __future__ import annotations

import enum
import math
from itertools import accumulate, repeat
from operator import mul, sub
from typing import Any

from agents.features.spec import DEFAULT_SPEC, FeatureSpec, format_lineage_id, lineage_element
from runtime.errors import BadInput
from topics.records import Bar, FeatureVector, Timeframe
from topics.schema import event_id_for, keyword_constructor
from topics.units import NS_PER_DAY

__all__ = [
    "PRICE_RANGE",
    "STATE_FORMAT",
    "VOLUME_MAX",
    "BarRejected",
    "FeatureEngine",
    "RejectReason",
    "SymbolState",
]

#: Accepted price range (quote currency) for high, low and close. Wide enough
#: for any listed market, narrow enough that squares and ratios of prices
#: cannot overflow, so every feature is finite.
PRICE_RANGE = (1e-12, 1e15)
#: Accepted volume upper bound (base currency).
VOLUME_MAX = 1e18
#: Version of the :meth:`SymbolState.to_state` layout.
STATE_FORMAT = 1

_PRICE_MIN, _PRICE_MAX = PRICE_RANGE
_TAU = 2.0 * math.pi
_DIGEST_MASK = (1 << 128) - 1
#: Bound on the time-of-day (sin, cos) cache: one entry per distinct open
#: time of day, i.e. 24 for hourly bars, 1440 for minute bars.
_DAY_CACHE_MAX = 4096
#: (sin, cos) of each weekday's angle, Monday = 0.
_WEEKDAY_TRIG = tuple((math.sin(_TAU * d / 7.0), math.cos(_TAU * d / 7.0)) for d in range(7))


# ---------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------


class RejectReason(enum.StrEnum):
    """Why a bar was not applied. Stable: used as a metric label."""

    DUPLICATE = "duplicate"
    REVISED = "revised"
    OUT_OF_ORDER = "out_of_order"
    NOT_CLOSED = "not_closed"
    OUT_OF_RANGE = "out_of_range"


class BarRejected(BadInput):
    """A bar the stream cannot apply; the state is unchanged.

    ``needs_recompute`` tells the agent what to do: True means the vectors
    already published for this stream no longer match the bar history (reset
    the stream and replay it), False means skip (duplicate, in-progress bar)
    or dead-letter (out of range).
    """

    def __init__(self, reason: RejectReason, bar: Bar, detail: str) -> None:
        super().__init__(f"{reason.value}: {bar.symbol} {bar.timeframe.value} open_time={bar.open_time}: {detail}")
        self.reason = reason
        self.bar = bar
        self.detail = detail

    @property
    def needs_recompute(self) -> bool:
        return self.reason in (RejectReason.REVISED, RejectReason.OUT_OF_ORDER)


# ---------------------------------------------------------------------------
# Sliding-window aggregates
#
# Two-stack scheme: time is cut into blocks as long as the window; the window
# ending at bar t is a suffix of the previous block plus the current block so
# far. ``restart`` runs when a block starts (``j = t % n == 0``): it sums the
# previous block once, newest value first, with C-level itertools over the
# ring (the amortized O(1) part), so ``acc[i]`` is the sum of that block's
# newest ``i`` values and ``acc[-2 - j]`` the part still inside the window at
# position ``j`` (``acc[0] = 0``: at the block's last bar the window is the
# block itself). The current block is a running sum, updated inline in
# ``_step`` for speed.
# ---------------------------------------------------------------------------


class _Moments:
    """Mean and variance of the last ``n`` values of ``ring``.

    Sums are of ``x - shift`` and its square, the shift being the first value
    of the current block: it is always inside the window, so a flat window
    sums exact zeros and cancellation is bounded by ``n``.
    """

    __slots__ = ("acc1", "acc2", "back1", "back2", "n", "ring", "shift")

    def __init__(self, n: int, ring: list[float]) -> None:
        self.n = n
        self.ring = ring
        self.shift = 0.0
        self.back1 = 0.0
        self.back2 = 0.0
        self.acc1 = [0.0] * (n + 1)
        self.acc2 = [0.0] * (n + 1)

    def restart(self) -> None:
        """Start a block at the ring's last value."""
        n = self.n
        ring = self.ring
        x = ring[-1]
        devs = list(map(sub, ring[-2 : -n - 2 : -1], repeat(x, n)))
        self.acc1 = [0.0, *accumulate(devs)]
        self.acc2 = [0.0, *accumulate(map(mul, devs, devs))]
        self.shift = x
        self.back1 = 0.0
        self.back2 = 0.0

    def dump(self) -> list[Any]:
        return [self.shift, self.back1, self.back2, self.acc1, self.acc2]

    def load(self, data: Any) -> None:
        self.shift, self.back1, self.back2, self.acc1, self.acc2 = _load_floats(data, 3, (self.n + 1, self.n + 1))


class _Max:
    """Maximum of the last ``n`` values of ``ring``, a positive series."""

    __slots__ = ("acc", "back", "n", "ring")

    def __init__(self, n: int, ring: list[float]) -> None:
        self.n = n
        self.ring = ring
        self.back = 0.0
        self.acc = [0.0] * (n + 1)

    def restart(self) -> None:
        ring = self.ring
        # 0 is the identity of max over a positive series.
        self.acc = [0.0, *accumulate(ring[-2 : -self.n - 2 : -1], max)]
        self.back = ring[-1]

    def dump(self) -> list[Any]:
        return [self.back, self.acc]

    def load(self, data: Any) -> None:
        self.back, self.acc = _load_floats(data, 1, (self.n + 1,))


class _SeededAverage:
    """A seeded exponential average of ``ring`` run over its last ``inputs`` values.

    Equal to the textbook recursion over the window: start at the mean of the
    window's first ``period`` inputs, then ``avg = decay * avg + alpha * x``
    for each of the remaining ``span = inputs - period`` inputs. Unrolled,
    ``decay^span / period * sum(seed inputs) + alpha * sum(decay^(t-i) * x_i)``
    over the span: the seed is a sliding sum of the series lagged by ``span``
    (blocks of ``period``), the rest a sliding exponentially weighted sum
    (blocks of ``span``), both two-stack aggregates.
    """

    __slots__ = (
        "alpha",
        "decay",
        "exp_acc",
        "exp_back",
        "exp_weights",
        "lag",
        "period",
        "powers",
        "ring",
        "seed_acc",
        "seed_back",
        "seed_weight",
        "span",
    )

    def __init__(self, period: int, alpha: float, inputs: int, ring: list[float]) -> None:
        self.period = period
        self.alpha = alpha
        self.decay = decay = 1.0 - alpha
        self.span = span = inputs - period
        #: Ring offset of the value entering the seed (the series lagged by span).
        self.lag = -1 - span
        self.ring = ring
        self.seed_weight = decay**span / period
        #: decay^k: weight of the k-th newest value of a block when the block closes.
        self.exp_weights = [decay**k for k in range(span)]
        #: decay^(j + 1): ages the previous block's sum by the j + 1 values since it closed.
        self.powers = [decay ** (j + 1) for j in range(span)]
        self.seed_back = 0.0
        self.seed_acc = [0.0] * (period + 1)
        self.exp_back = 0.0
        self.exp_acc = [0.0] * (span + 1)

    def restart_seed(self) -> None:
        ring = self.ring
        lag = self.lag
        self.seed_acc = [0.0, *accumulate(ring[lag - 1 : lag - 1 - self.period : -1])]
        self.seed_back = ring[lag]

    def restart_exp(self) -> None:
        """Previous block newest first, value k (0-based) weighted decay^k."""
        ring = self.ring
        self.exp_acc = [0.0, *accumulate(map(mul, ring[-2 : -self.span - 2 : -1], self.exp_weights))]
        self.exp_back = ring[-1]

    def dump(self) -> list[Any]:
        return [self.seed_back, self.exp_back, self.seed_acc, self.exp_acc]

    def load(self, data: Any) -> None:
        loaded = _load_floats(data, 2, (self.period + 1, self.span + 1))
        self.seed_back, self.exp_back, self.seed_acc, self.exp_acc = loaded


def _load_floats(data: Any, n_scalars: int, list_lens: tuple[int, ...]) -> list[Any]:
    """Check a dumped aggregate (``n_scalars`` floats, then float lists of ``list_lens``)."""
    if not isinstance(data, list) or len(data) != n_scalars + len(list_lens):
        raise ValueError("malformed aggregate state")
    out: list[Any] = [float(v) for v in data[:n_scalars]]
    for arr, n in zip(data[n_scalars:], list_lens, strict=True):
        if not isinstance(arr, list) or len(arr) != n:
            raise ValueError("aggregate state does not match the feature spec")
        out.append([float(v) for v in arr])
    return out


# ---------------------------------------------------------------------------
# Per-stream state
# ---------------------------------------------------------------------------

#: Float rings of a stream, in to_state order. Every ring holds at least the
#: last window + 1 values; it starts as zeros, a padding that the warm-up
#: keeps out of every emitted value.
_FLOAT_RINGS = ("close", "log_close", "ret", "volume", "change", "abs_change", "true_range")


class SymbolState:
    """Everything one (venue, symbol, timeframe) stream remembers.

    Plain data: rings of recent inputs, the sliding aggregates over them, the
    running lineage digest and the last vector's values (returned again when
    the latest bar is redelivered). :meth:`to_state` / :meth:`from_state`
    convert to and from JSON types exactly (a float round-trips through its
    repr).
    """

    __slots__ = (
        "abs_change",
        "averages",
        "change",
        "close",
        "close_max",
        "count",
        "digest",
        "event_ids",
        "last_open_time",
        "last_values",
        "log_close",
        "open_times",
        "ret",
        "spec",
        "symbol",
        "timeframe",
        "true_range",
        "venue",
        "vol_moments",
        "volume",
        "window",
        "z_moments",
    )

    def __init__(self, venue: str, symbol: str, timeframe: Timeframe, spec: FeatureSpec = DEFAULT_SPEC) -> None:
        self.window = w = spec.window
        self.spec = spec
        self.venue = venue
        self.symbol = symbol
        self.timeframe = timeframe
        #: Bars applied so far; also the index of the next bar.
        self.count = 0
        self.last_open_time = 0
        #: Lineage digest of the last ``window`` bars (see agents.features.spec).
        self.digest = 0
        self.last_values: tuple[float, ...] | None = None
        pad = w + 1
        self.close = [0.0] * pad
        self.log_close = [0.0] * pad
        self.ret = [0.0] * pad
        self.volume = [0.0] * pad
        self.change = [0.0] * pad
        self.abs_change = [0.0] * pad
        self.true_range = [0.0] * pad
        self.open_times = [0] * pad
        self.event_ids = [0] * pad
        self.vol_moments = [_Moments(n, self.ret) for n in spec.vol_windows]
        #: The close z-score windows, then the volume window (also a z-score).
        self.z_moments = [
            *(_Moments(n, self.close) for n in spec.zscore_windows),
            _Moments(spec.volume_window, self.volume),
        ]
        self.close_max = _Max(spec.drawdown_window, self.close)
        rsi_alpha = 1.0 / spec.rsi_period
        #: RSI net and absolute, ATR, fast and slow EMA. RSI = 100 G / (G + L)
        #: = 50 (1 + avg(change) / avg(|change|)): G - L and G + L are the
        #: Wilder averages of the signed and absolute changes, so two averages
        #: do the work of gains and losses.
        self.averages = [
            _SeededAverage(spec.rsi_period, rsi_alpha, w - 1, self.change),
            _SeededAverage(spec.rsi_period, rsi_alpha, w - 1, self.abs_change),
            _SeededAverage(spec.atr_period, 1.0 / spec.atr_period, w - 1, self.true_range),
            _SeededAverage(spec.macd_fast, 2.0 / (spec.macd_fast + 1), w, self.close),
            _SeededAverage(spec.macd_slow, 2.0 / (spec.macd_slow + 1), w, self.close),
        ]

    def _aggregates(self) -> list[_Moments | _Max | _SeededAverage]:
        return [*self.vol_moments, *self.z_moments, self.close_max, *self.averages]

    def _rings(self) -> list[list[float] | list[int]]:
        return [*(getattr(self, name) for name in _FLOAT_RINGS), self.open_times, self.event_ids]

    def trim(self, keep: int) -> None:
        """Keep the last ``keep`` ring items (in place: aggregates hold the rings)."""
        for ring in self._rings():
            del ring[:-keep]

    def lineage_id(self) -> str:
        """Lineage id of the window ending at the latest bar (see agents.features.spec)."""
        w = self.window
        return format_lineage_id(self.open_times[-w], self.last_open_time, w, self.digest)

    def to_state(self) -> dict[str, Any]:
        """The state as JSON types; 128-bit integers as hex strings (64-bit JSON readers)."""
        keep = self.window + 1
        return {
            "format": STATE_FORMAT,
            "feature_set_version": self.spec.version,
            "venue": self.venue,
            "symbol": self.symbol,
            "timeframe": self.timeframe.value,
            "count": self.count,
            "last_open_time": self.last_open_time,
            "digest": f"{self.digest:x}",
            "last_values": None if self.last_values is None else list(self.last_values),
            "rings": {name: getattr(self, name)[-keep:] for name in _FLOAT_RINGS},
            "open_times": self.open_times[-keep:],
            "event_ids": [f"{e:x}" for e in self.event_ids[-keep:]],
            "aggregates": [a.dump() for a in self._aggregates()],
        }

    @classmethod
    def from_state(cls, data: dict[str, Any], spec: FeatureSpec = DEFAULT_SPEC) -> SymbolState:
        """Rebuild from :meth:`to_state` output.

        ``ValueError`` if ``data`` is malformed or a state of another feature
        set: the agent then drops it and replays the stream's recent bars.
        """
        try:
            return cls._from_state(data, spec)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed feature state: {exc!r}") from exc

    @classmethod
    def _from_state(cls, data: dict[str, Any], spec: FeatureSpec) -> SymbolState:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"state format {data.get('format')!r}, expected {STATE_FORMAT}")
        if data.get("feature_set_version") != spec.version:
            raise ValueError(f"state is for {data.get('feature_set_version')!r}, engine runs {spec.version}")
        st = cls(data["venue"], data["symbol"], Timeframe(data["timeframe"]), spec)
        st.count = int(data["count"])
        st.last_open_time = int(data["last_open_time"])
        st.digest = int(data["digest"], 16)
        values = data["last_values"]
        st.last_values = None if values is None else tuple(float(v) for v in values)
        for name in _FLOAT_RINGS:
            getattr(st, name)[:] = [float(v) for v in data["rings"][name]]
        st.open_times[:] = [int(v) for v in data["open_times"]]
        st.event_ids[:] = [int(v, 16) for v in data["event_ids"]]
        if any(len(ring) != spec.window + 1 for ring in st._rings()):
            raise ValueError(f"rings must hold {spec.window + 1} items")
        aggregates = st._aggregates()
        if not isinstance(data["aggregates"], list) or len(data["aggregates"]) != len(aggregates):
            raise ValueError("aggregate count does not match the feature spec")
        for agg, dumped in zip(aggregates, data["aggregates"], strict=True):
            agg.load(dumped)
        return st


# ---------------------------------------------------------------------------
# The update rule for one bar
# ---------------------------------------------------------------------------


class _Plan:
    """Constants derived once from a spec, so the per-bar code only reads them."""

    __slots__ = (
        "day_trig",
        "mom_ret_index",
        "mom_vol_index",
        "return_offsets",
        "vol_floor",
        "volume_epsilon",
        "window",
    )

    def __init__(self, spec: FeatureSpec) -> None:
        self.window = spec.window
        #: Ring offsets of the closes the returns look back to.
        self.return_offsets = tuple(-1 - h for h in spec.return_horizons)
        #: Positions in the output of the momentum's return and volatility.
        self.mom_ret_index = spec.return_horizons.index(spec.momentum_window)
        self.mom_vol_index = len(spec.return_horizons) + spec.vol_windows.index(spec.momentum_window)
        self.vol_floor = spec.vol_floor
        self.volume_epsilon = spec.volume_epsilon
        #: (sin, cos) of the time of day, per open time of day; bounded by _DAY_CACHE_MAX.
        self.day_trig: dict[int, tuple[float, float]] = {}


def _reject(st: SymbolState, bar: Bar) -> BarRejected:
    """Why ``bar`` failed the fast-path checks in :meth:`FeatureEngine.advance`."""
    ot = bar.open_time
    if ot <= st.last_open_time:
        element = lineage_element(bar.event_id)
        for seen_ot, seen_id in zip(st.open_times, st.event_ids, strict=True):
            if seen_ot == ot:
                if seen_id == element:
                    return BarRejected(RejectReason.DUPLICATE, bar, "already applied")
                return BarRejected(RejectReason.REVISED, bar, "another bar with this open time was applied")
        return BarRejected(RejectReason.OUT_OF_ORDER, bar, f"stream is at open_time={st.last_open_time}")
    if not bar.is_closed:
        return BarRejected(RejectReason.NOT_CLOSED, bar, "features are computed on closed bars only")
    return BarRejected(
        RejectReason.OUT_OF_RANGE, bar, f"high/low/close outside {PRICE_RANGE} or volume outside [0, {VOLUME_MAX}]"
    )


def _step(st: SymbolState, plan: _Plan, bar: Bar, element: int) -> tuple[float, ...] | None:
    """Apply a checked bar to ``st``; the feature values once warm, else None.

    One long function with explicit loops on purpose: locals, bound methods
    and inlined aggregate updates are what make CPython fast here (a method
    call or a comprehension per aggregate costs more than the arithmetic;
    see ops/bench/features.py).
    """
    window = plan.window
    t = st.count
    c = bar.close
    h = bar.high
    lo = bar.low
    v = bar.volume
    ot = bar.open_time
    sqrt = math.sqrt

    # -- inputs into the rings -------------------------------------------
    closes = st.close
    log_closes = st.log_close
    prev_c = closes[-1]
    log_c = math.log(c)
    dc = c - prev_c
    r = log_c - log_closes[-1]
    closes.append(c)
    st.ret.append(r)
    log_closes.append(log_c)
    st.volume.append(v)
    st.change.append(dc)
    st.abs_change.append(dc if dc >= 0.0 else -dc)
    st.true_range.append((h if h > prev_c else prev_c) - (lo if lo < prev_c else prev_c))
    event_ids = st.event_ids
    st.digest = (st.digest + element - event_ids[-window]) & _DIGEST_MASK
    event_ids.append(element)
    st.open_times.append(ot)

    # -- returns -------------------------------------------------------------
    # Computed (cheaply) during warm-up too; only the aggregates must run then.
    out: list[float] = []
    put = out.append
    for k in plan.return_offsets:
        put(log_c - log_closes[k])

    # -- moments: volatility, close z-scores, volume -------------------------
    # (x - shift) - mean_offset is the deviation of the newest value without
    # rounding it through the mean.
    for m in st.vol_moments:
        n = m.n
        j = t % n
        if j:
            d = r - m.shift
            b1 = m.back1 = m.back1 + d
            b2 = m.back2 = m.back2 + d * d
        else:
            m.restart()
            b1 = b2 = 0.0
        mu = (m.acc1[-2 - j] + b1) / n
        var = (m.acc2[-2 - j] + b2) / n - mu * mu
        put(sqrt(var) if var > 0.0 else 0.0)
    for m in st.z_moments:
        n = m.n
        j = t % n
        if j:
            d = m.ring[-1] - m.shift
            b1 = m.back1 = m.back1 + d
            b2 = m.back2 = m.back2 + d * d
        else:
            m.restart()
            d = b1 = b2 = 0.0
        mu = (m.acc1[-2 - j] + b1) / n
        var = (m.acc2[-2 - j] + b2) / n - mu * mu
        put((d - mu) / sqrt(var) if var > 0.0 else 0.0)
    # The volume window is the last z-score: its mean is the newest volume
    # minus the deviation.
    v_mean = v - (d - mu)

    # -- rolling max of closes -------------------------------------------
    mx = st.close_max
    j = t % mx.n
    if not j:
        mx.restart()
    elif c > mx.back:
        mx.back = c
    c_max = mx.acc[-2 - j]
    if mx.back > c_max:
        c_max = mx.back

    # -- seeded exponential averages: RSI net/abs, ATR, EMA fast/slow -----
    averages: list[float] = []
    avg = averages.append
    for a in st.averages:
        j = t % a.period
        if j:
            a.seed_back += a.ring[a.lag]
        else:
            a.restart_seed()
        k = t % a.span
        if k:
            a.exp_back = a.decay * a.exp_back + a.ring[-1]
        else:
            a.restart_exp()
        avg(
            a.seed_weight * (a.seed_acc[-2 - j] + a.seed_back)
            + a.alpha * (a.powers[k] * a.exp_acc[-2 - k] + a.exp_back)
        )

    t += 1
    st.count = t
    st.last_open_time = ot
    if len(closes) > 2 * window:
        st.trim(window + 1)
    if t < window:
        return None

    # -- the remaining features ----------------------------------------------
    net, absolute, atr, ema_fast, ema_slow = averages
    v_z = out.pop()
    mom_vol = out[plan.mom_vol_index]
    floor = plan.vol_floor
    eps = plan.volume_epsilon
    day_trig = plan.day_trig
    tod = ot % NS_PER_DAY
    trig = day_trig.get(tod)
    if trig is None:
        angle = _TAU * tod / NS_PER_DAY
        trig = (math.sin(angle), math.cos(angle))
        if len(day_trig) < _DAY_CACHE_MAX:
            day_trig[tod] = trig
    values = (
        *out,
        50.0 + 50.0 * net / absolute if absolute > 0.0 else 50.0,
        atr / c,
        v_z,
        math.log((v + eps) / (v_mean + eps)),
        (h - lo) / c,
        (c - lo) / (h - lo) if h > lo else 0.5,
        out[plan.mom_ret_index] / (mom_vol if mom_vol > floor else floor),
        *trig,
        *_WEEKDAY_TRIG[(ot // NS_PER_DAY + 3) % 7],  # 1970-01-01 was a Thursday
        c / c_max - 1.0,
        (ema_fast - ema_slow) / c,
    )
    st.last_values = values
    return values


# ---------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------

#: ``FeatureVector(**fields)`` without the frozen ``__init__``'s per-field cost (one per bar).
_make_vector = keyword_constructor(FeatureVector)

_StreamKey = tuple[str, str, Timeframe]


class FeatureEngine:
    """Feature vectors for any number of streams, one closed bar at a time.

    ``data_version`` describes the bar source (e.g. a hash of the importer and
    file, or ``"live:binance"``); it is copied into every vector and into its
    event id, so vectors of different data never dedupe into each other.
    """

    def __init__(self, *, data_version: str, spec: FeatureSpec = DEFAULT_SPEC) -> None:
        self.spec = spec
        self.data_version = data_version
        self.names = spec.names
        self.feature_set_version = spec.version
        self._states: dict[_StreamKey, SymbolState] = {}
        self._plan = _Plan(spec)

    # -- state -------------------------------------------------------------
    def state(self, venue: str, symbol: str, timeframe: Timeframe) -> SymbolState | None:
        """The live state of a stream (not a copy); None if it has seen no bar."""
        return self._states.get((venue, symbol, timeframe))

    def restore(self, state: SymbolState) -> None:
        """Install a stream's state, e.g. from ``SymbolState.from_state`` on recovery."""
        if state.spec != self.spec:
            raise ValueError(f"state is for {state.spec.version}, engine runs {self.feature_set_version}")
        self._states[(state.venue, state.symbol, state.timeframe)] = state

    def reset(self, venue: str, symbol: str, timeframe: Timeframe) -> None:
        """Forget a stream: the next bar starts a new warm-up (the recompute path)."""
        self._states.pop((venue, symbol, timeframe), None)

    # -- updates -------------------------------------------------------------
    def advance(self, bar: Bar) -> tuple[float, ...] | None:
        """Apply ``bar``; its feature values (aligned with ``names``), None in warm-up.

        The engine-only path, no record built (backtests, research, the
        benchmark). Raises :class:`BarRejected`, state unchanged, for a bar
        that cannot be applied; the latest bar redelivered returns its values
        again.
        """
        return self._apply(bar)[1]

    def _apply(self, bar: Bar) -> tuple[SymbolState, tuple[float, ...] | None]:
        """:meth:`advance`, with the stream's state (one lookup serves :meth:`update` too)."""
        key = (bar.venue, bar.symbol, bar.timeframe)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = SymbolState(bar.venue, bar.symbol, bar.timeframe, self.spec)
        if (
            bar.open_time > st.last_open_time
            and bar.is_closed
            and _PRICE_MIN <= bar.close <= _PRICE_MAX
            and _PRICE_MIN <= bar.low <= _PRICE_MAX
            and _PRICE_MIN <= bar.high <= _PRICE_MAX
            and 0.0 <= bar.volume <= VOLUME_MAX
        ):
            try:
                element = int(bar.event_id, 16)
            except ValueError:
                element = lineage_element(bar.event_id)
            return st, _step(st, self._plan, bar, element & _DIGEST_MASK)
        if bar.open_time == st.last_open_time and lineage_element(bar.event_id) == st.event_ids[-1]:
            return st, st.last_values
        raise _reject(st, bar)

    def update(self, bar: Bar, ts_init: int) -> FeatureVector | None:
        """Apply ``bar``; the :class:`FeatureVector` at its close once warm, else None.

        Raises :class:`BarRejected` (state unchanged) for a bar that cannot be
        applied; the latest bar redelivered yields the identical vector again.
        """
        st, values = self._apply(bar)
        if values is None:
            return None
        fsv = self.feature_set_version
        dv = self.data_version
        return _make_vector(
            event_id=event_id_for(FeatureVector.KIND, bar.symbol, bar.timeframe, bar.open_time, fsv, dv),
            schema_version=FeatureVector.SCHEMA_VERSION,
            ts_event=bar.ts_event,
            ts_init=ts_init,
            correlation_id=bar.correlation_id,
            causation_id=bar.event_id,
            venue=bar.venue,
            symbol=bar.symbol,
            timeframe=bar.timeframe,
            bar_open_time=bar.open_time,
            feature_set_version=fsv,
            data_version=dv,
            lineage_id=st.lineage_id(),
            names=self.names,
            values=values,
        )
