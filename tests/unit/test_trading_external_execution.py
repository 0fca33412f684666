"""The trading core in external execution mode (a venue adapter outside the
core): nothing fills in-process, only approved / reduced orders are handed out
(once each), rejected ones get paper's refusal record under the adapter's name,
venue answers fed back through ``on_execution`` move positions and in-flight
state, and the whole thing is deterministic and replayable from the journal
of inputs + answers (what the agent writes and the audit reads).

The "venues" here are (a) a fake that fills at the arrival price (engine unit
tests may fake the venue; the core's contract is what is under test) and (b)
the real :class:`~agents.execution.ccxt_live.CcxtExecutionAdapter` in dry run
against a markets snapshot recorded from the Binance fixture (offline).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agents.clock import FunctionClock
from agents.execution.ccxt_live import (
    CcxtExecutionAdapter,
    LiveExecutionConfig,
    VenueMarket,
    dump_markets_snapshot,
    load_markets_snapshot,
    make_execution_exchange,
)
from agents.execution.interface import ExecutionRecord, MarketContext, build_update, client_order_id_for
from agents.execution.paper import PaperConfig
from agents.trading.core import ExecutionMode, Step, TradingConfig, TradingCore
from agents.trading.settings import TradingSettings, load_exchange_credentials
from backtest.audit import replay_outputs
from tests import builders
from tests.fixtures.ccxt.replay import ReplayTransport
from tests.unit.test_trading_core import _kill
from tests.unit.test_trading_determinism import KEYRING, load_bars, stub_signal
from topics.records import (
    Bar,
    ControlCommand,
    Fill,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    RiskDecision,
    RiskVerdict,
    Signal,
)
from topics.schema import Record, codec_for

pytestmark = pytest.mark.timeout(60)

ADAPTER = "ccxt:binance:spot"
EXTERNAL = TradingConfig(execution=ExecutionMode.EXTERNAL, paper=PaperConfig(adapter=ADAPTER))

Venue = Callable[[OrderIntent, RiskDecision, MarketContext | None], list[ExecutionRecord]]


def filling_venue(intent: OrderIntent, decision: RiskDecision, market: MarketContext | None) -> list[ExecutionRecord]:
    """A fake venue filling the whole order at the arrival price; its ts_init is deliberately not the core's."""
    assert market is not None
    coid = client_order_id_for(intent.event_id)
    qty = decision.approved_quantity
    stamp = decision.ts_event + 12_345

    def upd(status: OrderStatus, filled: float, avg: float | None) -> OrderUpdate:
        return build_update(
            adapter=ADAPTER,
            client_order_id=coid,
            intent=intent,
            status=status,
            quantity=qty,
            filled_quantity=filled,
            avg_fill_price=avg,
            reason=None,
            venue_order_id="v-" + coid,
            ts_event=decision.ts_event,
            ts_init=stamp,
            causation_id=decision.event_id,
        )

    fill = builders.fill(
        side=intent.side,
        quantity=qty,
        price=market.last_price,
        fee=qty * market.last_price * 0.001,
        symbol=intent.symbol,
        client_order_id=coid,
        fill_id="f-" + coid,
        adapter=ADAPTER,
        ts=decision.ts_event,
        ts_init=stamp,
        correlation_id=intent.correlation_id,
        causation_id=decision.event_id,
    )
    return [
        upd(OrderStatus.NEW, 0.0, None),
        upd(OrderStatus.ACKNOWLEDGED, 0.0, None),
        fill,
        upd(OrderStatus.FILLED, qty, market.last_price),
    ]


def run(
    core: TradingCore, steps: list[tuple[Record, Callable[[], Step]]], venue: Venue
) -> tuple[list[Record], list[tuple[Record, int | None]]]:
    """What the agent does: apply each input, send its orders, feed the answers back. Returns the
    outputs and the journal (inputs and answers in applied order)."""
    out: list[Record] = []
    journal: list[tuple[Record, int | None]] = []
    for rec, apply in steps:
        journal.append((rec, None))
        step = apply()
        out += step.records
        for intent, decision, market in step.to_submit:
            for answer in venue(intent, decision, market):
                journal.append((answer, None))
                out += core.on_execution(answer).records
    return out, journal


