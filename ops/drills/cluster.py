"""The local cluster drill: several tansu brokers over one object store, one SIGKILLed while clients run.

What it starts, all on 127.0.0.1 under one data dir: a SeaweedFS object store
(:class:`~ops.embedded.objectstore.EmbeddedObjectStore`) and ``brokers`` tansu processes on
``s3://BUCKET/`` of it, each with its own listener and advertised listener. First, all brokers up, it
measures how soon a record written through one broker can be read through it and through another
(:func:`visibility`). Then, at once:

- the **failover producer**: aiokafka, ``acks=all``, bootstrap = every broker. A send that fails or is
  not acknowledged within ``op_timeout_s`` makes it close its client, bootstrap a new one from the list
  (a dead broker refuses the connection, the next one answers) and send the same record again;
- the **plain producer**: the same traffic from a stock aiokafka producer that is never rebuilt: what
  a client does by itself;
- ``members`` **consumer-group members**, member *i* bootstrapping from the list rotated by *i*, so
  that they talk to different brokers; each commits after every batch and probes its coordinator
  (``committed()``) every second; a probe or commit unanswered within ``op_timeout_s`` (or failing
  other than by a rebalance) makes it rebuild itself the same way.

Once the group has formed and traffic ran ``before_s`` seconds, the broker the failover producer is
attached to gets SIGKILL; traffic goes on for ``after_s`` seconds, then the producers stop and the
members drain (at most ``drain_s``). A fresh client on a surviving broker then reads the topic from
the beginning and the group's committed offsets. :class:`DrillReport` is what was measured: what each
broker advertises, the gap each producer saw and whether it resumed (through which broker), whether the
group went on, acknowledged records missing from the log, committed offsets as the survivors serve
them, every client error and every aiokafka warning line. It states facts, not hopes: a guarantee that
does not hold is a failed check in ``failures`` (exit 1), never left out.

Why the failover clients rebuild themselves: tansu 0.6 has no cluster membership. Every broker
answers metadata with one broker, itself, as node 111, leader of every partition and coordinator of
every group; brokers share state only through the object store (conditional writes). A stock aiokafka
client only ever asks the nodes of its last metadata for new metadata, so when its broker dies it keeps
asking the dead address and never returns to the bootstrap list. The platform's workers get the same
effect from the watchdog (exit 3) and the supervisor's restart. Measured figures: docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import CommitFailedError, IllegalGenerationError, RebalanceInProgressError

from ops.embedded.broker import EmbeddedBroker
from ops.embedded.objectstore import EmbeddedObjectStore, ObjectStoreConfig

__all__ = ["DrillOptions", "DrillReport", "render", "run_drill"]

log = structlog.get_logger("ops.drills.cluster")

#: errors a group member sees while the group rebalances: the member is fine, its broker too
_REBALANCE_ERRORS = (CommitFailedError, IllegalGenerationError, RebalanceInProgressError)


@dataclass(frozen=True)
class DrillOptions:
    brokers: int = 3
    partitions: int = 3
    members: int = 3
    #: records per second from each producer
    rate: float = 50.0
    #: steady traffic before the kill (counted from when the group has formed)
    before_s: float = 5.0
    #: traffic after the kill
    after_s: float = 10.0
    #: most seconds the members get after the producers stopped to consume what was acknowledged
    drain_s: float = 20.0
    #: a client request not answered within this counts as failed (the failover clients rebuild)
    op_timeout_s: float = 3.0
    session_timeout_ms: int = 6_000
    #: where the object store and broker logs live (None: a temporary dir, removed afterwards)
    data_dir: Path | None = None
    bucket: str = "tansu"
    topic: str = "drill.cluster"
    group: str = "drill-cluster"

    def __post_init__(self) -> None:
        if self.brokers < 2:
            raise ValueError("a cluster drill needs at least 2 brokers")
        if self.members < 1 or self.partitions < 1 or self.rate <= 0:
            raise ValueError("members, partitions and rate must be positive")


# ---------------------------------------------------------------------------
# What was measured
# ---------------------------------------------------------------------------


@dataclass
class MetadataView:
    """What one broker answers to a metadata request and a group-coordinator lookup."""

    asked: str
    #: ``node@host:port`` of every broker it advertises
    brokers: list[str]
    #: partition -> leader node id
    leaders: dict[int, int]
    controller: str | None
    coordinator: str | None


@dataclass
class ClientReport:
    name: str
    #: the broker it bootstrapped from first (rebuilds use the whole list)
    home: str = ""
    #: (seconds since traffic began, broker address) every time it (re)attached
    attached: list[tuple[float, str]] = field(default_factory=list)
    #: it was attached to the broker that was killed
    on_killed_broker: bool = False
    rebuilds: int = 0
    #: ``operation: exception class`` -> count
    errors: dict[str, int] = field(default_factory=dict)
    #: ``operation: exception class`` -> the first message
    error_examples: dict[str, str] = field(default_factory=dict)
    #: kill -> its first failure after the kill (None: none)
    first_failure_after_kill_s: float | None = None
    #: kill -> its first success after that failure (an ack, a delivery); None: no failure, or never again
    resumed_after_s: float | None = None
    #: it succeeded after the kill (whether the kill touched it or not)
    went_on: bool = False


@dataclass
class ProducerReport(ClientReport):
    acked_before_kill: int = 0
    acked_after_kill: int = 0
    #: sends that failed or were not acknowledged in time (each retried until acknowledged or the end)
    failed_sends: int = 0
    #: longest silence between two acknowledgements (to the end of the traffic when none came again)
    longest_gap_s: float = 0.0


@dataclass
class MemberReport(ClientReport):
    delivered: int = 0
    commits: int = 0
    rebalance_errors: int = 0
    #: (seconds, partitions) at every assignment
    assignments: list[tuple[float, list[int]]] = field(default_factory=list)


@dataclass
class GroupReport:
    formed_after_s: float | None
    #: records acknowledged after the kill were delivered to the group
    continued: bool
    #: acknowledged records never delivered to any member
    undelivered: int
    #: records delivered more than once (at-least-once after a rebalance)
    redelivered: int
    #: assignments after the kill, all members together
    rebalances_after_kill: int
    #: acknowledgement -> first delivery, the worst case of the records acknowledged between the
    #: group forming and the kill, and of those acknowledged after the kill
    latency_max_before_kill_s: float | None
    latency_max_after_kill_s: float | None
    #: the same per partition: which partitions the kill (and the rebalance after it) held up
    latency_max_by_partition_before_kill_s: dict[int, float]
    latency_max_by_partition_after_kill_s: dict[int, float]
    #: partition -> the highest offset a member committed (a broker acknowledged the commit)
    committed_by_members: dict[int, int]
    #: partition -> the committed offset a survivor serves after the drill
    committed_on_survivor: dict[int, int | None]
    #: every offset a member committed is served by the survivors (>=: later commits are fine)
    committed_survived: bool


@dataclass
class VisibilityReport:
    """Before the drill proper, all brokers up: how soon a record written through one broker can be
    read through it and through another (plain consumers reading the partition as it grows)."""

    records: int
    #: acknowledgement -> first read (n, p50, p90, max seconds)
    same_broker_s: dict[str, float]
    other_broker_s: dict[str, float]
    #: records not read within the wait, per reader (``same``, ``other``)
    unread: dict[str, int]


@dataclass
class LogReport:
    read_via: str
    records: int
    acknowledged: int
    #: acknowledged records absent from the log read back (partition, offset and value)
    lost: int
    lost_examples: list[str]
    #: records in the log twice (a send retried after a timeout that had in fact been written)
    duplicates: int


@dataclass
class DrillReport:
    options: dict[str, Any]
    brokers: list[str]
    pids: dict[str, int]
    killed: str
    kill_at_s: float
    metadata_before: list[MetadataView]
    metadata_after: list[MetadataView]
    visibility: VisibilityReport
    producer: ProducerReport
    plain_producer: ProducerReport
    members: list[MemberReport]
    group: GroupReport
    log: LogReport
    #: aiokafka's warning and error lines, ``LEVEL message template`` -> count
    client_log: dict[str, int]
    seconds: float
    #: the guarantees that did not hold (empty: the drill passed)
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)


def _attached(client: Any) -> str:
    """``host:port`` of the brokers a client's metadata names (tansu advertises only itself)."""
    brokers = sorted(f"{b.host}:{b.port}" for b in client.cluster.brokers())
    return ",".join(brokers) or "?"


