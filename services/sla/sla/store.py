"""Tables of the sla service (its own database) and the queries the stage runs on them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.db import write_rows
from opsledger.events.common import SlaTargetKind
from opsledger.uow import UnitOfWork
from sla.clocks import Clock, Hold
from sla.domain import Incident

metadata = sa.MetaData()

# One row per incident this service has heard of: its clocks and the facts they depend on
# (domain.Incident as JSON in `state`; title and priority beside it for reading).
known_incidents = sa.Table(
    "known_incidents",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("priority", sa.Text),
    sa.Column("state", pg.JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("known_incidents_logged_at", known_incidents.c.logged_at)

# What the stage consumed of each incident, in order: the history a what-if replays.
sla_inputs = sa.Table(
    "sla_inputs",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("envelope", pg.JSONB, nullable=False),
)

# Every version of the SLA policy; the highest is in force. Rows are never updated: the history.
sla_policies = sa.Table(
    "sla_policies",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("body", pg.JSONB, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# --------------------------------------------------------------------------- state as JSON


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _req(value: str) -> datetime:
    return datetime.fromisoformat(value)


def clock_json(c: Clock) -> dict[str, Any]:
    return {
        "target": str(c.target),
        "priority": c.priority,
        "policy_version": c.policy_version,
        "rule": c.rule,
        "target_seconds": c.target_seconds,
        "calendar": c.calendar,
        "warning_percents": list(c.warning_percents),
        "counted_from": c.counted_from.isoformat(),
        "pauses": [[s.isoformat(), _t(e)] for s, e in c.pauses],
        "warned": list(c.warned),
        "breached": c.breached,
        "stopped_at": _t(c.stopped_at),
        "cancelled": c.cancelled,
        "retargeted": c.retargeted,
    }


def clock_from(raw: Mapping[str, Any]) -> Clock:
    return Clock(
        target=SlaTargetKind(raw["target"]),
        priority=raw["priority"],
        policy_version=raw["policy_version"],
        rule=raw["rule"],
        target_seconds=raw["target_seconds"],
        calendar=raw["calendar"],
        warning_percents=tuple(raw["warning_percents"]),
        counted_from=_req(raw["counted_from"]),
        pauses=tuple((_req(s), _dt(e)) for s, e in raw["pauses"]),
        warned=tuple(raw["warned"]),
        breached=raw["breached"],
        stopped_at=_dt(raw["stopped_at"]),
        cancelled=raw["cancelled"],
        retargeted=raw.get("retargeted", False),
    )


def incident_json(s: Incident) -> dict[str, Any]:
    return {
        "logged_at": s.logged_at.isoformat(),
        "title": s.title,
        "category": s.category,
        "service": s.service,
        "priority": s.priority,
        "holds": [[h.start.isoformat(), _t(h.end)] for h in s.holds],
        "acknowledged_at": _t(s.acknowledged_at),
        "resolved_at": _t(s.resolved_at),
        "clocks": [clock_json(c) for c in s.clocks],
        "previous": [clock_json(c) for c in s.previous],
    }


def incident_from(raw: Mapping[str, Any]) -> Incident:
    return Incident(
        logged_at=_req(raw["logged_at"]),
        title=raw["title"],
        category=raw.get("category"),
        service=raw.get("service"),
        priority=raw.get("priority"),
        holds=tuple(Hold(_req(s), _dt(e)) for s, e in raw.get("holds", [])),
        acknowledged_at=_dt(raw.get("acknowledged_at")),
        resolved_at=_dt(raw.get("resolved_at")),
        clocks=tuple(clock_from(c) for c in raw.get("clocks", [])),
        previous=tuple(clock_from(c) for c in raw.get("previous", [])),
    )


# --------------------------------------------------------------------------- incidents


async def load(uow: UnitOfWork, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Incident]:
    """The incidents among `ids` this service knows, locked (in id order) for the transaction."""
    if not ids:
        return {}
    query = (
        sa.select(known_incidents.c.incident_id, known_incidents.c.state)
        .where(known_incidents.c.incident_id.in_(sorted(ids)))
        .order_by(known_incidents.c.incident_id)
        .with_for_update()
    )
    return {row.incident_id: incident_from(row.state) for row in await uow.session.execute(query)}


async def save(uow: UnitOfWork, changed: dict[uuid.UUID, Incident], loaded: Mapping[uuid.UUID, Incident]) -> None:
    """Write the incidents a unit of work changed: one statement."""
    if not changed:
        return
    rows = [
        {
            "incident_id": k,
            "logged_at": v.logged_at,
            "title": v.title,
            "priority": v.priority,
            "state": incident_json(v),
            "updated_at": uow.now,
        }
        for k, v in sorted(changed.items())
    ]
    await write_rows(
        uow.session,
        known_incidents,
        rows,
        key=["incident_id"],
        update=["logged_at", "title", "priority", "state", "updated_at"],
    )


async def record_inputs(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Keep consumed events for what-if replays (a redelivery is kept once)."""
    await write_rows(session, sla_inputs, rows, key=["incident_id", "event_id"])


async def load_incident(session: AsyncSession, incident_id: uuid.UUID) -> sa.Row[Any] | None:
    query = sa.select(known_incidents).where(known_incidents.c.incident_id == incident_id)
    return (await session.execute(query)).first()


async def inputs_between(
    session: AsyncSession, start: datetime, end: datetime, limit: int
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """The recorded inputs of the incidents logged in [start, end) (at most `limit` incidents)."""
    ids = (
        sa.select(known_incidents.c.incident_id)
        .where(known_incidents.c.logged_at >= start, known_incidents.c.logged_at < end)
        .order_by(known_incidents.c.logged_at, known_incidents.c.incident_id)
        .limit(limit)
        .scalar_subquery()
    )
    rows = await session.execute(
        sa.select(sla_inputs.c.incident_id, sla_inputs.c.envelope)
        .where(sla_inputs.c.incident_id.in_(ids))
        .order_by(sla_inputs.c.incident_id, sla_inputs.c.occurred_at, sla_inputs.c.seq)
    )
    found: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row.incident_id, []).append(row.envelope)
    return found


# --------------------------------------------------------------------------- policies


async def policy_version(session: AsyncSession) -> int | None:
    """The version in force (one index-only query, run once per unit of work)."""
    version: int | None = await session.scalar(sa.select(sa.func.max(sla_policies.c.version)))
    return version


async def policy_row(session: AsyncSession, version: int | None = None) -> sa.Row[Any] | None:
    query = sa.select(sla_policies)
    query = query.where(sla_policies.c.version == version) if version is not None else query
    return (await session.execute(query.order_by(sla_policies.c.version.desc()).limit(1))).first()


async def policy_history(session: AsyncSession, limit: int) -> list[sa.Row[Any]]:
    query = sa.select(sla_policies).order_by(sla_policies.c.version.desc()).limit(limit)
    return list((await session.execute(query)).all())


async def lock_policies(session: AsyncSession) -> None:
    """Serialise policy changes (and seeding) for this transaction."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(0x736C61706F6C)))  # "slapol"


async def save_policy(
    session: AsyncSession, version: int, body: dict[str, Any], actor: str, comment: str | None, at: datetime
) -> bool:
    """Insert a version; False when it exists already (a racing replica seeded it)."""
    result = await session.execute(
        pg.insert(sla_policies)
        .values(version=version, body=body, actor=actor, comment=comment, created_at=at)
        .on_conflict_do_nothing()
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
