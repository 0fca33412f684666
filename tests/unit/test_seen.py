"""``runtime.seen.SeenIds``: the bounded seen-id set every redelivery dedupe uses."""

from __future__ import annotations

import pickle

import pytest

from runtime.seen import SeenIds


def test_new_and_repeated_ids_then_add_says_which_is_new() -> None:
    seen: SeenIds[str] = SeenIds(3)
    assert [seen.add(i) for i in ("a", "b", "a", "c", "b")] == [True, True, False, True, False]
    assert "a" in seen and "d" not in seen and len(seen) == 3


def test_over_capacity_then_oldest_first_sighting_forgotten() -> None:
    seen: SeenIds[str] = SeenIds(2)
    for i in ("a", "b", "a", "c"):  # the repeat of "a" does not make it newer
        seen.add(i)
    assert list(seen) == ["b", "c"]
    assert seen.add("a") is True  # forgotten, so new again


def test_refresh_on_hit_then_a_repeat_counts_as_newest() -> None:
    seen: SeenIds[str] = SeenIds(2, refresh_on_hit=True)
    assert [seen.add(i) for i in ("a", "b", "a", "c")] == [True, True, False, True]
    assert list(seen) == ["a", "c"]  # "b" was the least recently seen


def test_built_from_its_own_iteration_then_same_ids_in_same_order() -> None:
    seen: SeenIds[tuple[str, int]] = SeenIds(4, [("x", 1), ("y", 2), ("x", 1), ("z", 3), ("w", 4), ("v", 5)])
    assert list(seen) == [("y", 2), ("z", 3), ("w", 4), ("v", 5)]
    again = SeenIds(seen.capacity, seen)
    assert list(again) == list(seen) and again.capacity == 4


def test_pickled_then_ids_order_capacity_and_policy_kept() -> None:
    seen: SeenIds[str] = SeenIds(3, ["a", "b", "c"], refresh_on_hit=True)
    back = pickle.loads(pickle.dumps(seen, protocol=pickle.HIGHEST_PROTOCOL))
    assert (list(back), back.capacity, back.refresh_on_hit) == (["a", "b", "c"], 3, True)
    back.add("a")
    back.add("d")
    assert list(back) == ["c", "a", "d"]


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_then_refused(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        SeenIds(capacity)
