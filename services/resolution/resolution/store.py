"""Tables of the resolution service (its own database) and the queries the stage runs on them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.db import driver_connection, write_rows
from opsledger.uow import UnitOfWork
from resolution.domain import Incident, from_json, to_json

metadata = sa.MetaData()

# What the service knows of each incident: the whole state as JSON (domain.Incident), and the
# columns an operator filters on beside it.
incidents = sa.Table(
    "resolution_incidents",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("priority", sa.Text),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
    sa.Column("state", pg.JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_resolution_incidents_status", "status"),
)

# Subscriptions in force: the definition as announced (SubscriptionChanged), and the signing
# secrets, which never travel on the log (the previous one stays valid while it is rotated out).
subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("definition", pg.JSONB, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("previous_secret", sa.Text),
    sa.Column("changed_by", sa.Text, nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per event and subscription (the idempotency key): what is sent, and how it went.
deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("incident_id", pg.UUID(as_uuid=True)),
    sa.Column("channel", sa.Text, nullable=False),  # webhook | slack_webhook | email
    sa.Column("target", sa.Text, nullable=False),  # the URL, or the email address
    sa.Column("body", pg.JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    # Staging order (one batch's rows share created_at): the order a round sends them in.
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    # Attempts answered 429: they use none of WEBHOOK_MAX_ATTEMPTS up (notify.RetryPolicy).
    sa.Column("rate_limited", sa.Integer, nullable=False, server_default="0"),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Index("ix_delivery_attempts_delivery", "subscription_id", "event_id"),
)


async def load(uow: UnitOfWork, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Incident]:
    """The incidents among `ids` this service knows, locked (in id order) for the transaction."""
    if not ids:
        return {}
    query = (
        sa.select(incidents.c.incident_id, incidents.c.state)
        .where(incidents.c.incident_id.in_(ids))
        .order_by(incidents.c.incident_id)
        .with_for_update()
    )
    return {row.incident_id: from_json(row.state) for row in await uow.session.execute(query)}


async def load_one(session: AsyncSession, incident_id: uuid.UUID) -> Incident | None:
    """One incident, for reading (no lock)."""
    value = await session.scalar(sa.select(incidents.c.state).where(incidents.c.incident_id == incident_id))
    return None if value is None else from_json(value)


async def save(uow: UnitOfWork, changed: dict[uuid.UUID, Incident], loaded: Mapping[uuid.UUID, Incident]) -> None:
    """Write the incidents a unit of work changed, in one statement."""
    if not changed:
        return
    rows = [
        {
            "incident_id": incident_id,
            "status": state.status.value,
            "priority": state.priority,
            "resolved_at": state.resolution.at if state.resolution is not None else None,
            "closed_at": state.closed_at,
            "state": to_json(state),
            "updated_at": uow.now,
        }
        for incident_id, state in sorted(changed.items())
    ]
    columns = ("status", "priority", "resolved_at", "closed_at", "state", "updated_at")
    await write_rows(uow.session, incidents, rows, key=["incident_id"], update=columns)


# --------------------------------------------------------------------------- subscriptions


async def lock_subscriptions(session: AsyncSession) -> None:
    """Serialise subscription changes (two admins saving one subscription get consecutive versions)."""
    await session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('resolution.subscriptions'))"))


async def subscription_rows(session: AsyncSession, ids: Collection[str] | None = None) -> list[Any]:
    query = sa.select(subscriptions).order_by(subscriptions.c.subscription_id)
    if ids is not None:
        query = query.where(subscriptions.c.subscription_id.in_(ids))
    return list(await session.execute(query))


async def enabled_subscriptions(session: AsyncSession) -> list[dict[str, Any]]:
    query = sa.select(subscriptions.c.definition).where(subscriptions.c.enabled)
    return list((await session.execute(query)).scalars())


async def save_subscription(session: AsyncSession, row: dict[str, Any]) -> None:
    stmt = pg_insert(subscriptions)
    columns = [c.name for c in subscriptions.c if c.name != "subscription_id"]
    await session.execute(
        stmt.on_conflict_do_update(index_elements=["subscription_id"], set_={c: stmt.excluded[c] for c in columns}),
        [row],
    )


async def delete_subscription(session: AsyncSession, subscription_id: str) -> None:
    await session.execute(sa.delete(subscriptions).where(subscriptions.c.subscription_id == subscription_id))


async def add_deliveries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[tuple[str, uuid.UUID]]:
    """Insert deliveries not known yet (a redelivered event adds none); returns the new ones' keys."""
    if not rows:
        return []
    stmt = (
        pg_insert(deliveries)
        .on_conflict_do_nothing(index_elements=["subscription_id", "event_id"])
        .returning(deliveries.c.subscription_id, deliveries.c.event_id)
    )
    # SQLAlchemy 2 sends the rows as one INSERT ... VALUES ..., ... RETURNING ("insertmanyvalues").
    return [(r.subscription_id, r.event_id) for r in await session.execute(stmt, list(rows))]


