"""Consumer runner: read a batch, apply it in one DB transaction with its inbox rows, commit the
Kafka offsets only after that transaction commits. Poison messages go to the dead-letter topic
with their error and the consumer carries on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger import metrics, retry
from opsledger.bus import inbox
from opsledger.bus.deadletter import DeadLetter, send_dead_letters
from opsledger.bus.outbox import Outbox
from opsledger.bus.producer import EVENT_TYPE_HEADER
from opsledger.events.envelope import Envelope
from opsledger.events.registry import (
    EventPayload,
    InvalidPayload,
    UnknownEventType,
    UnsupportedSchemaVersion,
    registry,
)
from opsledger.logs import log_context
from opsledger.settings import ServiceSettings

log = logging.getLogger(__name__)

# Records decoded between two looks at the batch in hand (about 1.5 ms of work).
DECODE_SLICE = 100
MAX_PARTITION_FETCH_BYTES = 1024 * 1024
# With a linger, the broker answers a fetch early once it holds this much (a few hundred events).
LINGER_MIN_BYTES = 256 * 1024
# How a Delivery's decode_error begins, by cause.
UNKNOWN_EVENT = "unknown event"
INVALID_PAYLOAD = "invalid payload"


@dataclass
class Delivery:
    """One consumed event with where it stands in the log. `payload` is None, and `decode_error`
    says why, for an unknown type or a newer schema version (delivered only to consumers that set
    accept_unknown) or a payload that does not match its schema (only with accept_invalid)."""

    record: ConsumerRecord
    envelope: Envelope
    payload: EventPayload | None
    decode_error: str | None = None

    @property
    def position(self) -> tuple[str, int, int]:
        return self.record.topic, self.record.partition, self.record.offset


Handler = Callable[[AsyncSession, Envelope, EventPayload | None], Awaitable[None]]
# A batch handler gets every fresh event of a batch at once (fewer round trips on replay); when
# the batch fails it is called again with one event at a time to isolate the poison one.
BatchHandler = Callable[[AsyncSession, list[Delivery]], Awaitable[None]]
# Positions a consumer applied last, read from its own tables: {(topic, partition): offset}.
StoredPositions = Callable[[], Awaitable[dict[tuple[str, int], int]]]
# Writes such positions into its own tables, in the transaction of the batch they close.
SavePositions = Callable[[AsyncSession, dict[tuple[str, int], int]], Awaitable[None]]


@dataclass
class ConsumerSpec:
    """What a service consumes: a name (its inbox key), the streams' topics, and a handler."""

    name: str
    topics: list[str]
    handler: Handler | None = None
    batch_handler: BatchHandler | None = None
    event_types: set[str] | None = None  # None: every type; else others are skipped cheaply
    accept_unknown: bool = False
    accept_invalid: bool = False  # e.g. an audit trail that must hold every event on the log
    group_id: str | None = None
    auto_offset_reset: str = "earliest"
    # When set, the consumer resumes after these positions instead of the group's committed
    # offsets (a read model that stores its position in the same transaction as its rows).
    stored_positions: StoredPositions | None = None
    # Called with the last offset per partition of every batch, whatever became of each record
    # (applied, duplicate, skipped or dead-lettered), so stored positions never lag behind.
    save_positions: SavePositions | None = None

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.batch_handler is None):
            raise ValueError(f"consumer {self.name}: give exactly one of handler or batch_handler")

    async def apply(self, session: AsyncSession, deliveries: list[Delivery]) -> None:
        if self.batch_handler is not None:
            await self.batch_handler(session, deliveries)
            return
        assert self.handler is not None
        for d in deliveries:
            with log_context(d.envelope):
                await self.handler(session, d.envelope, d.payload)


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Offsets not yet committed are committed while this consumer still owns their partitions."""

    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        with contextlib.suppress(Exception):  # the next owner then starts earlier; the inbox absorbs it
            await self.owner.commit_offsets()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class _ResumeFromStoredPositions(_CommitOnRevoke):
    async def on_partitions_assigned(self, assigned: Any) -> None:
        spec, consumer = self.owner.spec, self.owner.consumer
        assert spec.stored_positions is not None and consumer is not None
        # aiokafka starts fetching a new assignment from the group's offsets before this listener
        # is done: paused partitions are neither fetched nor returned until the seek is made.
        consumer.pause(*assigned)
        try:
            positions = await spec.stored_positions()
            for tp in assigned:
                if (tp.topic, tp.partition) in positions:
                    consumer.seek(tp, positions[(tp.topic, tp.partition)] + 1)
                else:
                    await consumer.seek_to_beginning(tp)
        finally:
            # On failure the group's offsets are the fallback (the inbox absorbs what repeats).
            consumer.resume(*assigned)


@dataclass
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    deadlettered: list[DeadLetter] = field(default_factory=list)


@dataclass
class _Fetched:
    """One poll's records, in the order they are applied, and what decoding them found."""

    batches: dict[TopicPartition, list[ConsumerRecord]]
    records: list[ConsumerRecord]
    decoded: list[Delivery]
    result: BatchResult


