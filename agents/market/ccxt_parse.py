"""ccxt's unified JSON -> our records. The only place exchange data becomes a
:class:`~topics.records.Tick` or :class:`~topics.records.Bar`.

Rows are validated with the very codec the consumers use, so a row that would be
dead-lettered downstream is rejected here as an :class:`ExchangeDataError` the caller can
dead-letter. A bar's ``revision`` is how many milliseconds of the bar its values cover: a
closed bar is ``timeframe_ms`` (a re-download has the same ``event_id``), a forming one
``ts_init - open_time`` clamped below it; ``ts_event = open_time + revision``, so an event
clock driven by bars never jumps into the future.

Nothing here does I/O or reads a clock; ``ts_init`` is passed in.

Design: docs/market_data.md#ccxt-parsing
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from topics.records import AggressorSide, Bar, Tick, Timeframe
from topics.schema import ErrorReason, RecordError, codec_for
from topics.units import NS_PER_MS

__all__ = [
    "ExchangeDataError",
    "bar_revision",
    "candle_is_closed",
    "ccxt_ohlcv_to_bar",
    "ccxt_trade_to_tick",
    "timeframe_ms",
]

_RecordT = TypeVar("_RecordT", Tick, Bar)

_AGGRESSOR = {"buy": AggressorSide.BUY, "sell": AggressorSide.SELL, None: AggressorSide.UNKNOWN}


class ExchangeDataError(RecordError):
    """An exchange row that cannot become a valid record. Not retriable.

    A :class:`~topics.schema.RecordError` (same ``reason`` codes), so the one
    dead-letter path handles both; ``raw`` keeps the offending row.
    """

    def __init__(self, reason: ErrorReason, detail: str, raw: object) -> None:
        super().__init__(reason, detail)
        self.raw = raw


def timeframe_ms(timeframe: Timeframe) -> int:
    return timeframe.nanos // NS_PER_MS


def candle_is_closed(open_ms: int, timeframe: Timeframe, newest_open_ms: int, now_ms: int, settle_ms: int) -> bool:
    """Whether a candle is final.

    Closed when the exchange has already opened a later candle (evidence from
    the venue, immune to our clock's skew), or when its close time lies more
    than ``settle_ms`` in the past by our wall clock (the venue may be quiet
    and have opened no later candle yet). The settle margin keeps a slightly
    fast local clock from declaring a still-forming candle closed: a closed
    bar is published once with the final revision, so calling it early would
    freeze wrong values.
    """
    close_ms = open_ms + timeframe_ms(timeframe)
    return close_ms <= newest_open_ms or close_ms + settle_ms <= now_ms


def bar_revision(open_ms: int, timeframe: Timeframe, ts_init: int, is_closed: bool) -> int:
    """Milliseconds of the bar the values cover (see the module docstring)."""
    tf_ms = timeframe_ms(timeframe)
    if is_closed:
        return tf_ms
    return min(max(ts_init // NS_PER_MS - open_ms, 0), tf_ms - 1)


def _number(raw: object, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExchangeDataError(ErrorReason.WRONG_TYPE, f"{field}={value!r} is not a number", raw)
    out = float(value)
    if not math.isfinite(out):
        raise ExchangeDataError(ErrorReason.NOT_FINITE, f"{field}={value!r} is not finite", raw)
    return out


def _millis(raw: object, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExchangeDataError(ErrorReason.WRONG_TYPE, f"{field}={value!r} is not integer milliseconds", raw)
    return value


def _validated(record: _RecordT, raw: object) -> _RecordT:
    """Run the consumers' strict decoder over the record (same rules, same reasons)."""
    codec = codec_for(type(record))
    try:
        codec.from_dict(codec.to_dict(record))
    except RecordError as exc:
        raise ExchangeDataError(exc.reason, exc.detail, raw) from None
    return record


def _synthetic_trade_id(trade: Mapping[str, Any]) -> str:
    """A stable id for venues that publish none (dedupe needs one).

    Two genuinely distinct trades with the same millisecond, price, amount
    and side collapse into one; venues that omit ids are rare and that
    collision is rarer, so we accept it and mark such ids with ``syn:``.
    """
    key = f"{trade.get('timestamp')}|{trade.get('price')}|{trade.get('amount')}|{trade.get('side')}"
    return "syn:" + hashlib.sha256(key.encode()).hexdigest()[:24]


def ccxt_trade_to_tick(trade: Mapping[str, Any], venue: str, ts_init: int, contract_size: float = 1.0) -> Tick:
    """A ccxt unified trade (``fetch_trades`` / ``watch_trades`` item) as a Tick.

    ``ts_event`` is the venue's trade time; the aggressor is ccxt's ``side``
    (the taker's side), ``unknown`` when the venue does not say. ccxt gives
    a contract market's ``amount`` in contracts (OKX BTC-USDT-SWAP: 0.01 BTC
    each); ``contract_size`` (the market's ``contractSize``) turns it into
    the base-currency quantity the Tick carries.
    """
    if not (math.isfinite(contract_size) and contract_size > 0):
        raise ValueError(f"contract_size must be a positive number, got {contract_size!r}")
    if not isinstance(trade, Mapping):
        raise ExchangeDataError(ErrorReason.NOT_AN_OBJECT, f"trade is a {type(trade).__name__}", trade)
    symbol = trade.get("symbol")
    if not isinstance(symbol, str):
        raise ExchangeDataError(ErrorReason.MISSING_FIELD, "trade has no symbol", trade)
    ts_ms = _millis(trade, "timestamp", trade.get("timestamp"))
    price = _number(trade, "price", trade.get("price"))
    amount = _number(trade, "amount", trade.get("amount"))
    side = trade.get("side")
    if side not in _AGGRESSOR:
        raise ExchangeDataError(ErrorReason.UNKNOWN_ENUM, f"side={side!r}", trade)
    raw_id = trade.get("id")
    trade_id = str(raw_id) if raw_id not in (None, "") else _synthetic_trade_id(trade)
    tick = Tick.new(
        ts_init=ts_init,
        ts_event=ts_ms * NS_PER_MS,
        venue=venue,
        symbol=symbol,
        trade_id=trade_id,
        price=price,
        quantity=amount * contract_size,
        aggressor=_AGGRESSOR[side],
    )
    return _validated(tick, trade)


def ccxt_ohlcv_to_bar(
    row: Sequence[Any],
    venue: str,
    symbol: str,
    timeframe: Timeframe,
    ts_init: int,
    is_closed: bool,
    source: str,
) -> Bar:
    """A ccxt OHLCV row ``[open_ms, open, high, low, close, volume]`` as a Bar.

    ccxt's unified row carries no trade count, so ``trade_count`` is null
    (not reported), never a made-up 0.
    """
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) < 6:
        raise ExchangeDataError(ErrorReason.WRONG_TYPE, "OHLCV row is not [ts, o, h, l, c, v]", row)
    open_ms = _millis(row, "timestamp", row[0])
    o, h, low, c = (_number(row, name, row[i]) for i, name in enumerate(("open", "high", "low", "close"), start=1))
    if row[5] is None:
        raise ExchangeDataError(ErrorReason.MISSING_FIELD, "volume is null", row)
    volume = _number(row, "volume", row[5])
    if not (low <= min(o, c) and max(o, c) <= h):
        raise ExchangeDataError(ErrorReason.INVALID_VALUE, f"inconsistent OHLC o={o} h={h} l={low} c={c}", row)
    revision = bar_revision(open_ms, timeframe, ts_init, is_closed)
    bar = Bar.new(
        ts_init=ts_init,
        ts_event=(open_ms + revision) * NS_PER_MS,
        venue=venue,
        symbol=symbol,
        timeframe=timeframe,
        open_time=open_ms * NS_PER_MS,
        open=o,
        high=h,
        low=low,
        close=c,
        volume=volume,
        trade_count=None,
        is_closed=is_closed,
        revision=revision,
        source=source,
    )
    return _validated(bar, row)