def session(core: TradingCore, bars: list[Bar]) -> list[tuple[Record, Callable[[], Step]]]:
    """The determinism test's inputs: bars, stub signals, a kill switch at bar 100 released at 130."""
    steps: list[tuple[Record, Callable[[], Step]]] = []
    for i, bar in enumerate(bars):
        steps.append((bar, partial(core.on_bar, bar)))
        if i in (100, 130):
            cmd = _kill(bar, f"n-{i}") if i == 100 else _kill(bar, f"n-{i}", ControlCommand.KILL_SWITCH_OFF)
            steps.append((cmd, partial(core.on_control, cmd)))
        sig = stub_signal(bars, i)
        steps.append((sig, partial(core.on_signal, sig)))
    return steps


def _wire(records: list[Record]) -> list[bytes]:
    return [codec_for(type(r)).encode(r) for r in records]


def _strong(bars: list[Bar], i: int, score: float = 0.9) -> Signal:
    sig = dataclasses.replace(stub_signal(bars, i), score=score, expected_return=0.02, shadow=False)
    return dataclasses.replace(sig, event_id=f"strong-{i}-{score}")


# ---------------------------------------------------------------------------
# the core's external mode
# ---------------------------------------------------------------------------


def test_approved_signal_in_external_mode_then_handed_out_once_and_nothing_filled_in_process() -> None:
    bars = load_bars()
    core = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        assert core.on_bar(bar).to_submit == ()
    step = core.on_signal(_strong(bars, 29))
    intent, decision = step.records
    assert isinstance(intent, OrderIntent) and isinstance(decision, RiskDecision)
    assert decision.verdict is RiskVerdict.APPROVED
    ((s_intent, s_decision, market),) = step.to_submit
    assert (s_intent, s_decision) == (intent, decision)
    assert market == MarketContext(symbol="BTC/USDT", last_price=bars[29].close, ts_ns=bars[29].ts_event)
    # the next bars fill nothing in-process: the order is the venue's business now
    later = [r for bar in bars[30:40] for r in core.on_bar(bar).records]
    assert not [r for r in later if isinstance(r, (Fill, OrderUpdate))]
    assert core.paper.open_orders() == ()
    assert all(p.quantity == 0.0 for p in core.portfolio_state().positions.values())
    # the same intent decided again (a redelivery) is not handed out a second time
    submit: list[Any] = []
    again: list[Record] = []
    core._decide(intent, again, submit)
    assert submit == [] and not [r for r in again if isinstance(r, (Fill, OrderUpdate))]


def test_kill_switch_in_external_mode_then_rejected_in_process_under_the_adapters_name_and_never_handed_out() -> None:
    bars = load_bars()
    core = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        core.on_bar(bar)
    core.on_control(_kill(bars[29], "k-1"))
    step = core.on_signal(_strong(bars, 29))
    assert step.to_submit == ()
    intent, decision, refusal = step.records
    assert isinstance(decision, RiskDecision) and decision.verdict is RiskVerdict.REJECTED
    assert "kill_switch_global" in decision.reasons
    assert isinstance(refusal, OrderUpdate) and isinstance(intent, OrderIntent)
    assert (refusal.status, refusal.reason, refusal.adapter) == (OrderStatus.REJECTED, "risk_blocked", ADAPTER)
    assert refusal.client_order_id == client_order_id_for(intent.event_id)


def test_venue_answers_through_on_execution_then_position_moves_and_records_carry_the_cores_clock() -> None:
    bars = load_bars()
    core = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        core.on_bar(bar)
    step = core.on_signal(_strong(bars, 29))
    ((intent, decision, market),) = step.to_submit
    answers = filling_venue(intent, decision, market)
    published: list[Record] = []
    for answer in answers:
        published += core.on_execution(answer).records
    assert [r.event_id for r in published] == [a.event_id for a in answers]  # the answers themselves ...
    assert {r.ts_init for r in published} == {core.clock.now_ns()} != {a.ts_init for a in answers}  # ... re-stamped
    position = core.portfolio_state().positions["BTC/USDT"]
    assert position.quantity == pytest.approx(decision.approved_quantity)
    assert position.avg_price == pytest.approx(market.last_price if market else 0.0)
    # a later snapshot reports it; the filled order is no longer in flight for risk
    snap = core.on_bar(bars[30]).records[0]
    assert getattr(snap, "quantities", {})["BTC/USDT"] == pytest.approx(decision.approved_quantity)