class _Client:
    """What the producers and members share: where they attach, their failures and successes in time.

    The first bootstrap is from ``home`` alone, so that the drill knows which client talks to which
    broker (aiokafka shuffles a bootstrap list); every rebuild bootstraps from the whole list.
    """

    report: ClientReport

    def __init__(self, home: str, hosts: Sequence[str], opts: DrillOptions, clock: _Clock) -> None:
        self.hosts, self.opts, self.clock = list(hosts), opts, clock
        self.report.home = home
        self.failure_times: list[float] = []
        self.success_times: list[float] = []

    @property
    def bootstrap(self) -> str:
        return self.report.home if not self.report.attached else ",".join(self.hosts)

    @property
    def attached(self) -> str:
        return self.report.attached[-1][1] if self.report.attached else "?"

    def failed(self, op: str, exc: BaseException) -> None:
        self.failure_times.append(self.clock.now())
        name = f"{op}: {type(exc).__name__}"
        self.report.errors[name] = self.report.errors.get(name, 0) + 1
        self.report.error_examples.setdefault(name, (str(exc) or repr(exc))[:300])

    def summarise_client(self, kill_at: float, killed: str) -> None:
        r = self.report
        r.on_killed_broker = any(addr == killed for t, addr in r.attached if t <= kill_at)
        after = [t for t in self.success_times if t >= kill_at]
        r.went_on = bool(after)
        failure = next((t for t in self.failure_times if t >= kill_at), None)
        if failure is not None:
            r.first_failure_after_kill_s = round(failure - kill_at, 3)
            back = next((t for t in after if t > failure), None)
            r.resumed_after_s = None if back is None else round(back - kill_at, 3)


