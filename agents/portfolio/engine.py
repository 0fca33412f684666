"""Portfolio engine: fills and marks in, positions, PnL, equity and drawdown out.

Pure and deterministic: ``state + event -> state``; no clock is read (event
time comes from the records), no I/O. The snapshot it returns,
:class:`PortfolioState`, is what the strategy and the risk engine size and
gate against.

Invariants: one quote currency, cash-based, long and short alike;
``equity = initial_cash + realized - fees + sum(q * (mark - avg))`` always holds. Marks are
bar closes (a late, older mark is ignored). Drawdown is from the peak equity since the start;
UTC days reset the day's start and peak equity; a round trip's PnL (realized minus both legs'
fees) drives ``consecutive_losses``. Duplicate fills (same ``event_id``, bounded window)
change nothing.

Design: docs/trading_engines.md#portfolio-engine
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agents.confighash import stable_config_hash
from runtime.seen import SeenIds
from topics.records import Bar, Fill, Side
from topics.schema import keyword_constructor
from topics.units import NS_PER_DAY

__all__ = ["PortfolioConfig", "PortfolioEngine", "PortfolioState", "Position"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioConfig:
    version: str = "portfolio-v1"
    #: Starting cash in the quote currency (USDT).
    initial_cash: float = 100_000.0
    quote_currency: str = "USDT"
    #: How many fill ids are remembered to drop redeliveries.
    max_seen_fills: int = 200_000
    #: |quantity| at or below this after a fill is flat (float residue of partial closes).
    qty_epsilon: float = 1e-12

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_cash) and self.initial_cash > 0):
            raise ValueError("initial_cash must be positive")
        if self.max_seen_fills < 1 or not self.qty_epsilon >= 0:
            raise ValueError("max_seen_fills must be >= 1 and qty_epsilon >= 0")

    def config_hash(self) -> str:
        """:func:`stable_config_hash` of this config, computed once per object.

        Every portfolio snapshot carries it, so it was re-derived per bar (~12 % of a replay). The
        config is frozen, so the hash of one object never changes; the memo is keyed by identity (and
        holds the object, so an id is never reused while cached), not by equality: ``1`` and ``1.0``
        compare equal but hash differently.
        """
        hit = _CONFIG_HASHES.get(id(self))
        if hit is not None and hit[0] is self:
            return hit[1]
        digest = stable_config_hash(self)
        if len(_CONFIG_HASHES) >= _CONFIG_HASHES_MAX:  # bounded: a long test session builds many configs
            _CONFIG_HASHES.clear()
        _CONFIG_HASHES[id(self)] = (self, digest)
        return digest


#: id(config) -> (config, its hash); see :meth:`PortfolioConfig.config_hash`.
_CONFIG_HASHES: dict[int, tuple[PortfolioConfig, str]] = {}
_CONFIG_HASHES_MAX = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    """One symbol's position. ``quantity`` is signed (short < 0)."""

    symbol: str
    quantity: float
    #: Average entry price of the open quantity; 0.0 when flat.
    avg_price: float
    mark_price: float
    mark_ts_ns: int
    realized_pnl: float
    fees: float
    #: Event time the current round trip opened; None when flat.
    opened_at_ns: int | None

    @property
    def unrealized_pnl(self) -> float:
        return self.quantity * (self.mark_price - self.avg_price) if self.quantity else 0.0

    @property
    def market_value(self) -> float:
        return self.quantity * self.mark_price

    @property
    def notional(self) -> float:
        return abs(self.quantity) * self.mark_price


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioState:
    """Snapshot consumed by strategy and risk. Amounts in the quote currency."""

    as_of_ns: int
    cash: float
    equity: float
    peak_equity: float
    drawdown: float
    day_start_ns: int
    day_start_equity: float
    day_peak_equity: float
    intraday_drawdown: float
    daily_pnl: float
    daily_return: float
    realized_pnl: float
    unrealized_pnl: float
    fees_paid: float
    consecutive_losses: int
    closed_trades: int
    losing_trades: int
    fills_applied: int
    foreign_fee_fills: int
    positions: Mapping[str, Position]

    def position(self, symbol: str) -> Position | None:
        return self.positions.get(symbol)

    def quantity(self, symbol: str) -> float:
        pos = self.positions.get(symbol)
        return pos.quantity if pos is not None else 0.0

    @classmethod
    def initial(cls, initial_cash: float, as_of_ns: int = 0) -> PortfolioState:
        """A flat book (what strategy and risk assume before any state arrives)."""
        return cls(
            as_of_ns=as_of_ns,
            cash=initial_cash,
            equity=initial_cash,
            peak_equity=initial_cash,
            drawdown=0.0,
            day_start_ns=as_of_ns - as_of_ns % NS_PER_DAY,
            day_start_equity=initial_cash,
            day_peak_equity=initial_cash,
            intraday_drawdown=0.0,
            daily_pnl=0.0,
            daily_return=0.0,
            realized_pnl=0.0,
            unrealized_pnl=0.0,
            fees_paid=0.0,
            consecutive_losses=0,
            closed_trades=0,
            losing_trades=0,
            fills_applied=0,
            foreign_fee_fills=0,
            positions=MappingProxyType({}),
        )


