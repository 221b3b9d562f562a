"""Analytics over the active incidents projection. Every group carries the ids of the incidents
behind its figures, so any number can be traced back to incidents and their timelines."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from reporting.domain import BACKLOG_STATUSES
from reporting.queries import BadParameter
from reporting.store import incidents

DIMENSIONS = ("priority", "category", "team", "service", "source", "bucket", "all")
BUCKETS = ("hour", "day", "week", "month")
MAX_IDS = 500  # per group; the incidents_url lists all of them
BUCKET_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'


def group_key(by: str, bucket: str) -> sa.ColumnElement[Any]:
    if by not in DIMENSIONS:
        raise BadParameter("by", f"{by!r} is not one of {', '.join(DIMENSIONS)}")
    if bucket not in BUCKETS:
        raise BadParameter("bucket", f"{bucket!r} is not one of {', '.join(BUCKETS)}")
    if by == "all":
        return sa.literal("all")
    if by == "bucket":
        return sa.func.to_char(
            sa.func.date_trunc(bucket, sa.func.timezone("UTC", incidents.c.logged_at)), BUCKET_FORMAT
        )
    return incidents.c[by]


def _range(version: int, start: datetime | None, end: datetime | None) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = [incidents.c.version == version]
    if start is not None:
        where.append(incidents.c.logged_at >= start)
    if end is not None:
        where.append(incidents.c.logged_at < end)
    return where


def bucket_range(key: str, bucket: str) -> tuple[datetime, datetime]:
    """[start, end) of the time bucket named by `key` (as group_key formats it)."""
    start = datetime.fromisoformat(key.replace("Z", "+00:00"))
    if bucket == "month":
        year, month = divmod(start.month, 12)  # month 12 -> January of the next year
        return start, start.replace(year=start.year + year, month=month + 1)
    return start, start + {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[bucket]


def _link(
    by: str,
    key: Any,
    start: datetime | None,
    end: datetime | None,
    extra: dict[str, str],
    bucket: str = "day",
) -> str | None:
    """The incident list behind a group (the same filters, and the bucket's time range)."""
    params = dict(extra)
    if by in ("priority", "category", "team", "service", "source"):
        if key is None:
            return None  # "no value" cannot be expressed as a filter; the ids are listed instead
        params[by] = str(key)
    if by == "bucket":
        if key is None:
            return None  # not logged yet: no logged_at to filter on
        first, last = bucket_range(key, bucket)
        start, end = max(first, start) if start else first, min(last, end) if end else last
    if start:
        params["from"] = start.isoformat()
    if end:
        params["to"] = end.isoformat()
    return "/v1/incidents" + ("?" + urlencode(params) if params else "")


def _some_ids(
    order_by: sa.ColumnElement[Any] | None = None, where: sa.ColumnElement[bool] | None = None
) -> sa.ColumnElement[Any]:
    """The first MAX_IDS incident ids of a group, cut in the database (a big group's ids are not
    shipped to Python only to be dropped)."""
    column = incidents.c.incident_id
    agg: sa.ColumnElement[Any] = sa.func.array_agg(
        aggregate_order_by(column, order_by) if order_by is not None else column
    )
    if where is not None:
        agg = agg.filter(where)
    return sa.type_coerce(agg, pg.ARRAY(pg.UUID(as_uuid=True)))[1:MAX_IDS]


def _ids(ids: list[Any] | None, total: int) -> dict[str, Any]:
    return {"incident_ids": [str(i) for i in ids or []], "incident_ids_truncated": total > MAX_IDS}


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
    """MTTA (logged -> acknowledged) or MTTR (logged -> resolved): mean, median, p90 in seconds,
    over the incidents logged in [start, end) that have been acknowledged / are resolved now."""
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
            _some_ids(incidents.c.logged_at).label("ids"),
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
            **_ids(r.ids, r.n),
            "incidents_url": _link(by, r.key, start, end, {}, bucket),
        }
        for r in rows
    ]


async def volume(
    session: AsyncSession, version: int, by: str, bucket: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """Incidents logged, and the alerts behind them (first occurrences plus correlated repeats)."""
    key = group_key(by, bucket).label("key")
    stmt = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.sum(incidents.c.alert_count).label("alerts"),
            _some_ids(incidents.c.logged_at).label("ids"),
        )
        .where(*_range(version, start, end))
        .group_by(key)
        .order_by(key)
    )
    return [
        {"key": r.key, "incidents": r.n, "alerts": int(r.alerts or 0), **_ids(r.ids, r.n),
         "incidents_url": _link(by, r.key, start, end, {}, bucket)}
        for r in (await session.execute(stmt)).all()
    ]  # fmt: skip