class EventConsumer:
    def __init__(
        self,
        spec: ConsumerSpec,
        settings: ServiceSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        producer: AIOKafkaProducer,
        outbox: Outbox | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.producer = producer  # for the dead-letter topic
        self.outbox = outbox
        self.group_id = spec.group_id or f"{settings.group_id}.{spec.name}"
        self.consumer: AIOKafkaConsumer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = time.monotonic()

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id=f"{self.settings.service_name}-{self.spec.name}",
            enable_auto_commit=False,
            auto_offset_reset=self.spec.auto_offset_reset,
            isolation_level="read_committed",
            # What a lagging consumer holds fetched per partition: at 4 MiB, a read model starved
            # through a 500 alerts/s storm held tens of MB of fetched events (reporting ended the
            # pipeline bench at 201 MB of RSS). The broker still returns a larger event whole.
            max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
            **_fetch_wait(self.settings.consumer_linger_ms),
        )
        await self.consumer.start()
        try:
            await self._await_partitions()
        except Exception:
            await self.stop()  # start() is retried: leave no client behind
            raise
        listener = _ResumeFromStoredPositions(self) if self.spec.stored_positions else _CommitOnRevoke(self)
        self.consumer.subscribe(self.spec.topics, listener=listener)

    async def _await_partitions(self, timeout: float = 30.0) -> None:
        """Wait until this client knows every topic's partitions. A consumer that joins its group
        while a topic just created has no partition metadata yet is assigned nothing until its next
        metadata refresh, five minutes later (seen in about one test run in six under load)."""
        assert self.consumer is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            missing = [t for t in self.spec.topics if not self.consumer.partitions_for_topic(t)]
            if not missing:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"no partition metadata for {missing} within {timeout:g}s")
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.commit_offsets()
            await self.consumer.stop()
            self.consumer = None

    async def commit_offsets(self) -> None:
        """Commit the offsets of the batches applied since the last commit."""
        pending, self._uncommitted = self._uncommitted, {}
        if pending and self.consumer is not None:
            try:
                await self.consumer.commit(pending)
            except Exception:
                # Kept for the next try, but only where this consumer still owns the partition.
                owned = self.consumer.assignment()
                self._uncommitted = {tp: o for tp, o in {**pending, **self._uncommitted}.items() if tp in owned}
                raise
        self._committed_at = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set; the batch in hand is finished and committed first.

        Behind a full batch, the next is fetched and decoded while the one in hand is applied: the
        decoding (CPU in this process) then overlaps the database's work on the batch before it,
        which is most of a replay's time. Nothing fetched is applied out of turn, and a batch
        fetched but never applied (a stop, a rebalance) is read again: its offsets were not
        committed."""
        assert self.consumer is not None, "start() first"
        ahead: asyncio.Task[_Fetched] | None = None
        try:
            while not stop.is_set():
                fetched = await (ahead or self._fetch())
                ahead = None
                if not fetched.records:
                    idle_for = time.monotonic() - self._committed_at
                    if self._uncommitted and idle_for >= self.settings.offset_commit_seconds:
                        with contextlib.suppress(Exception):  # tried again with the next batch
                            await self.commit_offsets()
                    continue
                if len(fetched.records) >= self.settings.consumer_batch_size:
                    # A full batch: more is waiting (a replay, a backlog). A smaller one means the
                    # consumer is keeping up: the poll after it then takes everything that came
                    # meanwhile in one batch, where fetching ahead would split it in smaller ones,
                    # each paying for a transaction (a quarter more latency at 200 alerts/s, measured).
                    ahead = asyncio.create_task(self._fetch(ahead=True))
                # The database (or broker) failing under us commits nothing: the same batch is tried
                # again after a wait, less the partitions a rebalance took away meanwhile.
                try:
                    await retry.forever(
                        functools.partial(self._process_assigned, fetched),
                        what=f"consumer {self.spec.name}: batch",
                        initial=0.2,
                        maximum=10.0,
                        until=stop,
                    )
                except Exception:
                    if stop.is_set():
                        return  # nothing of the batch committed: its offsets were not committed either
                    raise
                self._report_lag(fetched.batches)
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead

    async def _fetch(self, ahead: bool = False) -> _Fetched:
        """The next poll's records, decoded. `ahead`: while a batch is applied, so decoding pauses
        between slices to let that batch go on whenever its database answers."""
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=200, max_records=self.settings.consumer_batch_size)
        records = [r for tp in sorted(batches, key=lambda t: (t.topic, t.partition)) for r in batches[tp]]
        if not ahead:
            return _Fetched(batches, records, *self._decode(records))
        decoded, result = self._decode(records[:DECODE_SLICE])
        for start in range(DECODE_SLICE, len(records), DECODE_SLICE):
            await asyncio.sleep(0)
            more, also = self._decode(records[start : start + DECODE_SLICE])
            decoded += more
            result.skipped += also.skipped
            result.deadlettered += also.deadlettered
        return _Fetched(batches, records, decoded, result)

    async def _process_assigned(self, fetched: _Fetched) -> None:
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        if all(TopicPartition(r.topic, r.partition) in assigned for r in fetched.records):
            await self._process_decoded(fetched.records, fetched.decoded, fetched.result)
            return
        still = [r for r in fetched.records if TopicPartition(r.topic, r.partition) in assigned]
        if still:
            await self.process(still)

    async def process(self, records: Sequence[ConsumerRecord]) -> BatchResult:
        """Apply one batch: DB transaction (state + inbox + outbox) and DLQ; its offsets are
        committed with the next commit (see `offset_commit_seconds`)."""
        return await self._process_decoded(records, *self._decode(records))

    async def _process_decoded(
        self, records: Sequence[ConsumerRecord], decoded: list[Delivery], decoding: BatchResult
    ) -> BatchResult:
        started = time.perf_counter()
        # A copy: a batch tried again after a failure starts from what its decoding found.
        result = BatchResult(skipped=decoding.skipped, deadlettered=list(decoding.deadlettered))
        last: dict[tuple[str, int], int] = {}
        for r in records:
            last[(r.topic, r.partition)] = max(r.offset, last.get((r.topic, r.partition), -1))
        # A batch of skipped events only (most of them, for a service that wants a few types)
        # costs no transaction, unless its positions are stored.
        if decoded or result.deadlettered or self.spec.save_positions is not None:
            try:
                await self._apply(decoded, result, last, careful=False)
            except Exception:
                # Something in the batch failed: redo it event by event, each in a savepoint, so one
                # poison event costs only itself. (Dead letters already sent are not sent again.)
                result = BatchResult(skipped=decoding.skipped, deadlettered=result.deadlettered)
                await self._apply(decoded, result, last, careful=True)
        for (topic, partition), offset in last.items():
            self._uncommitted[TopicPartition(topic, partition)] = offset + 1
        if time.monotonic() - self._committed_at >= self.settings.offset_commit_seconds:
            await self.commit_offsets()
        name, service = self.spec.name, self.settings.service_name
        metrics.EVENTS_CONSUMED.labels(service, name, "applied").inc(result.applied)
        metrics.EVENTS_CONSUMED.labels(service, name, "duplicate").inc(result.duplicates)
        metrics.EVENTS_CONSUMED.labels(service, name, "skipped").inc(result.skipped)
        metrics.HANDLER_LATENCY.labels(service, name).observe(time.perf_counter() - started)
        return result

    def _decode(self, records: Sequence[ConsumerRecord]) -> tuple[list[Delivery], BatchResult]:
        result = BatchResult()
        decoded: list[Delivery] = []
        wanted = self._wanted_types
        for record in records:
            if wanted is not None and _declared_type(record) not in wanted:
                result.skipped += 1
                continue
            try:
                envelope = Envelope.from_bytes(record.value)
            except Exception as exc:  # not JSON, or not an envelope
                result.deadlettered.append(self._letter(record, f"malformed envelope: {exc}"))
                continue
            if self.spec.event_types is not None and envelope.event_type not in self.spec.event_types:
                result.skipped += 1
                continue
            try:
                decoded.append(Delivery(record, envelope, registry.decode(envelope)))
                continue
            except (UnknownEventType, UnsupportedSchemaVersion) as exc:
                error, accepted = f"{UNKNOWN_EVENT}: {type(exc).__name__}: {exc}", self.spec.accept_unknown
            except InvalidPayload as exc:
                error, accepted = f"{INVALID_PAYLOAD}: {exc}", self.spec.accept_invalid
            except Exception as exc:
                error, accepted = f"{INVALID_PAYLOAD}: {type(exc).__name__}: {exc}", self.spec.accept_invalid
            if accepted:
                decoded.append(Delivery(record, envelope, None, decode_error=error))
            else:
                # Parked, not dropped: after an upgrade it can be replayed from the DLQ.
                result.deadlettered.append(self._letter(record, error))
        return decoded, result

    @functools.cached_property
    def _wanted_types(self) -> frozenset[bytes | None] | None:
        """The `event_type` header values worth parsing (None: a record sent without the header)."""
        if self.spec.event_types is None:
            return None
        return frozenset({None, *(t.encode() for t in self.spec.event_types)})

    def _letter(self, record: ConsumerRecord, error: str) -> DeadLetter:
        where = f"{record.topic}:{record.partition}@{record.offset}"
        log.error("consumer %s: dead-lettering %s: %s", self.spec.name, where, error)
        origin = {
            "source.topic": record.topic,
            "source.partition": str(record.partition),
            "source.offset": str(record.offset),
            "consumer": self.group_id,
        }
        return DeadLetter(record.value, record.key or b"", error, origin)

    async def _apply(
        self, decoded: list[Delivery], result: BatchResult, last: dict[tuple[str, int], int], careful: bool
    ) -> None:
        async with self.sessionmaker() as session:
            async with session.begin():
                fresh = await inbox.claim(session, self.spec.name, [d.envelope.event_id for d in decoded])
                seen: set[uuid.UUID] = set()
                todo: list[Delivery] = []
                for item in decoded:
                    event_id = item.envelope.event_id
                    if event_id not in fresh or event_id in seen:
                        result.duplicates += 1
                        continue
                    seen.add(event_id)
                    todo.append(item)
                if not careful:
                    await self.spec.apply(session, todo)
                    result.applied += len(todo)
                else:
                    for item in todo:
                        if (error := await self._apply_with_retries(session, item)) is None:
                            result.applied += 1
                        else:
                            result.deadlettered.append(self._letter(item.record, error))
                # Dead letters are on the broker before the transaction (and its inbox rows) commit:
                # a crash in between re-sends a dead letter, it never drops one.
                await send_dead_letters(self.producer, self.settings, result.deadlettered, self.spec.name)
                result.deadlettered.clear()
                if self.spec.save_positions is not None:
                    await self.spec.save_positions(session, last)

    async def _apply_with_retries(self, session: AsyncSession, item: Delivery) -> str | None:
        """Apply one event in a savepoint, retrying with bounded backoff; the last error or None."""

        async def apply_once() -> None:
            async with session.begin_nested():
                await self.spec.apply(session, [item])

        what = f"consumer {self.spec.name}: {item.envelope.event_type} {item.envelope.event_id}"
        try:
            await retry.attempts(
                apply_once, what=what, count=self.settings.handler_max_attempts, initial=0.05, maximum=2.0
            )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _report_lag(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        assert self.consumer is not None
        for tp, recs in batches.items():
            high = self.consumer.highwater(tp)
            if high is not None and recs:
                metrics.CONSUMER_LAG.labels(
                    self.settings.service_name, self.spec.name, tp.topic, str(tp.partition)
                ).set(max(high - recs[-1].offset - 1, 0))


def _fetch_wait(linger_ms: int) -> dict[str, int]:
    """The broker answers a fetch once it has `fetch_min_bytes`, or after `fetch_max_wait_ms`.
    Without a linger: as soon as it has one event (aiokafka's defaults, kept). With one: when
    about a batch is there, else after the linger."""
    if linger_ms <= 0:
        return {"fetch_min_bytes": 1, "fetch_max_wait_ms": 500}
    return {"fetch_min_bytes": LINGER_MIN_BYTES, "fetch_max_wait_ms": linger_ms}


def _declared_type(record: ConsumerRecord) -> bytes | None:
    for name, value in record.headers or ():
        if name == EVENT_TYPE_HEADER:
            return bytes(value)
    return None
