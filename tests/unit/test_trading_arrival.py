"""The trading agent's inputs merged by broker timestamp across fetches (agents/trading/arrival.py):
a partition that ran ahead waits for one that is behind, never longer than the bound; a partition
caught up with the broker holds nothing back; every record comes out once, each partition's in order."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from agents.trading.arrival import ArrivalMerge

SIG, BAR = TopicPartition("signals", 0), TopicPartition("market.bars", 0)


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    timestamp: int


def msgs(tp: TopicPartition, stamps: list[int], first: int = 0) -> list[Msg]:
    return [Msg(tp.topic, tp.partition, first + i, ts) for i, ts in enumerate(stamps)]


def stamps(records: list[Msg]) -> list[int]:
    return [r.timestamp for r in records]


def test_a_partition_ahead_then_its_later_records_wait_for_the_one_behind() -> None:
    merge = ArrivalMerge()
    behind = {BAR: True, SIG: False}
    first = merge.take({SIG: msgs(SIG, [1, 3, 5, 7, 9]), BAR: msgs(BAR, [2, 4])}, [SIG, BAR], behind.get, 0.0)
    assert stamps(first) == [1, 2, 3, 4]  # signals 5, 7, 9 wait: the bars' next record may be earlier
    second = merge.take({BAR: msgs(BAR, [6, 8], first=2)}, [SIG, BAR], behind.get, 0.01)
    assert stamps(second) == [5, 6, 7, 8]
    behind[BAR] = False  # caught up: nothing earlier than 9 can come
    assert stamps(merge.take({}, [SIG, BAR], behind.get, 0.02)) == [9]
    assert not merge.held and merge.since is None


def test_a_partition_behind_with_nothing_fetched_then_everything_waits_at_most_the_bound() -> None:
    merge = ArrivalMerge(max_hold_s=0.1)
    batch = {SIG: msgs(SIG, [1, 2, 3])}
    assert merge.take(batch, [SIG, BAR], lambda tp: tp == BAR, 5.0) == []
    assert merge.take({}, [SIG, BAR], lambda tp: tp == BAR, 5.05) == []
    assert stamps(merge.take({}, [SIG, BAR], lambda tp: tp == BAR, 5.2)) == [1, 2, 3]  # past 100 ms: released


def test_every_partition_caught_up_then_nothing_is_held() -> None:
    merge = ArrivalMerge()
    out = merge.take({SIG: msgs(SIG, [1, 5, 9]), BAR: msgs(BAR, [2, 3])}, [SIG, BAR], lambda tp: False, 0.0)
    assert stamps(out) == [1, 2, 3, 5, 9]  # the merge of the fetch, as it comes
    assert not merge.held and merge.since is None


def test_reset_then_nothing_held() -> None:
    merge = ArrivalMerge()
    merge.take({SIG: msgs(SIG, [1, 9]), BAR: msgs(BAR, [2])}, [SIG, BAR], lambda tp: True, 0.0)
    assert merge.held
    merge.reset()
    assert not merge.held and merge.since is None


@given(
    sig=st.lists(st.integers(0, 50), max_size=30).map(sorted),
    bar=st.lists(st.integers(0, 50), max_size=30).map(sorted),
    cuts=st.lists(st.integers(0, 30), min_size=4, max_size=4),
)
def test_any_fetch_pattern_then_each_record_once_in_timestamp_order(
    sig: list[int], bar: list[int], cuts: list[int]
) -> None:
    """A backlog on two partitions fetched in arbitrary chunks (a partition is behind while records of it
    remain unfetched): each record comes out exactly once, each partition's in offset order, all of them
    in timestamp order, as if there had been one fetch."""
    streams = {SIG: msgs(SIG, sig), BAR: msgs(BAR, bar)}
    a, b = sorted(cuts[:2]), sorted(cuts[2:])
    fetches = [
        {SIG: streams[SIG][: a[0]], BAR: streams[BAR][: b[0]]},
        {SIG: streams[SIG][a[0] : a[1]], BAR: streams[BAR][b[0] : b[1]]},
        {SIG: streams[SIG][a[1] :], BAR: streams[BAR][b[1] :]},
    ]
    merge = ArrivalMerge(max_hold_s=10.0)
    out: list[Msg] = []
    fetched = {SIG: 0, BAR: 0}
    for i, fetch in enumerate(fetches):
        for tp, recs in fetch.items():
            fetched[tp] += len(recs)
        flags = {tp: fetched[tp] < len(streams[tp]) for tp in streams}
        out += merge.take({tp: r for tp, r in fetch.items() if r}, [SIG, BAR], flags.get, float(i))
    out += merge.take({}, [SIG, BAR], lambda tp: False, 3.0)  # caught up: all released
    assert sorted(out, key=lambda r: (r.topic, r.offset)) == sorted(
        streams[SIG] + streams[BAR], key=lambda r: (r.topic, r.offset)
    )
    for tp in (SIG, BAR):
        offsets = [r.offset for r in out if r.topic == tp.topic]
        assert offsets == sorted(offsets)
    assert stamps(out) == sorted(stamps(out))