@dataclass(frozen=True)
class _Ack:
    t: float
    seq: int
    partition: int
    offset: int


class _Producer(_Client):
    """``rate`` records a second, ``name:seq``, each retried until acknowledged; ``failover``: a
    failed or unanswered send makes it close its client and bootstrap a new one from the list."""

    def __init__(
        self, name: str, home: str, hosts: Sequence[str], opts: DrillOptions, clock: _Clock, failover: bool
    ) -> None:
        self.report = ProducerReport(name)
        super().__init__(home, hosts, opts, clock)
        self.failover = failover
        self.failed_sends = 0
        self.acks: list[_Ack] = []
        #: when the traffic stopped (seconds since it began)
        self.end = 0.0
        self._producer: Any = None

    async def start(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=0,
                request_timeout_ms=int(self.opts.op_timeout_s * 1000),
                client_id=self.report.name,
            )
            try:
                await asyncio.wait_for(producer.start(), 3 * self.opts.op_timeout_s)
            except Exception as exc:  # no broker answered (yet): note it, try again
                self.failed("start", exc)
                await _close(producer.stop(), self.opts)
                await asyncio.sleep(0.2)
                continue
            self._producer = producer
            self.report.attached.append((self.clock.now(), _attached(producer.client)))
            return True
        return False

    async def run(self, stop: asyncio.Event) -> None:
        seq, interval = 0, 1.0 / self.opts.rate
        due = time.monotonic()
        while not stop.is_set():
            if await self._send(seq, stop):
                seq += 1
            due = max(due + interval, time.monotonic() - 1.0)  # never a burst to catch up more than 1 s
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _send(self, seq: int, stop: asyncio.Event) -> bool:
        value = f"{self.report.name}:{seq}".encode()
        try:
            md = await asyncio.wait_for(
                self._producer.send_and_wait(self.opts.topic, value, key=str(seq).encode()), self.opts.op_timeout_s
            )
        except Exception as exc:  # a failed or unanswered send: what the client saw
            self.failed_sends += 1
            self.failed("send", exc)
            if self.failover:
                self.report.rebuilds += 1
                await _close(self._producer.stop(), self.opts)
                await self.start(stop)
            else:
                await asyncio.sleep(0.5)  # the stock client retries inside; do not spin on it
            return False
        now = self.clock.now()
        self.acks.append(_Ack(now, seq, md.partition, md.offset))
        self.success_times.append(now)
        return True

    async def stop(self) -> None:
        if self._producer is not None:
            await _close(self._producer.stop(), self.opts)

    def summarise(self, kill_at: float, killed: str) -> ProducerReport:
        self.summarise_client(kill_at, killed)
        r = self.report
        assert isinstance(r, ProducerReport)
        times = [a.t for a in self.acks]
        r.acked_after_kill = sum(1 for t in times if t >= kill_at)
        r.acked_before_kill = len(times) - r.acked_after_kill
        r.failed_sends = self.failed_sends
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if times:
            gaps.append(max(0.0, self.end - times[-1]))  # a silence to the end counts too
        r.longest_gap_s = round(max(gaps, default=0.0), 3)
        return r


