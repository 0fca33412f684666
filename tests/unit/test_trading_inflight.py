"""The in-flight order book shared by strategy and risk: O(1) per operation
(risk decisions/s do not fall with the orders in flight), exact sums (no
float residue after adds and removals), expiry after the TTL, and the same
answers as a straightforward scan over the orders."""

from __future__ import annotations

import math
import random

from agents.execution.interface import InFlightOrders
from tests import builders
from topics.records import OrderStatus, OrderUpdate, Side

TTL = 1_000


def _update(coid: str, symbol: str, side: Side, status: OrderStatus, qty: float, filled: float) -> OrderUpdate:
    return builders.update(
        client_order_id=coid, symbol=symbol, side=side, status=status, quantity=qty, filled=filled, ts=1
    )


def test_orders_added_then_all_ended_then_net_exactly_zero() -> None:
    book = InFlightOrders(ttl_ns=TTL)
    qtys = [0.1, 0.2, 0.3, 1e-9, 12345.678, 0.7]
    for i, q in enumerate(qtys):
        book.add(f"c{i}", "BTC/USDT", Side.BUY if i % 2 else Side.SELL, q, 0)
    assert book.net("BTC/USDT", 0) == math.fsum(q if i % 2 else -q for i, q in enumerate(qtys))
    for i, q in enumerate(qtys):
        book.on_execution(_update(f"c{i}", "BTC/USDT", Side.BUY, OrderStatus.FILLED, q, q))
    assert book.net("BTC/USDT", 0) == 0.0 and len(book) == 0


def test_random_stream_then_net_equals_correctly_rounded_scan() -> None:
    rng = random.Random(5)
    book = InFlightOrders(ttl_ns=TTL)
    model: dict[str, tuple[str, float, float, float, int]] = {}  # coid -> symbol, sign, qty, filled, since
    now = 0
    for step in range(20_000):
        now += rng.randrange(0, 20)
        coid = f"c{rng.randrange(3_000)}"
        symbol = rng.choice(("BTC/USDT", "ETH/USDT"))
        roll = rng.random()
        if roll < 0.5:
            side = rng.choice((Side.BUY, Side.SELL))
            qty = round(rng.uniform(0.001, 3.0), rng.randrange(1, 9))
            book.add(coid, symbol, side, qty, now)
            model[coid] = (symbol, 1.0 if side is Side.BUY else -1.0, qty, 0.0, now)
        elif coid in model:
            sym, sign, qty, filled, since = model[coid]
            if roll < 0.8:
                new_filled = min(qty, filled + rng.uniform(0.0, qty / 2))
                book.on_execution(_update(coid, sym, Side.BUY, OrderStatus.PARTIALLY_FILLED, qty, new_filled))
                if new_filled >= filled:
                    model[coid] = (sym, sign, qty, new_filled, since)
            else:
                book.on_execution(_update(coid, sym, Side.BUY, OrderStatus.CANCELLED, qty, filled))
                del model[coid]
        if step % 7 == 0:
            for c in [c for c, v in model.items() if now - v[4] > TTL]:
                del model[c]
            for sym in ("BTC/USDT", "ETH/USDT"):
                want = math.fsum(s * max(0.0, q - f) for (y, s, q, f, _) in model.values() if y == sym)
                assert book.net(sym, now) == want
            assert len(book) == len(model)


def test_order_older_than_ttl_then_no_longer_counted() -> None:
    book = InFlightOrders(ttl_ns=TTL)
    book.add("old", "BTC/USDT", Side.BUY, 1.0, 0)
    book.add("new", "BTC/USDT", Side.SELL, 0.25, 600)
    assert book.net("BTC/USDT", TTL) == 0.75
    assert book.net("BTC/USDT", TTL + 1) == -0.25 and len(book) == 1
    book.add("old", "BTC/USDT", Side.BUY, 1.0, TTL + 1)  # re-added: counts from its new time
    assert book.net("BTC/USDT", 1_500) == 0.75
    assert book.net("BTC/USDT", 2 * TTL + 2) == 0.0 and len(book) == 0
