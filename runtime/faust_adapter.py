"""The faust internals an agent that owns its input positions needs, in one place.

faust has no public API to choose where a consumer resumes, so this module
touches (faust-streaming 0.15; the dashboard's view uses it):

- ``Consumer.perform_seek``: faust's recovery calls it after every
  partition assignment to seek to the committed offsets; :func:`after_every_seek`
  wraps it so the agent seeks again, to the offsets of its own state.
- ``Consumer._committed_offset`` (private): faust commits a partition only
  contiguously from this bookkeeping; after a seek past it, :func:`seek` moves
  it along, or faust would never commit that partition again.

A faust upgrade that changes one of these breaks here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["after_every_seek", "seek"]

_HOOKS = "_tradeflow_seek_hooks"


def after_every_seek(consumer: Any, hook: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``hook(consumer)`` right after each of faust's own seeks. Idempotent per (consumer, hook);
    the hooks of several agents sharing a worker's consumer run in the order they were added."""
    hooks: list[Callable[[Any], Awaitable[None]]] | None = getattr(consumer, _HOOKS, None)
    if hooks is None:
        hooks = []
        original = consumer.perform_seek

        async def perform_seek() -> None:
            await original()
            for h in list(hooks):
                await h(consumer)

        consumer.perform_seek = perform_seek
        setattr(consumer, _HOOKS, hooks)
    if hook not in hooks:
        hooks.append(hook)


async def seek(consumer: Any, tp: Any, offset: int) -> None:
    """Seek ``tp`` to ``offset`` and keep faust's commit bookkeeping able to follow."""
    await consumer.seek(tp, offset)
    committed = consumer._committed_offset.get(tp)
    if committed is None or committed < offset:
        consumer._committed_offset[tp] = offset