@dataclass(frozen=True)
class _Delivery:
    t: float
    partition: int
    offset: int
    value: str


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, member: _Member) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        parts = sorted(tp.partition for tp in assigned)
        self.member.assignments.append((self.member.clock.now(), parts))


class _Member(_Client):
    """A consumer-group member: commits after every batch, probes its coordinator every second
    (``committed()``); a probe or commit unanswered in time, or failing other than by a rebalance,
    makes it close its client and bootstrap a new one from the list."""

    def __init__(self, name: str, home: str, hosts: Sequence[str], opts: DrillOptions, clock: _Clock) -> None:
        self.report = MemberReport(name)
        super().__init__(home, hosts, opts, clock)
        self.assignments: list[tuple[float, list[int]]] = []
        self.deliveries: list[_Delivery] = []
        #: partition -> highest committed offset (a broker acknowledged the commit)
        self.committed: dict[int, int] = {}
        self.commits = 0
        self.rebalance_errors = 0
        self._consumer: Any = None

    async def _start(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.opts.group,
                client_id=self.report.name,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self.opts.session_timeout_ms,
                heartbeat_interval_ms=1_000,
                fetch_max_wait_ms=100,
            )
            consumer.subscribe([self.opts.topic], listener=_Listener(self))
            try:
                await asyncio.wait_for(consumer.start(), 3 * self.opts.op_timeout_s)
            except Exception as exc:  # no broker answered (yet)
                self.failed("start", exc)
                await _close(consumer.stop(), self.opts)
                await asyncio.sleep(0.2)
                continue
            self._consumer = consumer
            # aiokafka has no public accessor for a consumer's cluster view
            self.report.attached.append((self.clock.now(), _attached(consumer._client)))
            return True
        return False

    async def run(self, stop: asyncio.Event) -> None:
        if not await self._start(stop):
            return
        probe_at = time.monotonic() + 1.0
        while not stop.is_set():
            op = "poll"
            try:
                batch = await asyncio.wait_for(self._consumer.getmany(timeout_ms=200), self.opts.op_timeout_s)
                if batch:
                    now = self.clock.now()
                    for tp, msgs in batch.items():
                        self.deliveries += [_Delivery(now, tp.partition, m.offset, m.value.decode()) for m in msgs]
                    self.success_times.append(now)
                    op = "commit"
                    offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                    await asyncio.wait_for(self._consumer.commit(offsets), self.opts.op_timeout_s)
                    self.commits += 1
                    for tp, off in offsets.items():
                        self.committed[tp.partition] = max(off, self.committed.get(tp.partition, 0))
                if time.monotonic() >= probe_at:
                    probe_at = time.monotonic() + 1.0
                    op = "probe"
                    await self._probe()
            except _REBALANCE_ERRORS as exc:  # the group moved on without this batch: it comes again
                self.rebalance_errors += 1
                self.failed(op, exc)
            except Exception as exc:
                self.failed(op, exc)
                if op != "probe" and await self._broker_answers():
                    continue  # its broker is there: a slow rebalance, not a lost broker
                self.report.rebuilds += 1  # the broker is lost to this member: rebuild from the list
                await _close(self._consumer.stop(), self.opts)
                if not await self._start(stop):
                    return

    async def _probe(self) -> None:
        """A metadata request through this member's own client: only the broker it is attached to can
        answer it (every tansu broker advertises only itself), whatever state the group is in."""
        await asyncio.wait_for(self._consumer._client.fetch_all_metadata(), self.opts.op_timeout_s)

    async def _broker_answers(self) -> bool:
        try:
            await self._probe()
        except Exception as exc:
            self.failed("probe", exc)
            return False
        return True

    async def stop(self) -> None:
        if self._consumer is not None:
            await _close(self._consumer.stop(), self.opts)

    def summarise(self, kill_at: float, killed: str) -> MemberReport:
        self.summarise_client(kill_at, killed)
        r = self.report
        assert isinstance(r, MemberReport)
        r.delivered, r.commits, r.rebalance_errors = len(self.deliveries), self.commits, self.rebalance_errors
        r.assignments = self.assignments
        return r


#: closes that did not finish in time: left to finish (or be cancelled when the drill's loop ends)
_ABANDONED: set[asyncio.Task[Any]] = set()