def test_unknown_fate_then_exposure_kept_until_resolved_and_repeated_answers_change_nothing() -> None:
    bars = load_bars()
    core = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        core.on_bar(bar)
    ((intent, decision, market),) = core.on_signal(_strong(bars, 29)).to_submit
    qty = decision.approved_quantity
    assert qty > 0 and core.risk.exposure("BTC/USDT") == pytest.approx(qty)  # in flight from the decision on
    new, ack, fill, filled = filling_venue(intent, decision, market)
    unknown = dataclasses.replace(new, status=OrderStatus.UNKNOWN, reason="venue_timeout")
    unknown = dataclasses.replace(unknown, event_id=OrderUpdate.new(**_fields(unknown)).event_id)
    for answer in (new, unknown):
        assert core.on_execution(answer).records
    # the venue may hold it: risk still counts it (a rejected order would count 0)
    assert core.risk.exposure("BTC/USDT") == pytest.approx(qty)
    (open_order,) = core.open_orders()
    assert open_order.status is OrderStatus.UNKNOWN
    assert open_order.client_order_id == client_order_id_for(intent.event_id)
    # resolved as placed: its fill moves the position; a repeated answer (a follow-up query, a restart's
    # reconciliation) is applied once
    assert core.on_execution(ack).records and core.on_execution(fill).records
    assert core.on_execution(fill).records == () and core.on_execution(ack).records == ()
    (open_order,) = core.open_orders()
    assert isinstance(fill, Fill) and open_order.fill_ids == {fill.fill_id}
    assert open_order.filled == pytest.approx(qty)
    core.on_execution(filled)
    assert core.open_orders() == ()
    assert core.portfolio_state().positions["BTC/USDT"].quantity == pytest.approx(qty)
    assert core.risk.exposure("BTC/USDT") == 0.0  # not in flight any more; held once the next bar marks it
    core.on_bar(bars[30])
    assert core.risk.exposure("BTC/USDT") == pytest.approx(qty)


def test_open_external_orders_then_kept_in_the_checkpoint() -> None:
    from agents.trading.checkpoint import dump_core, load_core

    bars = load_bars()
    core = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        core.on_bar(bar)
    ((intent, decision, market),) = core.on_signal(_strong(bars, 29)).to_submit
    new, ack, fill, _ = filling_venue(intent, decision, market)
    for answer in (new, ack, fill):
        core.on_execution(answer)
    restored = load_core(dump_core(core), KEYRING)
    assert restored.open_orders() == core.open_orders() and len(core.open_orders()) == 1
    assert restored.on_execution(fill).records == ()  # already applied before the checkpoint


def _fields(update: OrderUpdate) -> dict[str, Any]:
    skip = {"event_id", "schema_version"}
    return {f.name: getattr(update, f.name) for f in dataclasses.fields(update) if f.name not in skip}


def test_on_execution_for_an_order_never_handed_out_or_in_paper_mode_then_refused() -> None:
    bars = load_bars()
    core = TradingCore(EXTERNAL, KEYRING)
    for bar in bars[:30]:
        core.on_bar(bar)
    step = core.on_signal(_strong(bars, 29))
    ((intent, decision, market),) = step.to_submit
    foreign = dataclasses.replace(intent, event_id="someone-elses-intent")
    with pytest.raises(ValueError, match="never submitted"):
        core.on_execution(filling_venue(foreign, decision, market)[0])
    paper = TradingCore(TradingConfig(), KEYRING)
    with pytest.raises(ValueError, match="external execution"):
        paper.on_execution(filling_venue(intent, decision, market)[0])
    assert all(p.quantity == 0.0 for p in core.portfolio_state().positions.values())


