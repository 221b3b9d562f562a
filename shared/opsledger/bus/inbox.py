"""Inbox: the ids of events a consumer has applied, so a redelivered event is recognised."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.db import inbox_table


async def claim(session: AsyncSession, consumer: str, event_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Record the ids in the caller's transaction; returns those not seen before (one round trip)."""
    rows = [{"consumer": consumer, "event_id": i} for i in dict.fromkeys(event_ids)]
    if not rows:
        return set()
    stmt = pg_insert(inbox_table).values(rows).on_conflict_do_nothing().returning(inbox_table.c.event_id)
    return set((await session.execute(stmt)).scalars())
