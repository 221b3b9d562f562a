"""Transactional outbox: events are written in the same DB transaction as the state they explain,
and a relay publishes them to Kafka in insertion order. A crash repeats a publish (the consumer's
inbox absorbs the duplicate) but never loses one. An event too large for its stream goes to the
dead-letter topic instead of holding back every event behind it.

One relay per database publishes at a time, so a second replica cannot interleave (and so
reorder) one incident's events: the relay holds the `outbox-relay` lease (opsledger.lease). Each
pass is one statement (renew the lease, mark sent the batch Kafka acknowledged last pass, read the
next batch), then a publish with no transaction or lock open while Kafka acknowledges. Events
staged on a replica that does not hold the lease wake the holder's relay when they commit (NOTIFY),
so they do not wait for its next poll."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger import metrics, retry
from opsledger.bus.deadletter import DeadLetter, send_dead_letters
from opsledger.bus.producer import EVENT_TYPE_HEADER, Message, send_all
from opsledger.bus.topics import MAX_EVENT_BYTES
from opsledger.db import Executor, after_commit, driver_connection, execute_write, pooled_driver
from opsledger.events.envelope import Envelope
from opsledger.events.registry import registry
from opsledger.lease import ACQUIRE_SQL, Lease
from opsledger.settings import ServiceSettings

log = logging.getLogger(__name__)

RELAY_LEASE = "outbox-relay"
# Purges run every PURGE_EVERY passes, each statement on its own (no long transaction), deleting at
# most a slice: inbox rows by their `processed_at` index, sent outbox rows oldest first by id (the
# order they were staged and sent in). A purge that deleted all it may leaves the next pass to go on.
PURGE_EVERY = 500
INBOX_PURGE_SLICE = 10_000
OUTBOX_PURGE_SLICE = 1_000
OUTBOX_PURGE_SLICES = 10
# Sent rows are kept a day for inspection. Only the oldest slice of sent rows is read, so a purge
# costs what it deletes, not the table: a day of a busy service's events is millions of rows, and the scan of
# them all that this replaced grew with every hour of the day (0.1-0.4 s at 90,000 rows).
_PURGE_OUTBOX = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM (SELECT id, sent_at FROM outbox WHERE sent_at IS NOT NULL"
    " ORDER BY id LIMIT $1) AS oldest WHERE sent_at < now() - interval '1 day')"
)
_PURGE_INBOX = (
    "DELETE FROM inbox WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM inbox"
    " WHERE processed_at < now() - make_interval(days => $1) LIMIT $2)"
)


# Where a replica whose relay does not hold the lease tells the holder's relay that it staged rows.
WAKE_CHANNEL = "opsledger_outbox"

# Rows keep the order of the arrays, so the relay publishes in the order the events were staged.
# The filter gives the transaction its id before the rows take theirs from the sequence: what lets
# the relay's scan start past the rows it has sent (`ReadFloor`).
_STAGE = (
    "INSERT INTO outbox (event_id, topic, key, value, event_type)"
    " SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::text[])"
    " WHERE pg_current_xact_id() IS NOT NULL{notify}"
    " ON CONFLICT (event_id) DO NOTHING"
)
# The same in a replica whose relay does not hold the lease: it also notifies the holder, which
# LISTENs (OutboxRelay.listen). PostgreSQL delivers the notification when the transaction commits,
# with its rows visible, and not at all if it rolls back: the holder passes at once, instead of at
# its next poll, for no round trip more. (A notifying commit holds a database-wide lock while it
# flushes, so a replica whose relay holds the lease does not notify, nor does a single replica.)
_STAGE_AND_NOTIFY = _STAGE.format(notify=f" AND (SELECT pg_notify('{WAKE_CHANNEL}', '')::text) IS NOT NULL")
_STAGE = _STAGE.format(notify="")


# A relay pass in one statement ($1-$3: the lease, $4: the ids the last pass published, $5: how
# many to read, $6: the read floor): renew the lease; if held, mark the last pass sent and read the
# next rows above the floor. The row with a null id says whether the lease is held, and carries the
# statement's snapshot and the pass's own transaction id. Every part sees that snapshot, hence the
# `<> ALL($4)`: the rows being marked still look unsent to the read.
# The pass commits without waiting for its WAL to reach the disk (`synchronous_commit` off for its
# own transaction): all it writes is the lease and the "sent" marks, and a database crash that
# loses them only re-publishes rows (the consumers' inboxes absorb them), as a crash between
# publishing and marking always could. Waiting for the flush cost each relay hop about 5 ms at
# 200 alerts/s (of 25-30), every service's relay, and it queued behind the commits that must wait.
_PASS = (
    f"WITH lease AS ({ACQUIRE_SQL}),"
    " marked AS (UPDATE outbox SET sent_at = now() WHERE id = ANY($4::bigint[]) AND EXISTS (SELECT FROM lease))"
    " SELECT NULL::bigint AS id, NULL::text AS topic, NULL::bytea AS key, NULL::bytea AS value,"
    " NULL::text AS event_type, EXISTS (SELECT FROM lease) AS held, pg_current_snapshot()::text AS snapshot,"
    " pg_current_xact_id()::text AS own_xid, set_config('synchronous_commit', 'off', true) AS commit_mode,"
    " pg_postmaster_start_time() AS server_started"
    " UNION ALL (SELECT id, topic, key, value, event_type, true, NULL, NULL, NULL, NULL FROM outbox"
    " WHERE sent_at IS NULL AND id > $6 AND id <> ALL($4::bigint[]) AND EXISTS (SELECT FROM lease)"
    " ORDER BY id LIMIT $5)"
)


class ReadFloor:
    """Where the relay's scan of unsent rows may start, so it does not walk every row it marked
    sent since the last vacuum: under load those dead entries of the unsent index cost a pass
    milliseconds of PostgreSQL's CPU, in every service.

    Ids come from a sequence, so a transaction can commit a row below one the relay already sent
    (it took its id first and committed later). Such a straggler had its transaction id before it
    took its row id (`_STAGE` sees to it), so before the sent row's snapshot was taken, and so
    below the id of the pass that read that snapshot (assigned during the pass, after it). Each
    pass therefore holds the floor at what had been sent before it, until a later snapshot's xmin
    (the oldest transaction still running) is past the pass's own id: every transaction that could
    straggle below what that pass read has then ended, and what it committed was visible to the
    pass that saw that xmin, above the floor still held; it goes out in id order with the rest
    (one incident's later rows have higher ids: its transactions are serialised by its row lock).
    The snapshot's list of running transactions is not enough: it leaves out those that took
    their id after the latest one to end, which are running too; a straggler among them was
    skipped (seen in CI: an alert answered 202 stayed off the log until a restart)."""

    def __init__(self) -> None:
        self.sent_through = 0  # every row up to this id is sent, but for stragglers below
        self._held_by: dict[int, int] = {}  # a pass's own transaction id -> the floor before it

    @property
    def value(self) -> int:
        return min(self._held_by.values(), default=self.sent_through)

    def passed(self, snapshot: str, own_xid: int, read: Sequence[int]) -> None:
        """Record a pass whose rows `read` (ids, ascending) were all published, under `snapshot`
        (pg_snapshot text, 'xmin:xmax:xid,xid,...') in transaction `own_xid`."""
        oldest_running = int(snapshot.split(":")[0])
        self._held_by = {x: floor for x, floor in self._held_by.items() if x > oldest_running}
        self._held_by.setdefault(own_xid, self.sent_through)
        if read:
            self.sent_through = max(self.sent_through, read[-1])

    def reset(self) -> None:
        """From the start again: after the lease was elsewhere, what was sent is not known here."""
        self.sent_through = 0
        self._held_by = {}


class EventTooLarge(ValueError):
    """An event larger than a stream takes: refused when staged, so the caller's transaction
    rolls back instead of committing an event that could never be published."""


class Outbox:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._wake = asyncio.Event()
        # Whether this process's relay held the lease at its last pass. Until it knows, staging
        # notifies (harmless: the relay that gets it passes once more); without it, its relay
        # passes every `relay_poll_seconds` to take the lease over once its holder is gone.
        self.relay_holds_lease = False

    def topic_for(self, envelope: Envelope) -> str:
        return self.settings.topic(registry.model(envelope.event_type).stream)

    async def add(self, session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
        """Stage events in the caller's transaction. An event id already staged is skipped, which
        is what makes re-deriving an event (same deterministic id) harmless."""
        if envelopes:
            await execute_write(session, *self._staging(envelopes))
            after_commit(session, self.wake)

    async def stage(self, conn: Executor, envelopes: Sequence[Envelope]) -> None:
        """`add` on a driver connection whose transaction the caller runs: it calls `wake` once
        that transaction has committed. One statement, prepared once, whatever the count."""
        if envelopes:
            await conn.execute(*self._staging(envelopes))

    def _staging(self, envelopes: Sequence[Envelope]) -> tuple[Any, ...]:
        """The statement that stages `envelopes`, and its parameters."""
        ids, topics, keys, values, types = [], [], [], [], []
        for e in envelopes:
            value = e.to_bytes()
            if len(value) > MAX_EVENT_BYTES:
                raise EventTooLarge(f"{e.event_type} {e.event_id}: {len(value)} bytes, over {MAX_EVENT_BYTES}")
            ids.append(e.event_id)
            topics.append(self.topic_for(e))
            keys.append(e.key)
            values.append(value)
            types.append(e.event_type)
        return _STAGE if self.relay_holds_lease else _STAGE_AND_NOTIFY, ids, topics, keys, values, types

    def wake(self, always: bool = False) -> None:
        """Tell the relay in this process that rows were committed (`add` does, on commit). Unless
        `always` (a stop, another replica's notification), only a relay that holds the lease
        passes for it: otherwise the commit notified the holder, and this relay's pass would find
        the lease held, a statement for nothing."""
        if always or self.relay_holds_lease:
            self._wake.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()


class OutboxRelay:
    def __init__(
        self,
        settings: ServiceSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
        producer: AIOKafkaProducer,
        outbox: Outbox,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.producer = producer
        self.outbox = outbox
        self.lease = Lease(RELAY_LEASE, settings.relay_lease_seconds)
        self._purge_countdown = 0
        # Rows Kafka acknowledged whose "sent" mark failed to commit (the database went away):
        # marked first on the next pass instead of being published a second time.
        self._acked_unmarked: list[int] = []
        self.floor = ReadFloor()
        self.server_started: datetime | None = None  # when the database server the last pass saw started

    async def run(self, stop: asyncio.Event) -> None:
        listening = asyncio.create_task(self.listen(stop), name="outbox-relay-listen")
        try:
            while not stop.is_set():
                held_before = self.outbox.relay_holds_lease
                try:
                    sent = await retry.forever(
                        self.publish_batch, what="outbox relay: publish", initial=0.1, maximum=5.0, until=stop
                    )
                except Exception:
                    if stop.is_set():
                        return  # stopping while the database or broker is away: the next start retries
                    raise
                # Just took the lease: pass again at once, for what was committed meanwhile (its
                # commit neither woke this relay, which did not hold the lease yet, nor another).
                taken = self.outbox.relay_holds_lease and not held_before
                if sent < self.settings.relay_batch_size and not taken:
                    await self.outbox.wait(self.settings.relay_poll_seconds)
        finally:
            listening.cancel()
            with contextlib.suppress(BaseException):
                await listening
            await self.release()

    async def listen(self, stop: asyncio.Event) -> None:
        """Wake this relay, while it holds the lease, when another replica commits staged rows (see
        _STAGE_AND_NOTIFY): without it they waited for this relay's next poll (`relay_poll_seconds`).
        One connection of its own, outside the pool; opened again whenever it is lost (a missed
        notification costs only that wait)."""
        url = self.sessionmaker.kw["bind"].url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            await retry.forever(
                functools.partial(self._listen_once, url, stop),
                what="outbox relay: listen",
                initial=0.5,
                maximum=10.0,
                until=stop,
            )
        except Exception:
            if not stop.is_set():
                raise  # retry.forever gives up only once `stop` is set

    async def _listen_once(self, url: str, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        conn = await asyncpg.connect(url)
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(WAKE_CHANNEL, self._notified)
            self.outbox.wake(always=True)  # for what was notified while nobody listened
            ended = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
            try:
                await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in ended:
                    waiter.cancel()
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        if lost.is_set() and not stop.is_set():
            raise ConnectionError("the connection listening for outbox wake-ups was lost")

    def _notified(self, *_: object) -> None:
        self.outbox.wake()  # only if this relay holds the lease

    async def release(self) -> None:
        """Mark what Kafka acknowledged and give up the lease (on a clean stop), so another
        replica need not wait for it to expire nor publish the last batch a second time."""
        with contextlib.suppress(Exception):
            async with self.sessionmaker() as session, session.begin():
                if self._acked_unmarked and await self.lease.acquire(session):
                    await self._mark_sent(await driver_connection(session), self._acked_unmarked)
                await self.lease.release(session)
            self._acked_unmarked = []

    async def publish_batch(self) -> int:
        """Publish the oldest unsent rows; returns how many (0 also while another replica holds
        the lease). One statement per pass renews the lease, marks sent what the last pass
        published (Kafka acknowledged it) and reads the next rows: one round trip on every hop of
        the pipeline, and no transaction or lock open while Kafka acknowledges. An idle relay still
        marks its last pass within `relay_poll_seconds`."""
        lease = self.lease
        async with pooled_driver(self.sessionmaker.kw["bind"]) as conn:
            found = await conn.fetch(
                _PASS,
                lease.name,
                lease.holder,
                lease.ttl_seconds,
                self._acked_unmarked,
                self.settings.relay_batch_size,
                self.floor.value,
            )
            header = next(r for r in found if r["id"] is None)
            rows = [r for r in found if r["id"] is not None]
        if header["server_started"] != self.server_started:
            # The database restarted since the last pass: it may have lost that pass's marks
            # (they commit without waiting for the disk, see _PASS), leaving rows below the floor
            # unsent. The next pass scans from the start (what it finds is on the log already).
            self.floor.reset()
            self.server_started = header["server_started"]
        self.outbox.relay_holds_lease = bool(header["held"])
        if not header["held"]:
            self.floor.reset()
            return 0
        self._acked_unmarked = []  # marked: the statement committed
        if rows:
            await self._publish(rows)
            metrics.EVENTS_PRODUCED.labels(self.settings.service_name).inc(len(rows))
            self._acked_unmarked = [r["id"] for r in rows]
        self.floor.passed(header["snapshot"], int(header["own_xid"]), self._acked_unmarked)
        if len(rows) < self.settings.relay_batch_size:
            metrics.OUTBOX_BACKLOG.labels(self.settings.service_name).set(0)
        await self._maybe_purge()  # after publishing: this pass's events do not wait for it
        return len(rows)

    async def _publish(self, rows: Sequence[Any]) -> None:
        """Publish `rows` (each on its topic, or on the dead-letter topic if too large for it);
        raises, so that nothing is marked sent, unless every one was acknowledged."""
        fit: list[Message] = []
        oversized: list[DeadLetter] = []
        for r in rows:
            if len(r["value"]) <= MAX_EVENT_BYTES:
                headers = ((EVENT_TYPE_HEADER, r["event_type"].encode()),) if r["event_type"] else ()
                fit.append(Message(r["topic"], r["value"], r["key"], headers))
            else:
                # Only a row staged before Outbox.add checked sizes. It is never sent to its stream:
                # a message the broker refuses breaks the idempotent producer's sequence.
                error = f"{len(r['value'])} bytes, over the {MAX_EVENT_BYTES} a stream takes"
                log.error("outbox relay: an event of %s goes to the dead-letter topic", error)
                oversized.append(DeadLetter(r["value"], r["key"], error, {"source.topic": r["topic"]}))
        await send_all(self.producer, fit)
        await send_dead_letters(self.producer, self.settings, oversized, "outbox-relay")

    async def _mark_sent(self, conn: asyncpg.Connection, ids: list[int]) -> None:
        await conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", ids)

    async def _maybe_purge(self) -> None:
        self._purge_countdown -= 1
        if self._purge_countdown > 0:
            return
        async with pooled_driver(self.sessionmaker.kw["bind"]) as conn:
            behind = True
            for _ in range(OUTBOX_PURGE_SLICES):
                if _count(await conn.execute(_PURGE_OUTBOX, OUTBOX_PURGE_SLICE)) < OUTBOX_PURGE_SLICE:
                    behind = False  # the slice reached rows sent within the day
                    break
            inbox = await conn.execute(_PURGE_INBOX, self.settings.inbox_retention_days, INBOX_PURGE_SLICE)
            behind = behind or _count(inbox) == INBOX_PURGE_SLICE
            self._purge_countdown = 1 if behind else PURGE_EVERY
            backlog = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        metrics.OUTBOX_BACKLOG.labels(self.settings.service_name).set(backlog or 0)


def _count(status: str) -> int:
    """The row count of a command's status ("DELETE 12")."""
    return int(status.rsplit(" ", 1)[-1])