def test_external_session_twice_and_replayed_from_its_journal_then_byte_identical() -> None:
    bars = load_bars()
    first = TradingCore(EXTERNAL, KEYRING)
    out1, journal = run(first, session(first, bars), filling_venue)
    second = TradingCore(EXTERNAL, KEYRING)
    out2, _ = run(second, session(second, bars), filling_venue)
    assert _wire(out1) == _wire(out2)
    fills = [r for r in out1 if isinstance(r, Fill)]
    rejected = [r for r in out1 if isinstance(r, OrderUpdate) and r.reason == "risk_blocked"]
    assert len(fills) >= 5 and rejected, (len(fills), len(rejected))  # real trading and a halt in the session
    assert all(u.adapter == ADAPTER for u in out1 if isinstance(u, OrderUpdate))
    # the audit's replay (inputs and venue answers from the journal) gives the same bytes
    assert _wire(replay_outputs(EXTERNAL, KEYRING, journal)) == _wire(out1)
    # ... and a different venue answer is a different decision stream (the answers are inputs): the last
    # fill at another price, replayed up to the next bar, changes that bar's portfolio snapshot
    last_fill = max(i for i, (r, _) in enumerate(journal) if isinstance(r, Fill))
    next_bar = min(i for i, (r, _) in enumerate(journal) if i > last_fill and isinstance(r, Bar))
    prefix = journal[: next_bar + 1]
    fill = prefix[last_fill][0]
    assert isinstance(fill, Fill)
    tampered = [
        *prefix[:last_fill],
        (dataclasses.replace(fill, price=fill.price * 1.01), None),
        *prefix[last_fill + 1 :],
    ]
    honest, changed = replay_outputs(EXTERNAL, KEYRING, prefix), replay_outputs(EXTERNAL, KEYRING, tampered)
    assert _wire(honest) == _wire(out1[: len(honest)])
    assert _wire(honest[:-1]) != _wire(changed[:-1]) or _wire(honest) != _wire(changed)
    assert honest[-1].event_id == changed[-1].event_id and _wire(honest[-1:]) != _wire(changed[-1:])


def test_paper_mode_unchanged_then_nothing_to_submit() -> None:
    bars = load_bars()
    core = TradingCore(TradingConfig(), KEYRING)
    steps = session(core, bars)
    outputs = [apply() for _, apply in steps]
    assert all(s.to_submit == () for s in outputs)
    assert any(isinstance(r, Fill) for s in outputs for r in s.records)


# ---------------------------------------------------------------------------
# the real ccxt adapter, dry run, against a pinned markets snapshot
# ---------------------------------------------------------------------------


async def _snapshot() -> str:
    """Binance spot markets recorded in the fixture, as ccxt's ``exchange.markets`` dump."""
    config = LiveExecutionConfig(exchange_id="binance", market_type=VenueMarket.SPOT)
    exchange = make_execution_exchange(config)
    exchange.enableRateLimit = False
    ReplayTransport.install(exchange, "binance_spot_markets.json")
    try:
        await exchange.load_markets()
        return dump_markets_snapshot(exchange)
    finally:
        await exchange.close()


def dry_run_adapter(core: TradingCore, snapshot: str) -> CcxtExecutionAdapter:
    config = LiveExecutionConfig(exchange_id="binance", market_type=VenueMarket.SPOT, dry_run=True)
    exchange = make_execution_exchange(config)

    async def no_network(*_: Any, **__: Any) -> Any:
        raise AssertionError("a dry run must not touch the network")

    exchange.fetch = no_network
    exchange.set_markets(load_markets_snapshot(snapshot))
    return CcxtExecutionAdapter(exchange, config, FunctionClock(core.clock.now_ns))


async def test_dry_run_adapter_from_a_markets_snapshot_then_new_cancelled_or_rejected_with_the_rule() -> None:
    snapshot = await _snapshot()
    assert set(load_markets_snapshot(snapshot)) == {"BTC/USDT", "ETH/USDT", "LUNA/USDT"}
    bars = load_bars()
    core = TradingCore(
        dataclasses.replace(
            EXTERNAL, risk=dataclasses.replace(EXTERNAL.risk, allowed_symbols=("BTC/USDT", "LUNA/USDT"))
        ),
        KEYRING,
    )
    adapter = dry_run_adapter(core, snapshot)
    for bar in bars[:30]:
        core.on_bar(bar)
        core.on_bar(dataclasses.replace(bar, symbol="LUNA/USDT", event_id="luna-" + bar.event_id))
    answers: list[Record] = []
    for sig in (_strong(bars, 29), dataclasses.replace(_strong(bars, 29, 0.8), symbol="LUNA/USDT")):
        for intent, decision, market in core.on_signal(sig).to_submit:
            for answer in await adapter.submit(intent, decision, market):
                answers += core.on_execution(answer).records
    btc = [(u.status, u.reason) for u in answers if isinstance(u, OrderUpdate) and u.symbol == "BTC/USDT"]
    assert btc == [(OrderStatus.NEW, "dry_run"), (OrderStatus.CANCELLED, "dry_run")]
    assert all(
        isinstance(u, OrderUpdate) and u.adapter == ADAPTER and u.ts_init == core.clock.now_ns() for u in answers
    )
    assert adapter.sent_client_order_ids == []  # nothing sent
    luna = [(u.status, u.reason) for u in answers if isinstance(u, OrderUpdate) and u.symbol == "LUNA/USDT"]
    assert luna == [(OrderStatus.REJECTED, "symbol_not_supported")]  # listed, but not trading (status BREAK)
    # terminal answers end the orders for risk and strategy: nothing stays in flight
    assert len(core.risk._in_flight) == 0 and len(core.strategy._in_flight) == 0
    assert all(p.quantity == 0.0 for p in core.portfolio_state().positions.values())


