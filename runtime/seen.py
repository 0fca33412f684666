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
    duplicate), True for a new one. With ``refresh_on_hit`` a repeated id
    becomes the newest again (a window of recently *seen* ids rather than of
    first sightings). Iteration is oldest first, so the set round-trips
    through a checkpoint as a list in the same order; the object itself
    pickles as its ids, capacity and policy.
    """

    __slots__ = ("_ids", "capacity", "refresh_on_hit")

    def __init__(self, capacity: int, ids: Iterable[K] = (), *, refresh_on_hit: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.refresh_on_hit = refresh_on_hit
        self._ids: OrderedDict[K, None] = OrderedDict()
        for key in ids:
            self.add(key)

    def add(self, key: K) -> bool:
        if key in self._ids:
            if self.refresh_on_hit:
                self._ids.move_to_end(key)
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