class _Book:
    """Mutable per-symbol book entry (internal)."""

    __slots__ = ("avg", "fees", "mark", "mark_ts", "opened_at", "qty", "realized", "trip_pnl")

    def __init__(self) -> None:
        self.qty = 0.0
        self.avg = 0.0
        self.mark = 0.0
        self.mark_ts = -1
        self.realized = 0.0
        self.fees = 0.0
        self.trip_pnl = 0.0
        self.opened_at: int | None = None


def _split_currencies(symbol: str) -> tuple[str, str]:
    base, _, rest = symbol.partition("/")
    quote = rest.split(":", 1)[0]
    return base, quote


class PortfolioEngine:
    """Positions and risk state of one account (one quote currency)."""

    def __init__(self, config: PortfolioConfig | None = None) -> None:
        self.config = config or PortfolioConfig()
        self._cash = self.config.initial_cash
        self._books: dict[str, _Book] = {}
        self._realized = 0.0
        self._fees = 0.0
        self._peak = self.config.initial_cash
        self._as_of = 0
        self._day = -1
        self._day_start_equity = self.config.initial_cash
        self._day_peak = self.config.initial_cash
        self._consecutive_losses = 0
        self._closed_trades = 0
        self._losing_trades = 0
        self._fills_applied = 0
        self._foreign_fee_fills = 0
        self._seen: SeenIds[str] = SeenIds(self.config.max_seen_fills)
        self._state = PortfolioState.initial(self.config.initial_cash)

    # ------------------------------------------------------------------
    # Events
    # ------------------------------------------------------------------

    def on_fill(self, fill: Fill) -> PortfolioState:
        """Apply one fill (duplicates by event id are ignored)."""
        if not self._seen.add(fill.event_id):
            return self._state
        self._advance(fill.ts_event)
        book = self._books.get(fill.symbol)
        if book is None:
            book = self._books[fill.symbol] = _Book()
        if book.mark_ts < 0:
            book.mark, book.mark_ts = fill.price, fill.ts_event
        fee = self._fee_in_quote(fill)
        signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
        self._apply(book, signed, fill.price, fee, fill.ts_event)
        self._cash -= signed * fill.price + fee
        self._fees += fee
        book.fees += fee
        self._fills_applied += 1
        return self._snapshot()

    def on_bar(self, bar: Bar) -> PortfolioState:
        """Mark ``bar.symbol`` at the bar's close (event time = its close time)."""
        self._advance(bar.ts_event)
        book = self._books.get(bar.symbol)
        if book is None:
            book = self._books[bar.symbol] = _Book()
        if bar.ts_event >= book.mark_ts:
            book.mark, book.mark_ts = bar.close, bar.ts_event
        return self._snapshot()

    def state(self) -> PortfolioState:
        return self._state

    # ------------------------------------------------------------------
    # Accounting
    # ------------------------------------------------------------------

    def _apply(self, book: _Book, signed: float, price: float, fee: float, ts: int) -> None:
        qty = book.qty
        size = abs(signed)
        if size == 0.0:
            book.trip_pnl -= fee
            return
        if qty == 0.0 or (qty > 0) == (signed > 0):
            # Open or increase: weighted average entry.
            new_qty = qty + signed
            book.avg = (abs(qty) * book.avg + size * price) / abs(new_qty)
            if qty == 0.0:
                book.opened_at = ts
                book.trip_pnl = 0.0
            book.qty = new_qty
            book.trip_pnl -= fee
            return
        # Reduce, close or flip.
        closing = min(size, abs(qty))
        opening = size - closing
        pnl = closing * (price - book.avg) * (1.0 if qty > 0 else -1.0)
        fee_close = fee * closing / size
        book.realized += pnl
        self._realized += pnl
        book.trip_pnl += pnl - fee_close
        new_qty = qty + signed
        eps = self.config.qty_epsilon
        if opening <= eps:
            if abs(new_qty) <= eps:
                # Closed (a residue below epsilon is flat, not a dust position).
                self._close_trip(book)
                book.qty, book.avg, book.opened_at = 0.0, 0.0, None
            else:
                book.qty = new_qty  # partial close: the average entry is unchanged
            return
        # Flip: close the trip, open the remainder at the fill price.
        self._close_trip(book)
        book.qty = new_qty
        book.avg = price
        book.opened_at = ts
        book.trip_pnl = -(fee - fee_close)

    def _close_trip(self, book: _Book) -> None:
        self._closed_trades += 1
        if book.trip_pnl < 0:
            self._consecutive_losses += 1
            self._losing_trades += 1
        else:
            self._consecutive_losses = 0
        book.trip_pnl = 0.0

    def _fee_in_quote(self, fill: Fill) -> float:
        base, quote = _split_currencies(fill.symbol)
        if fill.fee_currency == quote or fill.fee == 0.0:
            return fill.fee
        if fill.fee_currency == base:
            return fill.fee * fill.price
        self._foreign_fee_fills += 1
        return fill.fee

    # ------------------------------------------------------------------
    # Time, days, snapshot
    # ------------------------------------------------------------------

    def _equity(self) -> float:
        return self._cash + sum([b.qty * b.mark for b in self._books.values()])

    def _advance(self, ts: int) -> None:
        """Move event time forward (never back); roll the UTC day before applying."""
        if ts > self._as_of:
            self._as_of = ts
        day = self._as_of // NS_PER_DAY
        if day > self._day:
            equity = self._equity()
            self._day = day
            self._day_start_equity = equity
            self._day_peak = equity

    def _snapshot(self) -> PortfolioState:
        equity = self._equity()
        if equity > self._peak:  # max(peak, equity), without the call
            self._peak = equity
        if equity > self._day_peak:
            self._day_peak = equity
        positions = {
            symbol: _make_position(
                symbol=symbol,
                quantity=b.qty,
                avg_price=b.avg,
                mark_price=b.mark,
                mark_ts_ns=b.mark_ts,
                realized_pnl=b.realized,
                fees=b.fees,
                opened_at_ns=b.opened_at,
            )
            for symbol, b in sorted(self._books.items())
            if b.qty != 0.0 or b.realized != 0.0 or b.fees != 0.0
        }
        unrealized = sum([p.unrealized_pnl for p in positions.values()])
        daily_pnl = equity - self._day_start_equity
        # max(0.0, x) as a conditional: x when x > 0.0, else 0.0 (NaN and -0.0 included)
        drawdown = (self._peak - equity) / self._peak
        intraday = (self._day_peak - equity) / self._day_peak if self._day_peak > 0 else 1.0
        self._state = _make_state(
            as_of_ns=self._as_of,
            cash=self._cash,
            equity=equity,
            peak_equity=self._peak,
            drawdown=drawdown if drawdown > 0.0 else 0.0,
            day_start_ns=self._day * NS_PER_DAY,
            day_start_equity=self._day_start_equity,
            day_peak_equity=self._day_peak,
            intraday_drawdown=intraday if intraday > 0.0 else 0.0,
            daily_pnl=daily_pnl,
            daily_return=daily_pnl / self._day_start_equity if self._day_start_equity > 0 else -1.0,
            realized_pnl=self._realized,
            unrealized_pnl=unrealized,
            fees_paid=self._fees,
            consecutive_losses=self._consecutive_losses,
            closed_trades=self._closed_trades,
            losing_trades=self._losing_trades,
            fills_applied=self._fills_applied,
            foreign_fee_fills=self._foreign_fee_fills,
            positions=MappingProxyType(positions),
        )
        return self._state


#: ``Position(...)`` / ``PortfolioState(...)`` without the frozen ``__init__``'s per-field cost (a state per bar).
_make_position = keyword_constructor(Position)
_make_state = keyword_constructor(PortfolioState)
