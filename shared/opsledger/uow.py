"""Unit of work: one database transaction in which a service changes its state, stages the events
that explain the change, and schedules or cancels timers. The events go to the outbox just before
commit, and whatever waits for new work (the relay, the timer runner) is woken once the commit has
happened, never before: no caller places a wake-up by hand."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger import timers
from opsledger.bus.outbox import Outbox
from opsledger.clock import Clock
from opsledger.db import combined_writes
from opsledger.events.envelope import Envelope


@dataclass
class UnitOfWork:
    """What a handler or endpoint writes through. `now` is read once, so every event and timer of
    the unit carries the same time."""

    session: AsyncSession
    outbox: Outbox
    now: datetime
    staged: list[Envelope] = field(default_factory=list)
    # Timer changes staged by pure decisions: key -> the timer, or None to cancel; the last wins.
    timer_changes: dict[str, timers.Timer | None] = field(default_factory=dict)

    def emit(self, *envelopes: Envelope) -> None:
        """Stage events; they enter the outbox in this transaction, in this order."""
        self.staged.extend(envelopes)

    def schedule(self, *items: timers.Timer) -> None:
        """Stage timers (rescheduling a key replaces it); written with one statement when the unit
        flushes, in this transaction."""
        for item in items:
            timers.kind_of(item.key)
            self.timer_changes[item.key] = item

    def cancel(self, *keys: str) -> None:
        """Stage the cancellation of timers (an unknown key is no error); the last change of a key wins."""
        for key in keys:
            self.timer_changes[key] = None

    async def flush(self) -> None:
        """Write the staged timers and events now (done for you before commit): one statement, or
        two when timers are both cancelled and scheduled (one table twice, see combined_writes)."""
        changes, self.timer_changes = self.timer_changes, {}
        staged, self.staged = self.staged, []
        async with combined_writes(self.session):
            await timers.cancel(self.session, *(key for key, t in changes.items() if t is None))
            await timers.schedule_many(self.session, [t for t in changes.values() if t is not None])
            await self.outbox.add(self.session, staged)


@contextlib.asynccontextmanager
async def unit_of_work(
    sessionmaker: async_sessionmaker[AsyncSession], outbox: Outbox, clock: Clock
) -> AsyncIterator[UnitOfWork]:
    """Open a transaction; commit it (staged events included) when the block ends without error."""
    async with sessionmaker() as session, session.begin():
        uow = UnitOfWork(session, outbox, clock.now())
        yield uow
        await uow.flush()


@contextlib.asynccontextmanager
async def joined(session: AsyncSession, outbox: Outbox, now: datetime) -> AsyncIterator[UnitOfWork]:
    """A unit of work inside a transaction someone else commits (a consumer's batch)."""
    uow = UnitOfWork(session, outbox, now)
    yield uow
    await uow.flush()