async def _close(coro: Any, opts: DrillOptions) -> None:
    """Close a client whose broker may be gone, bounded: a producer first waits for its pending batch
    to expire (``op_timeout_s``), and aiokafka's consumer close can outlast a cancellation, so one
    that takes longer is left running and not awaited. Whatever it raises is no news."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=2 * opts.op_timeout_s + 1.0)
    if done:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            task.result()
    else:
        _ABANDONED.add(task)
        task.add_done_callback(_ABANDONED.discard)


# ---------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------


async def metadata_view(bootstrap: str, topic: str, group: str, timeout_s: float) -> MetadataView:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        md = await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
        leaders = {
            p: md.leader_for_partition(TopicPartition(topic, p)) for p in sorted(md.partitions_for_topic(topic) or ())
        }
        controller = md.controller
        coordinator: str | None = None
        with contextlib.suppress(Exception):
            node = await asyncio.wait_for(client.coordinator_lookup(0, group), timeout_s)  # 0: a group
            b = md.broker_metadata(node)
            coordinator = f"{node}@{b.host}:{b.port}" if b is not None else str(node)
        return MetadataView(
            asked=bootstrap,
            brokers=sorted(f"{b.nodeId}@{b.host}:{b.port}" for b in md.brokers()),
            leaders=leaders,
            controller=None if controller is None else f"{controller.nodeId}@{controller.host}:{controller.port}",
            coordinator=coordinator,
        )
    finally:
        await client.close()


async def read_log(
    bootstrap: str, topic: str, partitions: int, want: set[tuple[int, int]], timeout_s: float
) -> dict[tuple[int, int], str]:
    """(partition, offset) -> value of every record of ``topic`` read from the beginning through
    ``bootstrap``: until every wanted position was read (then a short drain) or ``timeout_s``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    out: dict[tuple[int, int], str] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, msgs in batch.items():
                out.update({(tp.partition, m.offset): m.value.decode() for m in msgs})
            if quiet_until is None and want <= out.keys():
                quiet_until = time.monotonic() + 1.0
            if quiet_until is not None and time.monotonic() >= quiet_until and not batch:
                break
    finally:
        await consumer.stop()
    return out


async def committed_offsets(
    bootstrap: str, topic: str, group: str, partitions: int, timeout_s: float
) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out: dict[int, int | None] = {}
        for p in range(partitions):
            out[p] = await asyncio.wait_for(consumer.committed(TopicPartition(topic, p)), timeout_s)
        return out
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), timeout_s)