async def pending_deliveries(session: AsyncSession, keys: Collection[tuple[str, uuid.UUID]]) -> list[Any]:
    """The deliveries among `keys` still pending, with their subscription's target and secrets
    (locked), in the order they were staged: one incident's emails go out in the order of its events."""
    if not keys:
        return []
    query = (
        sa.select(deliveries, subscriptions.c.secret, subscriptions.c.previous_secret, subscriptions.c.enabled)
        .join(subscriptions, subscriptions.c.subscription_id == deliveries.c.subscription_id, isouter=True)
        .where(sa.tuple_(deliveries.c.subscription_id, deliveries.c.event_id).in_(list(keys)))
        .where(deliveries.c.status == "pending")
        .order_by(deliveries.c.seq)
        .with_for_update(of=deliveries)
    )
    return list(await session.execute(query))


@dataclass(frozen=True)
class Attempt:
    """One attempt at a delivery, and where that leaves the delivery."""

    subscription_id: str
    event_id: uuid.UUID
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    status: str  # pending | delivered | failed
    next_attempt_at: datetime | None
    rate_limited: int  # the delivery's attempts answered 429, this one included


# Every delivery of a batch moved on in one statement: each row found by its own primary-key probe
# and updated by its ctid (as intake saves alert states), where executemany ran an UPDATE each.
_AFTER_ATTEMPTS = (
    "WITH u AS (SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int[], $5::timestamptz[],"
    " $6::timestamptz[], $7::int[]) AS u(subscription_id, event_id, status, attempt, next_attempt_at, delivered_at,"
    " rate_limited)),"
    " t AS (SELECT d.tid, u.* FROM u, LATERAL (SELECT ctid AS tid FROM deliveries"
    " WHERE subscription_id = u.subscription_id AND event_id = u.event_id LIMIT 1) AS d)"
    " UPDATE deliveries AS d SET status = t.status, attempts = t.attempt, next_attempt_at = t.next_attempt_at,"
    " delivered_at = t.delivered_at, rate_limited = t.rate_limited"
    " FROM t WHERE d.ctid = ANY(ARRAY(SELECT tid FROM t)) AND d.ctid = t.tid"
)


async def record_attempts(session: AsyncSession, attempts: Sequence[Attempt]) -> None:
    """Record each attempt and move its delivery on: two statements for the whole batch."""
    if not attempts:
        return
    rows = [
        {
            "subscription_id": a.subscription_id,
            "event_id": a.event_id,
            "attempt": a.attempt,
            "at": a.at,
            "status_code": a.status_code,
            "error": a.error,
            "duration_ms": a.duration_ms,
        }
        for a in attempts
    ]
    await write_rows(session, delivery_attempts, rows)
    await (await driver_connection(session)).execute(
        _AFTER_ATTEMPTS,
        [a.subscription_id for a in attempts],
        [a.event_id for a in attempts],
        [a.status for a in attempts],
        [a.attempt for a in attempts],
        [a.next_attempt_at for a in attempts],
        [a.at if a.status == "delivered" else None for a in attempts],
        [a.rate_limited for a in attempts],
    )


async def deliveries_of(session: AsyncSession, subscription_id: str, limit: int) -> list[tuple[Any, list[Any]]]:
    """The subscription's latest deliveries, each with its attempts (oldest first), read from one
    snapshot: an attempt and the delivery's new state commit together, and read apart, the list
    could show an attempt beside the delivery as it was before it. (`session`: not begun yet.)"""
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    rows = list(
        await session.execute(
            sa.select(deliveries)
            .where(deliveries.c.subscription_id == subscription_id)
            .order_by(deliveries.c.created_at.desc(), deliveries.c.seq.desc())
            .limit(limit)
        )
    )
    if not rows:
        return []
    attempts = list(
        await session.execute(
            sa.select(delivery_attempts)
            .where(
                delivery_attempts.c.subscription_id == subscription_id,
                delivery_attempts.c.event_id.in_([r.event_id for r in rows]),
            )
            .order_by(delivery_attempts.c.id)
        )
    )
    return [(r, [a for a in attempts if a.event_id == r.event_id]) for r in rows]