async def backlog(session: AsyncSession, version: int, by: str, bucket: str, now: datetime) -> list[dict[str, Any]]:
    """Incidents not yet resolved (as of now), with their age (now - logged) in seconds."""
    key = group_key(by, bucket).label("key")
    age = sa.func.extract("epoch", sa.literal(now, sa.DateTime(timezone=True)) - incidents.c.logged_at)
    stmt = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.avg(age).label("mean"),
            sa.func.percentile_cont(0.5).within_group(age).label("median"),
            sa.func.max(age).label("oldest"),
            _some_ids(incidents.c.logged_at).label("ids"),
        )
        .where(incidents.c.version == version, incidents.c.status.in_(BACKLOG_STATUSES))
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
            **_ids(r.ids, r.n),
            "incidents_url": _link(by, r.key, None, None, {"status": ",".join(BACKLOG_STATUSES)}, bucket),
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
            sa.func.count().filter(reopened).label("n_reopened"),
            sa.func.count().filter(escalated).label("n_escalated"),
            _some_ids(incidents.c.logged_at, reopened).label("reopened"),
            _some_ids(incidents.c.logged_at, escalated).label("escalated"),
        )
        .where(*_range(version, start, end))
        .group_by(key)
        .order_by(key)
    )
    return [
        {
            "key": r.key,
            "incidents": r.n,
            "resolved": r.resolved,
            "reopened": r.n_reopened,
            "escalated": r.n_escalated,
            "reopen_rate": round(r.n_reopened / r.resolved, 4) if r.resolved else None,
            "escalation_rate": round(r.n_escalated / r.n, 4) if r.n else None,
            "reopened_incident_ids": [str(i) for i in r.reopened or []],
            "escalated_incident_ids": [str(i) for i in r.escalated or []],
            "incidents_url": _link(by, r.key, start, end, {}, bucket),
        }
        for r in (await session.execute(stmt)).all()
    ]


async def sla_compliance(
    session: AsyncSession, version: int, by: str, bucket: str, start: datetime | None, end: datetime | None
) -> list[dict[str, Any]]:
    """Share of incidents that did not breach their SLA, per group: overall (any target) and per
    target (e.g. acknowledge, resolve). An incident no SLA event named counts as compliant for
    every target; the SLA stage's SlaWarning / SlaBreached events carry the target."""
    key = group_key(by, bucket).label("key")
    breached = sa.func.cardinality(incidents.c.sla_breached) > 0
    totals = (
        sa.select(
            key,
            sa.func.count().label("n"),
            sa.func.count().filter(sa.func.cardinality(incidents.c.sla_warned) > 0).label("warned"),
            sa.func.count().filter(breached).label("breached"),
            _some_ids(incidents.c.logged_at, breached).label("ids"),
        )
        .where(*_range(version, start, end))
        .group_by(key)
        .order_by(key)
    )
    # One row per (group, target an incident of the group was warned about or breached).
    touched = (
        sa.select(sa.func.unnest(sa.func.array_cat(incidents.c.sla_warned, incidents.c.sla_breached)).label("target"))
        .distinct()
        .lateral("touched")
    )
    target = touched.c.target
    hit = target == sa.func.any(incidents.c.sla_breached)
    per_target = (
        sa.select(
            key,
            target,
            sa.func.count().filter(target == sa.func.any(incidents.c.sla_warned)).label("warned"),
            sa.func.count().filter(hit).label("breached"),
            _some_ids(incidents.c.logged_at, hit).label("ids"),
        )
        .select_from(incidents.join(touched, sa.true()))
        .where(*_range(version, start, end))
        .group_by(key, target)
    )
    by_group: dict[Any, dict[str, Any]] = {}
    for r in (await session.execute(per_target)).all():
        by_group.setdefault(r.key, {})[r.target] = r
    targets = sorted({t for group in by_group.values() for t in group})
    out = []
    for r in (await session.execute(totals)).all():
        seen = by_group.get(r.key, {})
        per: list[dict[str, Any]] = []
        for name in targets:
            t = seen.get(name)
            warned, hits = (t.warned, t.breached) if t else (0, 0)
            per.append({"target": name, "warned": warned, "breached": hits,
                        "compliance": round(1 - hits / r.n, 4) if r.n else None,
                        "breached_incident_ids": [str(i) for i in (t.ids if t else None) or []]})  # fmt: skip
        out.append(
            {
                "key": r.key,
                "incidents": r.n,
                "warned": r.warned,
                "breached": r.breached,
                "compliance": round(1 - r.breached / r.n, 4) if r.n else None,
                "breached_incident_ids": [str(i) for i in r.ids or []],
                "targets": per,
                "incidents_url": _link(by, r.key, start, end, {}, bucket),
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
            _some_ids(incidents.c.alert_count.desc()).label("ids"),
        )
        .where(*_range(version, start, end), incidents.c.source.is_not(None))
        .group_by(incidents.c.source, incidents.c.integration_id, incidents.c.service)
        .order_by(alerts.desc(), incidents.c.source, incidents.c.integration_id, incidents.c.service)
        .limit(limit)
    )
    return [
        {
            "source": r.source,
            "integration_id": r.integration_id,
            "service": r.service,
            "alerts": int(r.alerts or 0),
            "incidents": r.n,
            **_ids(r.ids, r.n),
            "incidents_url": _link("source", r.source, start, end, {"service": r.service} if r.service else {}),
        }
        for r in (await session.execute(stmt)).all()
    ]
