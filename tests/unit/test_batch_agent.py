"""The getmany agents' partitioning: a keyed output goes where every other producer of the platform sends
the same key (aiokafka's ``DefaultPartitioner``, the Java client's murmur2)."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from runtime.batch_agent import _key_index


@given(key=st.binary(min_size=0, max_size=64), n=st.integers(1, 64))
def test_cached_key_index_then_the_partition_default_partitioner_picks(key: bytes, n: int) -> None:
    partitions = list(range(100, 100 + n))
    assert partitions[_key_index(key, n)] == DefaultPartitioner()(key, partitions, partitions)
    assert partitions[_key_index(key, n)] == DefaultPartitioner()(key, partitions, partitions)  # a cache hit too