async def test_symbol_not_listed_in_the_snapshot_then_rejected_with_that_rule() -> None:
    snapshot = await _snapshot()
    bars = [dataclasses.replace(b, symbol="DOGE/USDT") for b in load_bars()[:30]]
    core = TradingCore(
        dataclasses.replace(EXTERNAL, risk=dataclasses.replace(EXTERNAL.risk, allowed_symbols=("DOGE/USDT",))), KEYRING
    )
    adapter = dry_run_adapter(core, snapshot)
    for bar in bars:
        core.on_bar(bar)
    ((intent, decision, market),) = core.on_signal(dataclasses.replace(_strong(bars, 29), symbol="DOGE/USDT")).to_submit
    (answer,) = await adapter.submit(intent, decision, market)
    (published,) = core.on_execution(answer).records
    assert isinstance(published, OrderUpdate)
    assert (published.status, published.reason) == (OrderStatus.REJECTED, "symbol_not_supported")


def test_markets_snapshot_when_malformed_then_refused_with_reason() -> None:
    for text, match in (
        ("[]", "non-empty JSON object"),
        ("{", "not JSON"),
        ('{"BTC/USDT": {"symbol": "ETH/USDT"}}', "not a ccxt market"),
        ('{"BTC/USDT": {"symbol": "BTC/USDT", "id": "BTCUSDT"}}', "lacks"),
    ):
        with pytest.raises(ValueError, match=match):
            load_markets_snapshot(text)


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------


def test_ccxt_settings_from_env_then_external_config_dry_run_by_default_or_refused() -> None:
    env = {"TRADEFLOW_EXECUTION_ADAPTER": "ccxt", "TRADEFLOW_EXECUTION_VENUE": "binance"}
    s = TradingSettings.from_env(env)
    assert s.execution is not None and s.execution.dry_run and s.execution.adapter == ADAPTER
    cfg = s.config()
    assert cfg.execution is ExecutionMode.EXTERNAL and cfg.paper.adapter == ADAPTER
    assert TradingSettings.from_env({}).config().execution is ExecutionMode.PAPER
    swap = TradingSettings.from_env(
        {
            **env,
            "TRADEFLOW_EXECUTION_VENUE": "bitget",
            "TRADEFLOW_EXECUTION_MARKET": "swap",
            "TRADEFLOW_EXECUTION_LEVERAGE": "3",
            "TRADEFLOW_EXECUTION_DRY_RUN": "0",
            "TRADEFLOW_EXECUTION_MARGIN_MODE": "isolated",
        }
    ).execution
    assert swap is not None and not swap.dry_run and swap.live_config().leverage == 3
    refused = {
        "TRADEFLOW_EXECUTION_VENUE": ({"TRADEFLOW_EXECUTION_VENUE": ""}, "not wired to a venue"),
        "kraken": ({"TRADEFLOW_EXECUTION_VENUE": "kraken"}, "not supported"),
        "coinbase swap": (
            {"TRADEFLOW_EXECUTION_VENUE": "coinbase", "TRADEFLOW_EXECUTION_MARKET": "swap"},
            "not supported",
        ),
        "spot leverage": ({"TRADEFLOW_EXECUTION_LEVERAGE": "5"}, "leverage"),
        "dry run flag": ({"TRADEFLOW_EXECUTION_DRY_RUN": "maybe"}, "expected 1 or 0"),
        "live with snapshot": (
            {"TRADEFLOW_EXECUTION_DRY_RUN": "0", "TRADEFLOW_EXECUTION_MARKETS_FILE": "m.json"},
            "dry runs only",
        ),
    }
    for changes, match in refused.values():
        with pytest.raises(ValueError, match=match):
            TradingSettings.from_env({**env, **changes})


