"""A bounded, insertion-ordered set of ids already handled (redelivery dedupe)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

__all__ = ["SeenIds"]


class SeenIds(Generic[K]):
    """Remembers the last ``capacity`` ids; the oldest is forgotten first.

    ``add`` returns False for an id already held (the caller skips the
    duplicate), True for a new one. Iteration is oldest first, so the set
    round-trips through a checkpoint as a list in the same order.
    """

    __slots__ = ("_ids", "capacity")

    def __init__(self, capacity: int, ids: Iterable[K] = ()) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._ids: OrderedDict[K, None] = OrderedDict()
        for key in ids:
            self.add(key)

    def add(self, key: K) -> bool:
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[K]:
        return iter(self._ids)
