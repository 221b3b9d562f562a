"""Durable timers, one facility for every stage (acknowledgement timeouts, SLA warnings and
breaches, auto-close, reminders).

A timer is a row in the service's own `timers` table, written by `schedule` / `cancel` inside the
caller's transaction: nothing is scheduled if the caller rolls back. A `TimerRunner` claims due
rows with `FOR UPDATE SKIP LOCKED`, deletes them and calls the service's handler for their kind in
the same transaction, so the handler's events (outbox) and the timer's removal commit together:
with any number of replicas, across SIGKILL and restarts, each timer fires exactly once, and what
fell due while the service was down fires when it comes back.

Locks go in one order: what a timer is about (an incident's state), then the timer. A consumer
batch locks its incidents and then cancels or moves their timers; a handler with a `lock` method
(`TimerHandler`) has it called before the runner claims the timers, so a timer cancelled while it
falls due is either fired before the cancel or found gone, never a deadlock between the two (which
PostgreSQL broke after a second, and which could put a cancelled timer back as a retry). Runners
share the due timers by advisory locks on their keys, taken before anything else.

Events a timer causes get ids derived from the timer's key and due time (`FiredTimer.event_id`),
so even a re-derivation yields the same event.

The runner sleeps until the earliest due time (capped), and a timer scheduled earlier than that
in this process wakes it on commit, so nothing is polled for blindly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger import metrics, retry
from opsledger.clock import Clock
from opsledger.db import DATABASE_UNAVAILABLE, after_commit, execute_write, timers_table, write_rows

log = logging.getLogger(__name__)

TIMER_EVENT_NAMESPACE = uuid.UUID("3d0f6c1e-7a52-4b8e-9f14-6e2b8c9d0a47")
# A failing handler's timer is retried later, backing off up to this long.
MAX_RETRY_DELAY = timedelta(minutes=5)
# The advisory locks (pg_try_advisory_xact_lock(TIMER_LOCKS, hashtext(key))) by which runners
# share the due timers; a runner looks this many batches deep for timers the others do not hold.
TIMER_LOCKS = 0x71E4
RUNNERS_SKIPPED = 4


def kind_of(key: str) -> str:
    """A key reads '<kind>:<what>' (e.g. 'sla:<incident>:response:breach'); the kind picks the handler."""
    kind, sep, rest = key.partition(":")
    if not sep or not kind or not rest:
        raise ValueError(f"timer key {key!r}: expected '<kind>:<what>'")
    return kind


@dataclass(frozen=True)
class Timer:
    key: str
    due_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FiredTimer:
    """A timer being fired: what was scheduled, and when it actually fired."""

    key: str
    due_at: datetime
    data: Mapping[str, Any]
    fired_at: datetime

    @property
    def kind(self) -> str:
        return kind_of(self.key)

    def event_id(self, event_type: str, ordinal: int = 0) -> uuid.UUID:
        """The id of an event this firing causes: the same however often it is derived."""
        return uuid.uuid5(TIMER_EVENT_NAMESPACE, f"{self.key}@{self.due_at.isoformat()}:{event_type}:{ordinal}")


# Handlers get every due timer of their kind in one batch, inside the runner's transaction. A
# handler that locks rows before it decides (an incident's state) also offers them as a method
# `lock(session, timers: list[Timer])`, which the runner calls (once per distinct method) with the
# due timers before it claims them: see the module's docstring.
TimerHandler = Callable[[AsyncSession, list[FiredTimer]], Awaitable[None]]
TimerLock = Callable[[AsyncSession, list[Timer]], Awaitable[None]]


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("a timer's due time must carry a time zone")
    return when.astimezone(UTC)


async def schedule(session: AsyncSession, key: str, due_at: datetime, data: Mapping[str, Any] | None = None) -> None:
    """Schedule (or reschedule: the key is unique) a timer in the caller's transaction."""
    await schedule_many(session, [Timer(key, due_at, data or {})])


async def schedule_many(session: AsyncSession, items: Sequence[Timer]) -> None:
    """Schedule several timers with one statement (the last of a repeated key wins)."""
    rows: dict[str, dict[str, Any]] = {}
    for t in items:
        kind_of(t.key)  # refuse a key without a kind before anything is written
        due = _utc(t.due_at)
        rows[t.key] = {"key": t.key, "due_at": due, "fire_at": due, "data": dict(t.data)}
    if not rows:
        return
    await write_rows(
        session,
        timers_table,
        list(rows.values()),
        key=["key"],
        update=["due_at", "fire_at", "data"],
        constants={"attempts": "0"},
    )
    earliest = min(r["due_at"] for r in rows.values())
    after_commit(session, lambda: _wake_runners(earliest))


