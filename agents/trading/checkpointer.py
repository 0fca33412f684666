"""When and how the trading agent saves its state, and how it restores it.

:class:`LiveState` is the core in force and the input position it reflects;
:func:`restore` loads it from the account's checkpoint at start-up;
:class:`Checkpointer` saves it. Cadence: after a batch once
``CHECKPOINT_EVERY_S`` passed since the last checkpoint *and* at least
``1 / CHECKPOINT_MAX_SHARE`` times that checkpoint's duration (saving takes
at most that share of the time, whatever the state's size), else once the
input pauses for ``CHECKPOINT_IDLE_S``; with external execution after every
batch. A longer interval costs nothing in correctness: after a crash the
inputs since the checkpoint are re-processed, to the same outputs and ids.

Write-ahead order: the inputs of the account's topics interleave as they
arrive, and a re-read after a crash may interleave them otherwise (a signal
before the bar it was applied after). So each batch's journal rows are
written (:meth:`Checkpointer.write_ahead`) before its outputs are sent; at
start-up :func:`restore` loads the rows after the checkpoint and
:class:`JournalOrder` re-applies those inputs in that order, whatever order
the broker delivers them in, before any other input.

One checkpoint: under :attr:`Checkpointer.gate` (never mid-message) seal core +
offsets; then, beside the loop on a connection of its own (paper execution;
external execution before the next batch), check every delivery since the last
one -> journal rows (with each signal's outcome, and the outcomes of held
signals applied since) + row upsert + the output horizon (the last offset
delivered per output partition: ``tradeflow audit`` compares the recorded
outputs up to there, the ones the journaled inputs made) in one transaction
(:func:`storage.trading.save_checkpoint`). Any failure raises: the worker
crashes instead of going on with state it could not save. The format is
:mod:`agents.trading.checkpoint`; the design, ``docs/trading_agent.md``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
import structlog

from agents.control.signing import Keyring
from agents.trading.checkpoint import CheckpointError, open_checkpoint, seal
from agents.trading.core import TradingCore
from agents.trading.metrics import CHECKPOINT_BYTES, CHECKPOINT_SECONDS
from runtime.batch_agent import Delivery
from runtime.errors import NeedsOperator
from runtime.exits import EXIT_CONFIG, EXIT_INFRA
from storage.trading import (
    Checkpoint,
    HeldOutcome,
    JournalRow,
    insert_journal,
    journal_after,
    load_checkpoint,
    load_output_offsets,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_DB_TIMEOUT_S",
    "CHECKPOINT_EVERY_S",
    "CHECKPOINT_IDLE_S",
    "CHECKPOINT_MAX_SHARE",
    "Checkpointer",
    "JournalGap",
    "JournalOrder",
    "LiveState",
    "restore",
]

log = structlog.get_logger("agents.trading")

#: Under sustained input a checkpoint is taken at most this often (paper execution).
CHECKPOINT_EVERY_S = 0.25
#: ... and at most this share of the time: the next one waits at least ``last duration / share``.
CHECKPOINT_MAX_SHARE = 0.2
#: ... and once the input pauses this long, so a quiet stream's state is saved right behind it.
CHECKPOINT_IDLE_S = 0.05
#: seconds a checkpoint statement may wait for PostgreSQL before the worker gives up (and crashes)
CHECKPOINT_DB_TIMEOUT_S = 30.0


class LiveState:
    """The core in force and the input position its state reflects.

    ``position[(topic, partition)]`` is the next offset whose message the
    state does *not* contain; it only moves forward, together with the core,
    one message at a time. ``events`` counts the inputs (and execution
    answers) applied and journaled: the journal's sequence number. ``ahead``:
    the journal rows written after the restored checkpoint (inputs applied,
    outputs perhaps sent, state not saved), to re-apply first and in order.
    """

    __slots__ = ("ahead", "core", "events", "position")

    def __init__(self, core: TradingCore) -> None:
        self.core = core
        self.position: dict[tuple[str, int], int] = {}
        self.events = 0
        self.ahead: list[JournalRow] = []

    def offsets(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in sorted(self.position.items()):
            out.setdefault(topic, {})[partition] = offset
        return out


def restore(live: LiveState, dsn: str, keyring: Keyring, config_hash: str) -> None:
    """Load the account's checkpoint (if any) into ``live`` before the worker starts.

    Runs on a private event loop (faust's is not running yet and must not be
    replaced). Exit 2 on a refused checkpoint, 3 when PostgreSQL is unreachable.
    """
    account = live.core.config.account

    async def load() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            cp = await load_checkpoint(conn, account)
            live.ahead = await journal_after(conn, account, 0 if cp is None else cp.events_applied)
        finally:
            await conn.close()
        if live.ahead:
            log.info("trading_journal_ahead", account=account, inputs=len(live.ahead), first_seq=live.ahead[0].seq)
        if cp is None:
            log.info("trading_checkpoint_none", account=account, resume="every input partition from offset 0")
            return
        restored = open_checkpoint(cp, keyring, account=account, config_hash=config_hash)
        restored.signal_verifier = live.core.signal_verifier  # never in the checkpoint (it holds secrets)
        live.core = restored
        live.position = {(t, p): o for t, parts in cp.offsets.items() for p, o in parts.items()}
        live.events = cp.events_applied
        log.info(
            "trading_checkpoint_restored",
            account=account,
            events_applied=cp.events_applied,
            offsets=live.offsets(),
            state_bytes=len(cp.state),
            state_sha256=cp.state_sha256,
        )

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(load())
    except CheckpointError as exc:
        log.critical("trading_checkpoint_refused", account=account, reason=str(exc))
        raise SystemExit(EXIT_CONFIG) from None
    except (TimeoutError, OSError) as exc:
        log.critical("trading_checkpoint_unavailable", account=account, error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(EXIT_INFRA) from None
    finally:
        loop.close()


class JournalGap(NeedsOperator):
    """An input the journal says was applied is not where the journal says it is on the broker (the
    topic was recreated or truncated): the outputs already sent cannot be re-derived."""


class JournalOrder:
    """Inputs re-read after a restart, handed on in the order the journal (rows written ahead of the
    checkpoint) says they were applied, whatever order the broker delivers them in.

    ``plan``: the (physical topic, partition, offset) of each journaled input, in order. A message of a
    partition is held until every plan entry before it is applied; one that is not in the plan but
    below its partition's next entry (an input the state already holds, or an undecodable one, which
    is never journaled) goes when reached; once the plan is done, what is held goes in arrival order.
    Records: anything with ``topic``, ``partition`` and ``offset`` (aiokafka's ``ConsumerRecord``).
    """

    def __init__(self, plan: Sequence[tuple[str, int, int]]) -> None:
        self.plan = deque(plan)
        self.held: dict[tuple[str, int], deque[tuple[int, Any]]] = {}
        self.arrived = 0

    @property
    def active(self) -> bool:
        return bool(self.plan) or any(self.held.values())

    def order(self, records: Sequence[Any]) -> list[Any]:
        """The records that may be applied now, in the order to apply them."""
        for rec in records:
            self.held.setdefault((rec.topic, rec.partition), deque()).append((self.arrived, rec))
            self.arrived += 1
        ready: list[Any] = []
        while self.plan:
            topic, partition, offset = self.plan[0]
            queue = self.held.get((topic, partition))
            while queue and queue[0][1].offset < offset:
                ready.append(queue.popleft()[1])
            if not queue:
                break  # the next journaled input has not been delivered yet
            if queue[0][1].offset != offset:
                raise JournalGap(
                    f"the journal's next input is {topic}[{partition}]@{offset}, the broker delivered offset "
                    f"{queue[0][1].offset}: the topic lost the journaled message"
                )
            ready.append(queue.popleft()[1])
            self.plan.popleft()
        if not self.plan:
            rest = sorted((item for queue in self.held.values() for item in queue), key=lambda item: item[0])
            ready += [rec for _, rec in rest]
            self.held.clear()
        return ready

    def reset(self) -> None:
        """The inputs were sought back (a rebalance): what is held will be delivered again."""
        self.held.clear()


class Checkpointer:
    """Saves ``live`` with the journal of the inputs since the last save (see the module docstring).

    The agent reports what it does: :meth:`sent` for every output handed to
    the producer, :meth:`journal` for every input applied (in order),
    :meth:`applied` per input message, and :meth:`after_batch` (holding
    :attr:`gate`) after each batch. ``flush`` flushes the producer;
    ``crash`` stops the worker when the idle checkpoint fails.
    """

    def __init__(
        self,
        live: LiveState,
        *,
        keyring: Keyring,
        config_hash: str,
        dsn: str,
        every_batch: bool,
        flush: Callable[[], Awaitable[None]],
        crash: Callable[[Exception], Awaitable[None]],
        saved: Callable[[Mapping[str, Mapping[int, int]]], Awaitable[None]] | None = None,
    ) -> None:
        self.live = live
        self.keyring = keyring
        self.config_hash = config_hash
        self.dsn = dsn
        #: External execution checkpoints every batch: orders re-submitted on recovery are the ones after
        #: the checkpoint, and live fills of a first placement are not fetched back.
        self.every_batch = every_batch
        self.flush = flush
        self.crash = crash
        self.saved = saved
        #: a batch and a checkpoint never interleave: the snapshot is taken between messages
        self.gate = asyncio.Lock()
        self.account = live.core.config.account
        #: the record batches handed to the producer since the last one, with their (logical) topic
        self.deliveries: list[tuple[str, Delivery]] = []
        #: topic -> partition -> last offset delivered (loaded from the row at the first checkpoint)
        self.outputs: dict[str, dict[int, int]] | None = None
        self.pending: list[JournalRow] = []  # journal rows of inputs applied, not yet written
        self.held_outcomes: list[HeldOutcome] = []  # what became of held signals applied since then
        self.unsaved = 0  # inputs applied since the last checkpoint
        self.last_checkpoint = 0.0  # monotonic
        self.last_batch = 0.0  # monotonic
        self.last_cost = 0.0  # the last checkpoint's duration (s)
        self.idle_flush: asyncio.Task[None] | None = None
        self.db: asyncpg.Connection | None = None
        #: the connection checkpoints are saved on beside the loop (paper execution)
        self.save_db: asyncpg.Connection | None = None
        #: the checkpoint being saved beside the loop, if any
        self.saving: asyncio.Future[None] | None = None
        self.seconds = CHECKPOINT_SECONDS.labels(self.account)

    def sent(self, topic: str, delivery: Delivery) -> None:
        self.deliveries.append((topic, delivery))

    def journal(self, row: JournalRow) -> None:
        self.pending.append(row)

    async def write_ahead(self) -> None:
        """Write the journal rows of the inputs applied so far, before their outputs are sent (caller
        holds :attr:`gate`); a failure raises and the worker crashes, no output of them sent."""
        if self.pending:
            await insert_journal(await self.connection(), self.pending)
            self.pending.clear()

    async def connection(self) -> asyncpg.Connection:
        if self.db is None:
            # a statement that gets no answer crashes the worker (restart resumes from the last checkpoint)
            self.db = await asyncpg.connect(self.dsn, command_timeout=CHECKPOINT_DB_TIMEOUT_S)
        return self.db

    def held_outcome(self, signal_event_id: str, reason: str) -> None:
        """A signal journaled as ``held`` was applied: its row gets ``reason`` with the next checkpoint."""
        self.held_outcomes.append((signal_event_id, reason))

    def applied(self) -> None:
        self.unsaved += 1

    async def after_batch(self) -> None:
        """Checkpoint now, or leave it to the idle flush (caller holds :attr:`gate`)."""
        now = time.monotonic()
        self.last_batch = now
        if not self.unsaved:
            return
        every = max(CHECKPOINT_EVERY_S, self.last_cost / CHECKPOINT_MAX_SHARE)
        if (self.every_batch or now - self.last_checkpoint >= every) and await self.checkpoint_pending():
            return
        if self.idle_flush is None or self.idle_flush.done():  # also when one was due while another saved
            self.idle_flush = asyncio.ensure_future(self.flush_when_idle())

    async def checkpoint_pending(self) -> bool:
        """Checkpoint the inputs applied since the last one (caller holds :attr:`gate`); False when it
        was left for later.

        Paper execution: the state is sealed here, between two messages, and saved by a task of its own
        (deliveries awaited, then the row written on a connection of its own) while the next batches
        are applied; one save at a time (a checkpoint due while one is saving waits for the next
        batch). External execution: sealed and saved here, before the next batch."""
        if self.saving is not None and not self.saving.done():
            if not self.every_batch:
                return False
            await self.saving
        t0 = time.perf_counter()
        sealed = self.snapshot()
        self.pending = []
        self.held_outcomes = []
        self.unsaved = 0
        self.last_checkpoint = time.monotonic()
        if self.every_batch:
            self.last_cost = await self.save(*sealed, t0=t0, db=await self.connection())
        else:
            self.saving = asyncio.ensure_future(self.save_beside(*sealed, t0=t0))
        return True

    async def save_beside(self, *sealed: Any, t0: float) -> None:
        """:meth:`save` as a task beside the loop, on its own connection; a failure crashes the worker."""
        try:
            if self.save_db is None:
                self.save_db = await asyncpg.connect(self.dsn, command_timeout=CHECKPOINT_DB_TIMEOUT_S)
            self.last_cost = await self.save(*sealed, t0=t0, db=self.save_db)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.crash(exc)

    async def drain(self) -> None:
        """Wait for the checkpoint being saved, if any (a failure of it goes to ``crash``, not here)."""
        if self.saving is not None:
            await self.saving

    async def flush_when_idle(self) -> None:
        """Checkpoint what is pending once no batch came for ``CHECKPOINT_IDLE_S`` (debounced)."""
        try:
            while True:
                wait = self.last_batch + CHECKPOINT_IDLE_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                await self.drain()  # a checkpoint still being saved: this one follows it
                async with self.gate:
                    if time.monotonic() < self.last_batch + CHECKPOINT_IDLE_S:
                        continue  # a batch ran while this task waited for the gate
                    if self.unsaved and not await self.checkpoint_pending():
                        continue  # another save began meanwhile
                return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a checkpoint that cannot be written: crash, as in the agent body
            await self.crash(exc)

    def snapshot(self) -> tuple[Checkpoint, list[tuple[str, Delivery]], list[JournalRow], list[HeldOutcome]]:
        """The snapshot now (between messages), with the deliveries, journal rows and held outcomes it
        covers: what :meth:`save` writes."""
        live = self.live
        cp = seal(
            live.core,
            config_hash=self.config_hash,
            offsets=live.offsets(),
            events_applied=live.events,
            keyring=self.keyring,
        )
        sent, self.deliveries = self.deliveries, []
        return cp, sent, self.pending, self.held_outcomes

    async def save(
        self,
        cp: Checkpoint,
        sent: list[tuple[str, Delivery]],
        journal: list[JournalRow],
        held_outcomes: list[HeldOutcome],
        *,
        t0: float,
        db: asyncpg.Connection,
    ) -> float:
        """Deliveries checked -> journal + upsert in one transaction -> positions committed; an exception
        here crashes the worker. Returns how long the checkpoint took since ``t0`` (s)."""
        await self.flush()
        delivered: list[tuple[str, int, int]] = []  # (topic, partition, offset of the batch's last record)
        for topic, d in sent:
            # raises the send's error: this checkpoint must not cover an output that was lost
            meta = await d.future
            offset = getattr(meta, "offset", None)
            if isinstance(offset, int):  # broker metadata: the offset of the batch's first record
                delivered.append((topic, d.partition, offset + d.records - 1))
        if self.outputs is None:
            self.outputs = await load_output_offsets(db, self.account)
        for topic, partition, last in delivered:
            parts = self.outputs.setdefault(topic, {})
            parts[partition] = max(last, parts.get(partition, -1))
        await save_checkpoint(db, cp, journal, held_outcomes, self.outputs)
        if self.saved is not None:
            await self.saved(cp.offsets)
        took = time.perf_counter() - t0
        self.seconds.observe(took)
        CHECKPOINT_BYTES.labels(self.account).set(len(cp.state))
        return took