class _LogCounter(logging.Handler):
    """aiokafka's warnings and errors, counted by level and message template (not each line)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.msg}"] += 1


@contextlib.contextmanager
def _captured_client_log() -> Any:
    logger = logging.getLogger("aiokafka")
    handler = _LogCounter()
    old = (logger.propagate, logger.level)
    logger.addHandler(handler)
    logger.propagate = False  # a dead broker makes aiokafka log several lines per second: counted here instead
    logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate, _ = old
        logger.setLevel(old[1])


# ---------------------------------------------------------------------------
# The drill
# ---------------------------------------------------------------------------


def run_drill(opts: DrillOptions, progress: Callable[[str], None] = lambda _: None) -> DrillReport:
    """Start the object store and brokers, run the drill, stop everything it started; the report."""
    t_start = time.monotonic()
    tmp = None if opts.data_dir is not None else Path(tempfile.mkdtemp(prefix="tradeflow-drill-"))
    data_dir = (opts.data_dir or tmp or Path()).resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    store = EmbeddedObjectStore(ObjectStoreConfig.prepare(data_dir), log_path=logs / "weed.log")
    brokers: list[EmbeddedBroker] = []
    try:
        store.start()
        store.ensure_bucket(opts.bucket)
        env = store.config.env_for_clients()
        for i in range(opts.brokers):
            b = EmbeddedBroker(log_path=logs / f"tansu-{i}.log", storage=f"s3://{opts.bucket}/", env=env)
            brokers.append(b.start())
        progress(
            f"object store {store.endpoint} (pid {store.pid}), brokers "
            + ", ".join(f"{b.bootstrap} (pid {b.proc.pid if b.proc else '?'})" for b in brokers)
        )
        with _captured_client_log() as client_log:
            report = asyncio.run(_drill(opts, store, brokers, progress))
        report.client_log = dict(client_log.counts.most_common())
        report.seconds = round(time.monotonic() - t_start, 1)
        return report
    finally:
        for b in brokers:
            b.stop()
        store.stop(grace_s=3.0)  # weed's filer waits ~15 s for its streams on SIGTERM; the drill's data is scratch
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


async def _drill(
    opts: DrillOptions, store: EmbeddedObjectStore, brokers: list[EmbeddedBroker], progress: Callable[[str], None]
) -> DrillReport:
    hosts = [b.bootstrap for b in brokers]
    pids = {f"broker-{i}": b.proc.pid for i, b in enumerate(brokers) if b.proc is not None}
    if store.pid is not None:
        pids["objectstore"] = store.pid
    await _serving(hosts, opts.op_timeout_s)
    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(hosts))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(opts.topic, opts.partitions, 1)])
    finally:
        await admin.close()
    before = [await metadata_view(h, opts.topic, opts.group, opts.op_timeout_s) for h in hosts]
    seen = await visibility(hosts[0], hosts[1], opts)
    progress(f"visibility: through the writing broker {seen.same_broker_s}, through another {seen.other_broker_s}")

    # the victim is brokers[0]: both producers and member-0 start on it, member i on brokers[i % n]
    victim = brokers[0]
    clock = _Clock()
    stop_producing, stop_consuming = asyncio.Event(), asyncio.Event()
    producer = _Producer("failover", victim.bootstrap, hosts, opts, clock, failover=True)
    plain = _Producer("plain", victim.bootstrap, hosts, opts, clock, failover=False)
    members = [_Member(f"member-{i}", hosts[i % len(hosts)], hosts, opts, clock) for i in range(opts.members)]
    tasks = [asyncio.create_task(m.run(stop_consuming)) for m in members]
    for p in (producer, plain):
        await p.start(stop_producing)
    producing = [asyncio.create_task(p.run(stop_producing)) for p in (producer, plain)]

    # the group has formed when the members together hold every partition and none is left out
    formed_after: float | None = None
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        latest = [m.assignments[-1][1] if m.assignments else [] for m in members]
        held = sorted(p for parts in latest for p in parts)
        if held == list(range(opts.partitions)) and sum(1 for parts in latest if parts) == min(
            len(members), opts.partitions
        ):
            formed_after = clock.now()
            break
        await asyncio.sleep(0.1)
    progress(f"group formed after {formed_after} s" if formed_after is not None else "group did not form in 60 s")
    await asyncio.sleep(opts.before_s)

    kill_at = clock.now()
    await asyncio.to_thread(victim.kill)
    progress(f"SIGKILL {victim.bootstrap} at {kill_at} s (both producers and member-0 are attached to it)")
    await asyncio.sleep(opts.after_s)
    stop_producing.set()
    producer.end = plain.end = clock.now()
    await asyncio.gather(*producing, return_exceptions=True)
    for p in (producer, plain):
        await p.stop()

    acks = {(a.partition, a.offset): f"{p.report.name}:{a.seq}" for p in (producer, plain) for a in p.acks}
    acked_values = set(acks.values())
    deadline = time.monotonic() + opts.drain_s
    while time.monotonic() < deadline and not acked_values <= {d.value for m in members for d in m.deliveries}:
        await asyncio.sleep(0.2)
    stop_consuming.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for m in members:
        await m.stop()
    progress("traffic stopped; reading back through a survivor")

    survivors = [b.bootstrap for b in brokers if b is not victim]
    after = [await metadata_view(h, opts.topic, opts.group, opts.op_timeout_s) for h in survivors]
    log_read = await read_log(survivors[0], opts.topic, opts.partitions, set(acks), 30.0)
    committed = await committed_offsets(survivors[0], opts.topic, opts.group, opts.partitions, opts.op_timeout_s)
    report = DrillReport(
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        brokers=hosts,
        pids=pids,
        killed=victim.bootstrap,
        kill_at_s=kill_at,
        metadata_before=before,
        metadata_after=after,
        visibility=seen,
        producer=producer.summarise(kill_at, victim.bootstrap),
        plain_producer=plain.summarise(kill_at, victim.bootstrap),
        members=[m.summarise(kill_at, victim.bootstrap) for m in members],
        group=_group(members, (producer, plain), kill_at, formed_after, committed),
        log=_log(acks, log_read, survivors[0]),
        client_log={},
        seconds=0.0,
        failures=[],
    )
    report.failures = _failures(report)
    return report


async def visibility(writer: str, other: str, opts: DrillOptions, records: int = 100) -> VisibilityReport:
    """Write ``records`` records through ``writer`` at the drill's rate into a topic of their own; read
    them as they come through ``writer`` and through ``other``; the delays (acknowledgement -> read)."""
    topic = f"{opts.topic}.visibility"
    admin = AIOKafkaAdminClient(bootstrap_servers=writer)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    acked: dict[int, float] = {}
    seen: dict[str, dict[int, float]] = {"same": {}, "other": {}}
    done = asyncio.Event()

    async def read(name: str, bootstrap: str) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while not done.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for msgs in batch.values():
                    for m in msgs:
                        seen[name].setdefault(int(m.value), now)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), opts.op_timeout_s)

    readers = [asyncio.create_task(read("same", writer)), asyncio.create_task(read("other", other))]
    producer = AIOKafkaProducer(bootstrap_servers=writer, acks="all", linger_ms=0)
    await producer.start()
    try:
        for seq in range(records):
            await producer.send_and_wait(topic, str(seq).encode())
            acked[seq] = time.monotonic()
            await asyncio.sleep(1.0 / opts.rate)
    finally:
        await producer.stop()
    deadline = time.monotonic() + 15.0  # tansu caches object-store reads for 5 s: a few cycles of it
    while time.monotonic() < deadline and not all(len(v) == records for v in seen.values()):
        await asyncio.sleep(0.1)
    done.set()
    await asyncio.gather(*readers, return_exceptions=True)
    delays = {k: [v[s] - acked[s] for s in v if s in acked] for k, v in seen.items()}
    return VisibilityReport(
        records=records,
        same_broker_s=_quantiles(delays["same"]),
        other_broker_s=_quantiles(delays["other"]),
        unread={k: records - len(v) for k, v in seen.items()},
    )


async def _serving(hosts: Sequence[str], timeout_s: float, within_s: float = 60.0) -> None:
    """Listening is not serving: on object storage, wait until every broker answers metadata."""
    deadline = time.monotonic() + within_s
    for h in hosts:
        while True:
            try:
                await metadata_view(h, "-", "-", timeout_s)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


def _log(acks: dict[tuple[int, int], str], log_read: dict[tuple[int, int], str], read_via: str) -> LogReport:
    lost = sorted(f"{v} at {p}/{o}" for (p, o), v in acks.items() if log_read.get((p, o)) != v)
    values = Counter(log_read.values())
    return LogReport(
        read_via=read_via,
        records=len(log_read),
        acknowledged=len(acks),
        lost=len(lost),
        lost_examples=lost[:10],
        duplicates=sum(n - 1 for n in values.values() if n > 1),
    )


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50": round(v[len(v) // 2], 3), "p90": round(v[int(len(v) * 0.9)], 3), "max": round(v[-1], 3)}


def _group(
    members: Sequence[_Member],
    producers: Sequence[_Producer],
    kill_at: float,
    formed_after: float | None,
    committed: dict[int, int | None],
) -> GroupReport:
    first: dict[str, float] = {}
    delivered: Counter[str] = Counter()
    for m in members:
        for d in m.deliveries:
            delivered[d.value] += 1
            first[d.value] = min(d.t, first.get(d.value, d.t))
    acked = {f"{p.report.name}:{a.seq}": (a.t, a.partition) for p in producers for a in p.acks}

    def worst(keep: Callable[[float], bool]) -> float | None:
        waits = [first[v] - t for v, (t, _) in acked.items() if keep(t) and v in first]
        return round(max(waits), 3) if waits else None

    def worst_by_partition(keep: Callable[[float], bool]) -> dict[int, float]:
        out: dict[int, float] = {}
        for v, (t, part) in acked.items():
            if keep(t) and v in first:
                out[part] = round(max(first[v] - t, out.get(part, 0.0)), 3)
        return dict(sorted(out.items()))

    formed = kill_at if formed_after is None else formed_after
    by_members: dict[int, int] = {}
    for m in members:
        for part, off in m.committed.items():
            by_members[part] = max(off, by_members.get(part, 0))
    return GroupReport(
        formed_after_s=formed_after,
        continued=any(v in first for v, (t, _) in acked.items() if t >= kill_at),
        undelivered=len(acked.keys() - delivered.keys()),
        redelivered=sum(n - 1 for n in delivered.values() if n > 1),
        rebalances_after_kill=sum(1 for m in members for t, _ in m.assignments if t >= kill_at),
        latency_max_before_kill_s=worst(lambda t: formed <= t < kill_at),
        latency_max_after_kill_s=worst(lambda t: t >= kill_at),
        latency_max_by_partition_before_kill_s=worst_by_partition(lambda t: formed <= t < kill_at),
        latency_max_by_partition_after_kill_s=worst_by_partition(lambda t: t >= kill_at),
        committed_by_members=by_members,
        committed_on_survivor=committed,
        committed_survived=all((committed.get(p) or -1) >= off for p, off in by_members.items()),
    )


def _failures(r: DrillReport) -> list[str]:
    """The guarantees the drill checks, each one that did not hold in words."""
    out = []
    if any(r.visibility.unread.values()):
        out.append(f"records written through one broker not readable within 15 s: {r.visibility.unread}")
    if r.log.lost:
        out.append(f"{r.log.lost} acknowledged records missing from the log ({', '.join(r.log.lost_examples[:3])})")
    if not r.producer.went_on:
        out.append("the failover producer never had a send acknowledged after the kill")
    if r.group.formed_after_s is None:
        out.append("the consumer group never formed")
    if not r.group.continued:
        out.append("the consumer group delivered no record produced after the kill")
    if r.group.undelivered:
        out.append(f"{r.group.undelivered} acknowledged records never delivered to the group")
    if not r.group.committed_survived:
        out.append(
            f"committed offsets {r.group.committed_by_members} not all served by a survivor "
            f"({r.group.committed_on_survivor})"
        )
    return out


# ---------------------------------------------------------------------------
# For people
# ---------------------------------------------------------------------------


def _errors(r: ClientReport) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items())) or "none"


def _course(r: ClientReport) -> str:
    """How a client fared at the kill, in words."""
    via = " -> ".join(a for _, a in r.attached)
    if r.first_failure_after_kill_s is None:
        fate = "untouched by the kill" if r.went_on else "silent after the kill"
    elif r.resumed_after_s is not None:
        fate = (
            f"first failure {r.first_failure_after_kill_s:.2f} s after the kill, "
            f"going again at {r.resumed_after_s:.2f} s"
        )
    else:
        fate = f"first failure {r.first_failure_after_kill_s:.2f} s after the kill, never going again"
    return f"brokers {via}; {fate}; rebuilds {r.rebuilds}; errors {_errors(r)}"


def render(r: DrillReport) -> str:
    """The report as a person reads it (``--json`` gives all of it)."""
    lines = [
        f"cluster drill: {len(r.brokers)} tansu brokers over one object store, {r.killed} SIGKILLed "
        f"{r.kill_at_s:.1f} s into the traffic ({r.seconds:.0f} s in all)",
        "metadata, as each broker answers it:",
        *(
            f"  {v.asked}: brokers {v.brokers}, leaders {v.leaders}, coordinator {v.coordinator}"
            for v in r.metadata_before
        ),
    ]
    for p in (r.producer, r.plain_producer):
        lines.append(
            f"{p.name} producer: {p.acked_before_kill} acked before the kill, {p.acked_after_kill} after, "
            f"longest gap {p.longest_gap_s:.2f} s; {_course(p)}"
        )
    for m in r.members:
        lines.append(
            f"{m.name}: {m.delivered} delivered, {m.commits} commits, assignments "
            + " ".join(f"{t:.1f}s:{parts}" for t, parts in m.assignments)
            + f"; {_course(m)}"
        )
    g, lg = r.group, r.log
    lines += [
        f"group: formed after {g.formed_after_s} s; "
        + ("went on after the kill" if g.continued else "did NOT go on after the kill")
        + f"; ack -> delivery worst {g.latency_max_before_kill_s} s before the kill "
        f"{g.latency_max_by_partition_before_kill_s}, {g.latency_max_after_kill_s} s after "
        f"{g.latency_max_by_partition_after_kill_s}; {g.rebalances_after_kill} assignments after the kill; "
        f"{g.undelivered} acknowledged records undelivered, {g.redelivered} redelivered",
        f"visibility (all brokers up): ack -> read through the writing broker {r.visibility.same_broker_s}, "
        f"through another broker {r.visibility.other_broker_s}; never read {r.visibility.unread}",
        f"committed offsets: members {g.committed_by_members}, survivor serves {g.committed_on_survivor} "
        f"({'survived' if g.committed_survived else 'NOT all survived'})",
        f"log via {lg.read_via}: {lg.records} records, {lg.acknowledged} acknowledged, {lg.lost} lost, "
        f"{lg.duplicates} duplicates",
        "aiokafka warnings/errors: " + ("; ".join(f"{k} x{v}" for k, v in list(r.client_log.items())[:6]) or "none"),
        "verdict: " + ("every guarantee held" if r.ok else "FAILED: " + "; ".join(r.failures)),
    ]
    return "\n".join(lines)
