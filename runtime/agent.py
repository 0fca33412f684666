"""What every thin agent shares: topic naming, decode-or-dead-letter (the sink's too).

Kept tiny on purpose: an agent decodes, calls its engine, and sends.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from runtime.metrics import DEAD_LETTERS, RECORDS_IN
from topics.catalogue import physical_name
from topics.deadletter import dead_letter_for
from topics.records import DeadLetter
from topics.schema import Codec, ErrorReason, Record, RecordError, codec_for

log = structlog.get_logger("runtime.agent")

R = TypeVar("R", bound=Record)


@dataclass
class AgentContext:
    """Per-worker wiring shared by the agents of one faust app.

    ``wall_clock`` (ns) is only used for ``ts_init`` stamps at this edge;
    engines get event-time clocks.
    """

    app: Any
    wall_clock: Callable[[], int]
    namespace: str = ""
    bootstrap: str = ""
    dsn: str = ""
    _dlq: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._dlq = self.app.topic(self.topic("deadletter"))

    def topic(self, name: str) -> str:
        return physical_name(name, self.namespace)

    async def dead_letter(self, dl: DeadLetter) -> None:
        await self._dlq.send(key=dl.key(), value=codec_for(DeadLetter).encode(dl))


_Body = Callable[..., Awaitable[None]]


def crash_worker_on_bug(app: Any, name: str) -> Callable[[_Body], _Body]:
    """Turn an unexpected exception in an agent body into a loud worker crash.

    Bad *input* never gets here (it is dead-lettered); an exception here is a
    bug or a lost dependency. faust would otherwise log the actor as crashed
    and leave the process up, consuming nothing: a silent stall. Crashing the
    worker exits non-zero, the supervisor restarts it, and the uncommitted
    events are redelivered.
    """

    def wrap(body: _Body) -> _Body:
        @functools.wraps(body)
        async def guarded(*args: Any) -> None:
            try:
                await body(*args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.critical("agent_crashed", agent=name, error=f"{type(exc).__name__}: {exc}", exc_info=True)
                await app.crash(exc)
                raise

        return guarded

    return wrap


def decode_message(
    codec: Codec[R],
    *,
    consumer: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    ts_event: int,
    ts_init: Callable[[], int],
    dead_letters: Callable[[DeadLetter], object],
    bad_input: type[Exception] | tuple[type[Exception], ...] = Exception,
) -> R | None:
    """Decode one message's value; one that is not a valid record is dead-lettered and None returned.

    The consumer never crashes on bad input: a metric counts it by reason, a log line names it, and a
    :class:`DeadLetter` (reason, original bytes, source coordinates) goes to ``dead_letters``.
    ``bad_input`` is what counts as bad input (the sink passes :class:`RecordError` only: any other
    exception is a bug and propagates). ``ts_event`` is the broker timestamp (ns); ``ts_init`` is
    read only when a dead letter is made.
    """
    try:
        if value is None:
            raise RecordError(ErrorReason.INVALID_VALUE, "empty message value (tombstone)")
        return codec.decode(value)
    except bad_input as err:
        reason = err.reason.value if isinstance(err, RecordError) else ErrorReason.INVALID_VALUE.value
        DEAD_LETTERS.labels(consumer, topic, reason).inc()
        log.warning(
            "dead_letter",
            consumer=consumer,
            topic=topic,
            partition=partition,
            offset=offset,
            reason=reason,
            detail=str(err)[:200],
        )
        dead_letters(
            dead_letter_for(
                consumer=consumer,
                topic=topic,
                partition=partition,
                offset=offset,
                key=key,
                value=value,
                error=err,
                ts_event=ts_event,
                ts_init=ts_init(),
            )
        )
        return None


async def decode_or_dead_letter(ctx: AgentContext, consumer: str, topic: str, cls: type[R], event: Any) -> R | None:
    """Decode ``event.value`` as ``cls``; on failure dead-letter it (:func:`decode_message`) and return None."""
    RECORDS_IN.labels(consumer, topic).inc()
    msg = event.message
    dead: list[DeadLetter] = []
    record = decode_message(
        codec_for(cls),
        consumer=consumer,
        topic=topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        ts_event=int(msg.timestamp * 1e9) if msg.timestamp else 0,
        ts_init=ctx.wall_clock,
        dead_letters=dead.append,
    )
    for dl in dead:
        await ctx.dead_letter(dl)
    return record