def test_exchange_credentials_from_env_or_file_then_loaded_and_never_in_errors(tmp_path: Path) -> None:
    secret = "s3cr3t-NEVER-IN-AN-ERROR-1234567890"
    path = tmp_path / "secret"
    path.write_text(secret + "\n")
    creds = load_exchange_credentials({"TRADEFLOW_EXCHANGE_API_KEY": "k1", "TRADEFLOW_EXCHANGE_SECRET_FILE": str(path)})
    assert creds == {"apiKey": "k1", "secret": secret}
    assert load_exchange_credentials({}) == {}
    for env, match in (
        ({"TRADEFLOW_EXCHANGE_SECRET": secret, "TRADEFLOW_EXCHANGE_SECRET_FILE": str(path)}, "not both"),
        ({"TRADEFLOW_EXCHANGE_SECRET_FILE": str(tmp_path / "missing")}, "cannot read"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            load_exchange_credentials(env)
        assert secret not in str(err.value)


def test_async_submit_does_not_need_a_running_venue_loop() -> None:
    """The adapter built for the agent binds no event loop until it sends (a dry run never does)."""
    core = TradingCore(EXTERNAL, KEYRING)
    snapshot = asyncio.run(_snapshot())
    adapter = dry_run_adapter(core, snapshot)
    assert adapter.exchange.session is None


# ---------------------------------------------------------------------------
# agent start-up (markets before consuming; exit codes)
# ---------------------------------------------------------------------------

CCXT_ENV = {"TRADEFLOW_EXECUTION_ADAPTER": "ccxt", "TRADEFLOW_EXECUTION_VENUE": "binance"}


def _start(env: dict[str, str]) -> CcxtExecutionAdapter | None:
    from agents.trading.checkpointer import LiveState
    from agents.trading.venue import start_execution

    settings = TradingSettings.from_env(env)
    return start_execution(settings, env, LiveState(TradingCore(settings.config(), KEYRING)))


def test_start_with_a_markets_snapshot_then_adapter_ready_offline(tmp_path: Path) -> None:
    path = tmp_path / "markets.json"
    path.write_text(asyncio.run(_snapshot()))
    adapter = _start({**CCXT_ENV, "TRADEFLOW_EXECUTION_MARKETS_FILE": str(path)})
    assert adapter is not None and adapter.name == ADAPTER and adapter.config.dry_run
    assert set(adapter.exchange.markets) == {"BTC/USDT", "ETH/USDT", "LUNA/USDT"}
    assert _start({}) is None  # paper: no adapter


def test_start_misconfigured_then_exit_2(tmp_path: Path) -> None:
    for env in (
        {**CCXT_ENV, "TRADEFLOW_EXECUTION_DRY_RUN": "0"},  # live sending without credentials
        {**CCXT_ENV, "TRADEFLOW_EXECUTION_MARKETS_FILE": str(tmp_path / "missing.json")},
    ):
        with pytest.raises(SystemExit) as exit_:
            _start(env)
        assert exit_.value.code == 2


def test_start_when_the_venue_is_unreachable_then_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    import ccxt

    import agents.execution.ccxt_live as ccxt_live

    real = ccxt_live.make_execution_exchange

    def unreachable(config: LiveExecutionConfig, credentials: Any = None) -> Any:
        exchange = real(config, credentials)

        async def down(*_: Any, **__: Any) -> Any:
            raise ccxt.ExchangeNotAvailable("binance GET https://api.binance.com/api/v3/exchangeInfo")

        exchange.fetch = down
        return exchange

    monkeypatch.setattr(ccxt_live, "make_execution_exchange", unreachable)
    creds = {"TRADEFLOW_EXCHANGE_API_KEY": "k", "TRADEFLOW_EXCHANGE_SECRET": "s"}
    for env in ({**CCXT_ENV, "TRADEFLOW_EXECUTION_DRY_RUN": "0", **creds}, CCXT_ENV):
        with pytest.raises(SystemExit) as exit_:
            _start(env)
        assert exit_.value.code == 3
