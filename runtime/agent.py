"""What every thin agent shares: topic naming, decode-or-dead-letter.

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
from topics.schema import ErrorReason, Record, RecordError, codec_for

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


_Body = Callable[[Any], Awaitable[None]]


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
        async def guarded(stream: Any) -> None:
            try:
                await body(stream)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.critical("agent_crashed", agent=name, error=f"{type(exc).__name__}: {exc}", exc_info=True)
                await app.crash(exc)
                raise

        return guarded

    return wrap


async def decode_or_dead_letter(ctx: AgentContext, consumer: str, topic: str, cls: type[R], event: Any) -> R | None:
    """Decode ``event.value`` as ``cls``; on failure dead-letter it and return None.

    The worker never crashes on bad input: the reason, the original bytes and
    the source coordinates go to the dead-letter topic, a metric counts it.
    """
    RECORDS_IN.labels(consumer, topic).inc()
    msg = event.message
    try:
        if msg.value is None:
            raise RecordError(ErrorReason.INVALID_VALUE, "empty message value (tombstone)")
        return codec_for(cls).decode(msg.value)
    except Exception as exc:
        err = exc
    reason = err.reason.value if isinstance(err, RecordError) else ErrorReason.INVALID_VALUE.value
    DEAD_LETTERS.labels(consumer, topic, reason).inc()
    log.warning("dead_letter", consumer=consumer, topic=topic, partition=msg.partition, offset=msg.offset,
                reason=reason, detail=str(err)[:200])
    await ctx.dead_letter(
        dead_letter_for(
            consumer=consumer, topic=topic, partition=msg.partition, offset=msg.offset, key=msg.key,
            value=msg.value, error=err, ts_event=int(msg.timestamp * 1e9) if msg.timestamp else 0,
            ts_init=ctx.wall_clock(),
        )
    )
    return None