async def cancel(session: AsyncSession, *keys: str) -> None:
    """Cancel timers in the caller's transaction (an unknown key is no error)."""
    if keys:
        await execute_write(session, "DELETE FROM timers WHERE key = ANY($1::text[])", list(keys))


async def pending(session: AsyncSession, prefix: str = "") -> dict[str, datetime]:
    """Pending timers (key -> due time), optionally only keys starting with `prefix`."""
    query = sa.select(timers_table.c.key, timers_table.c.due_at)
    if prefix:
        query = query.where(timers_table.c.key.startswith(prefix, autoescape=True))
    return {row.key: row.due_at for row in await session.execute(query)}


# Runners of this process, woken when a transaction here schedules something due before their
# next wake-up. Weak: a runner that is gone is simply not woken.
_runners: weakref.WeakSet[TimerRunner] = weakref.WeakSet()


def _wake_runners(due_at: datetime) -> None:
    for runner in list(_runners):
        runner.wake_for(due_at)


class TimerRunner:
    """Fires due timers: claims a batch, calls each kind's handler, commits; sleeps until the next
    due time. Several replicas share the work (see TIMER_LOCKS)."""

    def __init__(
        self,
        service: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        handlers: Mapping[str, TimerHandler],
        clock: Clock,
        *,
        batch_size: int = 500,
        max_idle_seconds: float = 5.0,
    ) -> None:
        self.service = service
        self.sessionmaker = sessionmaker
        self.handlers = dict(handlers)
        self.clock = clock
        self.batch_size = batch_size
        self.max_idle_seconds = max_idle_seconds
        self._wake = asyncio.Event()
        self._next_wake: datetime | None = None
        self._count_again_at = self._count_all_again_at = 0.0
        _runners.add(self)

    def wake_for(self, due_at: datetime) -> None:
        """A timer due at `due_at` was committed: wake up if that is before the planned wake-up."""
        if self._next_wake is None or due_at < self._next_wake:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fire due timers until `stop` is set (the batch in hand is finished first)."""
        while not stop.is_set():
            try:
                fired = await retry.forever(
                    self.run_due, what="timer runner: firing", initial=0.1, maximum=5.0, until=stop
                )
            except Exception:
                if stop.is_set():
                    return  # stopping while the database is away: the next start catches up
                raise
            with contextlib.suppress(*DATABASE_UNAVAILABLE):
                await self._count_now_and_then()
            if fired >= self.batch_size:
                continue  # more may be due right now
            await self._sleep_until_next(stop)

    async def run_due(self, now: datetime | None = None) -> int:
        """Fire every timer due at `now` (default: the clock's now), batch after batch; returns how
        many fired. Tests call this directly with a ManualClock's time."""
        total = 0
        while True:
            fired, more = await self._fire_batch(now or self.clock.now())
            total += fired
            if not more:
                return total

    async def _fire_batch(self, now: datetime) -> tuple[int, bool]:
        """Fire a batch of due timers; returns how many fired, and whether more may be due."""
        async with self.sessionmaker() as session, session.begin():
            t = timers_table.c
            # The earliest due timers that no other runner is firing. Runners tell each other with
            # advisory locks, not row locks: a consumer cancelling a timer never waits for those.
            # The inner limit bounds how many are tried (a runner skips what the others hold).
            earliest = sa.select(t.key, t.due_at, t.data).where(t.fire_at <= now).order_by(t.fire_at)
            head = earliest.limit(self.batch_size * RUNNERS_SKIPPED).subquery()
            mine = sa.func.pg_try_advisory_xact_lock(TIMER_LOCKS, sa.func.hashtext(head.c.key))
            due = (await session.execute(sa.select(head).where(mine).limit(self.batch_size))).all()
            if not due:
                return 0, False
            await self._lock_first(session, [Timer(r.key, r.due_at, r.data) for r in due])
            # Whatever a consumer cancelled or moved meanwhile is gone or no longer due; what
            # another runner holds is skipped.
            keys = sa.literal([r.key for r in due], type_=postgresql.ARRAY(sa.Text))  # one parameter
            claiming = sa.select(t.key).where(t.key == sa.any_(keys), t.fire_at <= now)
            claimed = (
                await session.execute(
                    sa.delete(timers_table)
                    .where(t.key.in_(claiming.with_for_update(skip_locked=True)))
                    .returning(t.key, t.due_at, t.data, t.attempts)
                )
            ).all()
            if not claimed:
                return 0, False
            fired_at = self.clock.now()
            by_kind: dict[str, list[FiredTimer]] = {}
            attempts: dict[str, int] = {}
            for row in sorted(claimed, key=lambda r: (r.due_at, r.key)):
                by_kind.setdefault(kind_of(row.key), []).append(FiredTimer(row.key, row.due_at, row.data, fired_at))
                attempts[row.key] = row.attempts
            for kind, batch in by_kind.items():
                await self._handle(session, kind, batch, attempts)
            for timer in claimed:
                metrics.TIMER_FIRE_LAG.labels(self.service).observe(max((fired_at - timer.due_at).total_seconds(), 0))
            metrics.TIMERS_FIRED.labels(self.service).inc(len(claimed))
            return len(claimed), len(due) >= self.batch_size

    async def _lock_first(self, session: AsyncSession, due: list[Timer]) -> None:
        """Call each handler's `lock` with its due timers, before they are claimed."""
        by_lock: dict[TimerLock, list[Timer]] = {}
        for timer in due:
            lock = getattr(self.handlers.get(kind_of(timer.key)), "lock", None)
            if lock is not None:
                by_lock.setdefault(lock, []).append(timer)  # bound methods of one handler are equal
        for lock, timers in by_lock.items():
            await lock(session, timers)

    async def _handle(
        self, session: AsyncSession, kind: str, batch: list[FiredTimer], attempts: dict[str, int]
    ) -> None:
        handler = self.handlers.get(kind)
        if handler is None:
            log.error("timer runner: no handler for kind %r; %d timers dropped", kind, len(batch))
            return
        try:
            async with session.begin_nested():
                await handler(session, batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                await self._retry_later(session, batch[0], attempts[batch[0].key], exc)
                return
        # One timer of the batch failed: fire them one by one, so it costs only itself.
        for timer in batch:
            try:
                async with session.begin_nested():
                    await handler(session, [timer])
            except Exception as exc:
                await self._retry_later(session, timer, attempts[timer.key], exc)

    async def _retry_later(self, session: AsyncSession, timer: FiredTimer, attempts: int, exc: Exception) -> None:
        """Put back a timer whose handler failed, to be tried again after a growing delay. Its due
        time stays as it was, so its events keep their ids and their `due_at`."""
        log.error("timer runner: handler for %s failed (attempt %d): %r", timer.key, attempts + 1, exc)
        delay = min(timedelta(seconds=2 ** min(attempts, 12)), MAX_RETRY_DELAY)
        await session.execute(
            pg_insert(timers_table)
            .values(
                key=timer.key,
                due_at=timer.due_at,
                fire_at=timer.fired_at + delay,
                data=dict(timer.data),
                attempts=attempts + 1,
                last_error=f"{type(exc).__name__}: {exc}"[:2000],
            )
            .on_conflict_do_nothing(index_elements=["key"])  # the handler may have rescheduled it
        )
        metrics.TIMER_FAILURES.labels(self.service).inc()

    async def _count_now_and_then(self) -> None:
        """Set the gauges, busy or idle (a runner behind keeps firing without sleeping: that is
        when its backlog matters). The due ones every 5 s at most: a range of the `fire_at` index,
        as long as the backlog. All of them every minute: a scan of the table, which holds every
        clock of every open incident in the SLA service (0.14 s at 534,000 timers)."""
        now = asyncio.get_running_loop().time()
        if now < self._count_again_at:
            return
        self._count_again_at = now + 5.0
        every = now >= self._count_all_again_at
        async with self.sessionmaker() as session:
            due = await session.scalar(sa.select(sa.func.count()).where(timers_table.c.fire_at <= self.clock.now()))
            if every:
                self._count_all_again_at = now + 60.0
                pending = await session.scalar(sa.select(sa.func.count()).select_from(timers_table))
                metrics.TIMERS_PENDING.labels(self.service).set(pending or 0)
        metrics.TIMERS_DUE.labels(self.service).set(due or 0)

    async def _sleep_until_next(self, stop: asyncio.Event) -> None:
        async with self.sessionmaker() as session:
            next_due = await session.scalar(sa.select(sa.func.min(timers_table.c.fire_at)))
        now = self.clock.now()
        wait = self.max_idle_seconds
        if next_due is not None:
            wait = min(wait, max((next_due - now).total_seconds(), 0.0))
        self._next_wake = now + timedelta(seconds=wait)
        if wait <= 0:
            return
        stopping = asyncio.create_task(stop.wait())
        waking = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({stopping, waking}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, waking):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._wake.clear()
            self._next_wake = None
