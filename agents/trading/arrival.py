"""The trading agent's inputs in broker-timestamp order across fetches.

A fetch returns each partition's records in offset order, but how far each partition has got
depends on its own fetches: catching up on a backlog, one topic can run hundreds of records ahead
of another. Merging only within a fetch would then apply signals before bars that reached the
broker before them. :class:`ArrivalMerge` holds back the records later than a bound until the
other partitions have caught up with them:

- a partition that is *behind* (its fetched position below the broker's high watermark as of
  the last fetch) bounds the merge by its last pending record's timestamp, or, with none pending,
  holds everything back: its next record may be earlier;
- a partition caught up with the broker imposes no bound: what it receives next reaches the
  broker later (live, every input is caught up, so nothing is ever held);
- nothing is held longer than ``max_hold_s`` (a bound on the latency it may add).

Records are handed out in ``heapq.merge`` order (ties: the sorted topic-partition order), each
partition's in offset order. Pure: no broker, no clock of its own (``now`` is passed in).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition

__all__ = ["HOLD_MAX_S", "ArrivalMerge"]

#: The longest a record waits for a partition that is behind (seconds).
HOLD_MAX_S = 0.1


class _Msg(Protocol):
    @property
    def timestamp(self) -> int: ...


def _ts(record: _Msg) -> int:
    """The broker timestamp (ms; none: 0, first)."""
    return record.timestamp if record.timestamp > 0 else 0


class ArrivalMerge:
    """Held-back records per partition, and the rule that releases them (module docstring)."""

    def __init__(self, max_hold_s: float = HOLD_MAX_S) -> None:
        self.max_hold_s = max_hold_s
        self.held: dict[Any, list[Any]] = {}
        #: when the records held now began to be held (None: nothing held)
        self.since: float | None = None

    def take(
        self,
        batch: Mapping[Any, Sequence[Any]],
        partitions: Iterable[Any],
        behind: Callable[[Any], bool],
        now: float,
    ) -> list[Any]:
        """The records of ``batch`` and those held before that may be applied now, in order; the rest
        are held. ``partitions``: every input partition; ``behind(tp)``: whether ``tp`` has records
        on the broker past those fetched."""
        pending = {tp: self.held.get(tp, []) + list(batch.get(tp, ())) for tp in set(self.held) | set(batch)}
        pending = {tp: recs for tp, recs in pending.items() if recs}
        self.held = {}
        if not pending:
            self.since = None
            return []
        order = sorted(pending)
        merged = list(heapq.merge(*(pending[tp] for tp in order), key=_ts))
        expired = self.since is not None and now - self.since >= self.max_hold_s
        if expired:
            self.since = None
            return merged
        lagging = [tp for tp in partitions if behind(tp)]
        cut = len(merged)
        if any(tp not in pending for tp in lagging):
            cut = 0
        elif lagging:
            bound = min(_ts(pending[tp][-1]) for tp in lagging)
            while cut and _ts(merged[cut - 1]) > bound:
                cut -= 1
        for rec in merged[cut:]:
            self.held.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
        if not self.held:
            self.since = None
        elif self.since is None:
            self.since = now
        return merged[:cut]

    def reset(self) -> None:
        """Forget what is held (a new assignment: the records are fetched again from the state's position)."""
        self.held = {}
        self.since = None
