"""Analytics over the active incidents projection. Every group carries the ids of the incidents
behind its figures, so any number can be traced back to incidents and their timelines."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from reporting.queries import BadParameter
from reporting.store import incidents

DIMENSIONS = ("priority", "category", "team", "service", "source", "bucket", "all")
BUCKETS = ("hour", "day", "week", "month")
MAX_IDS = 500  # per group; the incidents_url lists all of them


def group_key(by: str, bucket: str) -> sa.ColumnElement[Any]:
    if by not in DIMENSIONS:
        raise BadParameter("by", f"{by!r} is not one of {', '.join(DIMENSIONS)}")
    if bucket not in BUCKETS:
        raise BadParameter("bucket", f"{bucket!r} is not one of {', '.join(BUCKETS)}")
    if by == "all":
        return sa.literal("all")
    if by == "bucket":
        return sa.func.to_char(
            sa.func.date_trunc(bucket, sa.func.timezone("UTC", incidents.c.logged_at)), 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
        )
    return incidents.c[by]


def _range(version: int, start: datetime | None, end: datetime | None) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = [incidents.c.version == version]
    if start is not None:
        where.append(incidents.c.logged_at >= start)
    if end is not None:
        where.append(incidents.c.logged_at < end)
    return where


def _link(by: str, key: Any, start: datetime | None, end: datetime | None, extra: dict[str, str]) -> str | None:
    params = dict(extra)
    if by in ("priority", "category", "team", "service", "source"):
        if key is None:
            return None  # "no value" cannot be expressed as a filter; the ids are listed instead
        params[by] = str(key)
    if start:
        params["from"] = start.isoformat()
    if end:
        params["to"] = end.isoformat()
    return "/v1/incidents" + ("?" + urlencode(params) if params else "")


def _ids(ids: list[Any] | None) -> dict[str, Any]:
    ids = ids or []
    return {"incident_ids": [str(i) for i in ids[:MAX_IDS]], "incident_ids_truncated": len(ids) > MAX_IDS}


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


async def durations(
    session: AsyncSession,
    version: int,
    kind: str,
    by: str,
    bucket: str,
    start: datetime | None,
    end: datetime | None,
) -> list[dict[str, Any]]:
    """MTTA (logged -> acknowledged) or MTTR (logged -> resolved): mean, median, p90 in seconds."""
    until = incidents.c.acknowledged_at if kind == "mtta" else incidents.c.resolved_at
    seconds = sa.func.extract("epoch", until - incidents.c.logged_at)
    key = group_key(by, bucket).label("key")
    stmt = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.avg(seconds).label("mean"),
            sa.func.percentile_cont(0.5).within_group(seconds).label("median"),
            sa.func.percentile_cont(0.9).within_group(seconds).label("p90"),
            sa.func.array_agg(aggregate_order_by(incidents.c.incident_id, incidents.c.logged_at)).label("ids"),
        )
        .where(*_range(version, start, end), until.is_not(None), incidents.c.logged_at.is_not(None))
        .group_by(key)
        .order_by(key)
    )
    rows = (await session.execute(stmt)).all()
    return [
        {
            "key": r.key,
            "count": r.n,
            "mean_seconds": _seconds(r.mean),
            "median_seconds": _seconds(r.median),
            "p90_seconds": _seconds(r.p90),
            **_ids(r.ids),
            "incidents_url": _link(by, r.key, start, end, {}),
        }
        for r in rows
    ]


async def volume(
    session: AsyncSession, version: int, by: str, bucket: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    key = group_key(by, bucket).label("key")
    stmt = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.sum(incidents.c.alert_count).label("alerts"),
            sa.func.array_agg(aggregate_order_by(incidents.c.incident_id, incidents.c.logged_at)).label("ids"),
        )
        .where(*_range(version, start, end))
        .group_by(key)
        .order_by(key)
    )
    return [
        {"key": r.key, "incidents": r.n, "alerts": int(r.alerts or 0), **_ids(r.ids),
         "incidents_url": _link(by, r.key, start, end, {})}
        for r in (await session.execute(stmt)).all()
    ]  # fmt: skip


async def backlog(session: AsyncSession, version: int, by: str, bucket: str, now: datetime) -> list[dict[str, Any]]:
    """Incidents not yet resolved, with their age (now - logged) in seconds."""
    key = group_key(by, bucket).label("key")
    age = sa.func.extract("epoch", sa.literal(now, sa.DateTime(timezone=True)) - incidents.c.logged_at)
    stmt = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.avg(age).label("mean"),
            sa.func.percentile_cont(0.5).within_group(age).label("median"),
            sa.func.max(age).label("oldest"),
            sa.func.array_agg(aggregate_order_by(incidents.c.incident_id, incidents.c.logged_at)).label("ids"),
        )
        .where(incidents.c.version == version, incidents.c.status.in_(("open", "acknowledged", "unknown")))
        .group_by(key)
        .order_by(key)
    )
    return [
        {
            "key": r.key,
            "open": r.n,
            "mean_age_seconds": _seconds(r.mean),
            "median_age_seconds": _seconds(r.median),
            "oldest_age_seconds": _seconds(r.oldest),
            **_ids(r.ids),
            "incidents_url": _link(by, r.key, None, None, {"status": "open,acknowledged"}),
        }
        for r in (await session.execute(stmt)).all()
    ]


async def rates(
    session: AsyncSession, version: int, by: str, bucket: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """Reopen rate (of incidents ever resolved) and escalation rate (of all incidents)."""
    key = group_key(by, bucket).label("key")
    reopened = incidents.c.reopen_count > 0
    ever_resolved = sa.or_(incidents.c.resolved_at.is_not(None), reopened)
    escalated = incidents.c.escalation_count > 0
    stmt = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.count().filter(ever_resolved).label("resolved"),
            sa.func.array_agg(incidents.c.incident_id).filter(reopened).label("reopened"),
            sa.func.array_agg(incidents.c.incident_id).filter(escalated).label("escalated"),
        )
        .where(*_range(version, start, end))
        .group_by(key)
        .order_by(key)
    )
    out = []
    for r in (await session.execute(stmt)).all():
        reopened_ids, escalated_ids = r.reopened or [], r.escalated or []
        out.append(
            {
                "key": r.key,
                "incidents": r.n,
                "resolved": r.resolved,
                "reopen_rate": round(len(reopened_ids) / r.resolved, 4) if r.resolved else None,
                "escalation_rate": round(len(escalated_ids) / r.n, 4) if r.n else None,
                "reopened_incident_ids": [str(i) for i in reopened_ids[:MAX_IDS]],
                "escalated_incident_ids": [str(i) for i in escalated_ids[:MAX_IDS]],
            }
        )
    return out


async def sla_compliance(
    session: AsyncSession, version: int, by: str, bucket: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """Share of incidents whose SLA was not breached, per group (the SLA stage sets sla_state)."""
    key = group_key(by, bucket).label("key")
    breached = incidents.c.sla_state == "breached"
    stmt = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.count().filter(incidents.c.sla_state == "warning").label("warned"),
            sa.func.array_agg(incidents.c.incident_id).filter(breached).label("breached"),
        )
        .where(*_range(version, start, end))
        .group_by(key)
        .order_by(key)
    )
    out = []
    for r in (await session.execute(stmt)).all():
        breached_ids = r.breached or []
        out.append(
            {
                "key": r.key,
                "incidents": r.n,
                "warned": r.warned,
                "breached": len(breached_ids),
                "compliance": round(1 - len(breached_ids) / r.n, 4) if r.n else None,
                "breached_incident_ids": [str(i) for i in breached_ids[:MAX_IDS]],
            }
        )
    return out


async def noisiest_sources(
    session: AsyncSession, version: int, limit: int, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """Alert sources ranked by the alerts they sent (first occurrences plus correlated repeats)."""
    alerts = sa.func.sum(incidents.c.alert_count).label("alerts")
    stmt = (
        sa.select(
            incidents.c.source,
            incidents.c.integration_id,
            incidents.c.service,
            alerts,
            sa.func.count().label("n"),
            sa.func.array_agg(aggregate_order_by(incidents.c.incident_id, incidents.c.alert_count.desc())).label("ids"),
        )
        .where(*_range(version, start, end), incidents.c.source.is_not(None))
        .group_by(incidents.c.source, incidents.c.integration_id, incidents.c.service)
        .order_by(alerts.desc(), incidents.c.source)
        .limit(limit)
    )
    return [
        {
            "source": r.source,
            "integration_id": r.integration_id,
            "service": r.service,
            "alerts": int(r.alerts or 0),
            "incidents": r.n,
            **_ids(r.ids),
        }
        for r in (await session.execute(stmt)).all()
    ]
