"""Inbox: the ids of events a consumer has applied, so a redelivered event is recognised."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

# One statement with two parameters, compiled once: a multi-row VALUES insert is recompiled for
# every batch (measured ~0.1 ms per event on replay).
_CLAIM = sa.text(
    "INSERT INTO inbox (consumer, event_id) SELECT :consumer, unnest(CAST(:ids AS uuid[]))"
    " ON CONFLICT DO NOTHING RETURNING event_id"
)


async def claim(session: AsyncSession, consumer: str, event_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Record the ids in the caller's transaction; returns those not seen before (one round trip)."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    result = await session.execute(_CLAIM, {"consumer": consumer, "ids": ids})
    return {i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in result.scalars()}
