"""The cluster drill's verdict and its words (no process started): each guarantee it checks can
fail, and a failed one is named; the real drill runs in tests/integration/test_cluster_drill.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from ops.drills.cluster import (
    DrillReport,
    GroupReport,
    LogReport,
    MemberReport,
    MetadataView,
    ProducerReport,
    VisibilityReport,
    _failures,
    render,
)

B0, B1 = "127.0.0.1:9001", "127.0.0.1:9002"


def passing() -> DrillReport:
    view = MetadataView(asked=B0, brokers=[f"111@{B0}"], leaders={0: 111}, controller=f"111@{B0}", coordinator=None)
    producer = ProducerReport(
        "failover", home=B0, attached=[(0.0, B0), (8.0, B1)], on_killed_broker=True, rebuilds=1,
        errors={"send: TimeoutError": 1}, first_failure_after_kill_s=3.0, resumed_after_s=3.1, went_on=True,
        acked_before_kill=250, acked_after_kill=300, failed_sends=1, longest_gap_s=3.1,
    )  # fmt: skip
    plain = ProducerReport(
        "plain", home=B0, attached=[(0.0, B0)], on_killed_broker=True, first_failure_after_kill_s=3.0,
        acked_before_kill=250, longest_gap_s=10.0,
    )  # fmt: skip
    member = MemberReport("member-0", home=B1, attached=[(0.0, B1)], went_on=True, delivered=800, commits=40)
    return DrillReport(
        options={},
        brokers=[B0, B1],
        pids={"broker-0": 1},
        killed=B0,
        kill_at_s=5.0,
        metadata_before=[view],
        metadata_after=[],
        visibility=VisibilityReport(100, {"n": 100}, {"n": 100}, {"same": 0, "other": 0}),
        producer=producer,
        plain_producer=plain,
        members=[member],
        group=GroupReport(
            formed_after_s=3.0,
            continued=True,
            undelivered=0,
            redelivered=0,
            rebalances_after_kill=1,
            latency_max_before_kill_s=0.1,
            latency_max_after_kill_s=7.0,
            latency_max_by_partition_before_kill_s={0: 0.1},
            latency_max_by_partition_after_kill_s={0: 7.0},
            committed_by_members={0: 800},
            committed_on_survivor={0: 800},
            committed_survived=True,
        ),
        log=LogReport(B1, records=800, acknowledged=800, lost=0, lost_examples=[], duplicates=0),
        client_log={"ERROR Unable to update metadata from %s": 120},
        seconds=30.0,
        failures=[],
    )


def test_every_guarantee_held_then_no_failure_and_the_verdict_says_so() -> None:
    r = passing()
    assert _failures(r) == [] and r.ok and r.to_json()["ok"] is True
    text = render(r)
    assert "verdict: every guarantee held" in text
    assert "plain producer: 250 acked before the kill, 0 after" in text and "never going again" in text
    assert "failover producer" in text and "going again at 3.10 s" in text


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: dataclasses.replace(r, log=dataclasses.replace(r.log, lost=2, lost_examples=["plain:7 at 0/7"])),
         "2 acknowledged records missing from the log (plain:7 at 0/7)"),
        (lambda r: dataclasses.replace(r, producer=dataclasses.replace(r.producer, went_on=False)),
         "the failover producer never had a send acknowledged after the kill"),
        (lambda r: dataclasses.replace(r, group=dataclasses.replace(r.group, formed_after_s=None)),
         "the consumer group never formed"),
        (lambda r: dataclasses.replace(r, group=dataclasses.replace(r.group, continued=False)),
         "the consumer group delivered no record produced after the kill"),
        (lambda r: dataclasses.replace(r, group=dataclasses.replace(r.group, undelivered=5)),
         "5 acknowledged records never delivered to the group"),
        (lambda r: dataclasses.replace(r, group=dataclasses.replace(r.group, committed_survived=False)),
         "committed offsets {0: 800} not all served by a survivor"),
        (lambda r: dataclasses.replace(r, visibility=dataclasses.replace(r.visibility, unread={"same": 0, "other": 3})),
         "not readable within 15 s: {'same': 0, 'other': 3}"),
    ],
)  # fmt: skip
def test_a_guarantee_that_did_not_hold_then_named_in_the_failures_and_the_verdict(
    change: Callable[[DrillReport], DrillReport], named: str
) -> None:
    r = change(passing())
    r.failures = _failures(r)
    assert len(r.failures) == 1 and named in r.failures[0] and not r.ok
    assert "verdict: FAILED: " in render(r) and named in render(r)
