"""HTTP API of the reporting service: incidents (list, detail, timeline, as_of), the audit chain
check, analytics, and the admin endpoints that rebuild the projections while live."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.auth import require_role
from opsledger.service import Runtime, runtime_of
from reporting import analytics, queries
from reporting.queries import BadParameter, IncidentFilter, parse_timestamp
from reporting.store import INCIDENT_COLUMNS
from reporting.versions import ProjectionManager, RebuildAlreadyRunning, active_version


class JSON(Response):
    """orjson, with anything it cannot encode natively (asyncpg's UUIDs, Decimals) as text."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS)


router = APIRouter(default_response_class=JSON, dependencies=[Depends(require_role("analyst"))])
admin = APIRouter(
    default_response_class=JSON, prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_role())]
)


async def session_of(runtime: Runtime = Depends(runtime_of)) -> AsyncIterator[AsyncSession]:
    async with runtime.sessionmaker() as session:
        yield session


def bad(exc: BadParameter) -> HTTPException:
    return HTTPException(400, {"parameter": exc.parameter, "error": str(exc)})


def _incident_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise HTTPException(400, {"parameter": "incident_id", "error": f"{value!r} is not a UUID"}) from None


# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): titles and
# services come from alert sources anyone can post to.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """One CSV cell: timestamps in ISO 8601, lists joined with ';', text that a spreadsheet would
    run as a formula prefixed with a quote (the csv module does the quoting and escaping)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        value = ";".join(str(v) for v in value)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return out.getvalue()


@router.get("/v1/incidents", tags=["incidents"])
async def list_incidents(
    request: Request,
    status: str | None = None,
    priority: str | None = None,
    category: str | None = None,
    team: str | None = None,
    service: str | None = None,
    source: str | None = None,
    dedup_key: str | None = None,
    logged_from: str | None = Query(None, alias="from", description="logged_at >= this (ISO 8601 with timezone)"),
    logged_to: str | None = Query(None, alias="to", description="logged_at < this"),
    sort: str = Query("-logged_at", description="logged_at | occurred_at | last_event_at | priority; - for desc"),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
    as_of: str | None = None,
    format: str = Query("json", pattern="^(json|csv)$"),
    session: AsyncSession = Depends(session_of),
) -> Response:
    """Incidents, filtered (comma-separated values: any of), sorted, a page at a time.
    Multi-valued filters take comma-separated values."""
    try:
        filters = IncidentFilter.parse(
            {
                "status": status,
                "priority": priority,
                "category": category,
                "team": team,
                "service": service,
                "source": source,
                "dedup_key": dedup_key,
            },
            logged_from,
            logged_to,
        )
        when = parse_timestamp("as_of", as_of)
        version = await active_version(session)
        rows, next_cursor = await queries.list_incidents(session, version, filters, sort, limit, cursor, when)
    except BadParameter as exc:
        raise bad(exc) from None
    headers = {}
    if next_cursor:
        params = dict(request.query_params)
        params["cursor"] = next_cursor
        headers["Link"] = f'</v1/incidents?{urlencode(params)}>; rel="next"'
    if format == "csv":
        return Response(_csv(rows, INCIDENT_COLUMNS), media_type="text/csv; charset=utf-8", headers=headers)
    body = {"items": rows, "next_cursor": next_cursor, "as_of": when.isoformat() if when else None}
    return JSON(body, headers=headers)


@router.get("/v1/incidents/{incident_id}", tags=["incidents"])
async def get_incident(incident_id: str, as_of: str | None = None, session: AsyncSession = Depends(session_of)) -> JSON:
    """An incident's current state, or its state as it was at `as_of`."""
    ident = _incident_id(incident_id)
    try:
        when = parse_timestamp("as_of", as_of)
    except BadParameter as exc:
        raise bad(exc) from None
    version = await active_version(session)
    row = await queries.get_incident(session, version, ident, when)
    if row is None:
        if when is not None and await queries.incident_exists(session, version, ident):
            raise HTTPException(404, f"incident {ident} did not exist yet at {when.isoformat()}")
        raise HTTPException(404, f"incident {ident} not found")
    return JSON({**row, "as_of": when.isoformat() if when else None})


@router.get("/v1/incidents/{incident_id}/timeline", tags=["incidents"])
async def get_timeline(
    incident_id: str, format: str = Query("json", pattern="^(json|csv)$"), session: AsyncSession = Depends(session_of)
) -> Response:
    """Every event of the incident in log order, with actor, time, producer, causation, position
    and its audit hash."""
    ident = _incident_id(incident_id)
    version = await active_version(session)
    entries = await queries.incident_timeline(session, version, ident)
    if not entries:
        raise HTTPException(404, f"incident {ident} not found")
    if format == "csv":
        columns = ["seq", "occurred_at", "event_type", "schema_version", "decode_status", "producer", "actor",
                   "event_id", "causation_id", "correlation_id", "hash"]  # fmt: skip
        return Response(_csv(entries, columns), media_type="text/csv; charset=utf-8")
    return JSON({"incident_id": str(ident), "events": entries})


@router.get("/v1/audit/verify", tags=["audit"])
async def verify_audit(session: AsyncSession = Depends(session_of)) -> JSON:
    """Recompute the audit hash chain; names the first entry that does not match."""
    version = await active_version(session)
    return JSON(await queries.verify_chain(session, version))


def _range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    first, last = parse_timestamp("from", start), parse_timestamp("to", end)
    if first and last and first >= last:
        raise BadParameter("from", "must be before 'to'")
    return first, last


@router.get("/v1/analytics/{metric}", tags=["analytics"])
async def get_analytics(
    metric: str,
    by: str = Query("all", description=", ".join(analytics.DIMENSIONS)),
    bucket: str = Query("day", description=", ".join(analytics.BUCKETS)),
    start: str | None = Query(None, alias="from"),
    end: str | None = Query(None, alias="to"),
    limit: int = Query(10, ge=1, le=1000),
    runtime: Runtime = Depends(runtime_of),
    session: AsyncSession = Depends(session_of),
) -> JSON:
    """mtta | mttr | volume | backlog | rates | sla | noisiest-sources, grouped `by` a dimension
    (time buckets: by=bucket&bucket=day). Each group lists the incident ids behind it."""
    try:
        first, last = _range(start, end)
        version = await active_version(session)
        groups: list[dict[str, Any]]
        if metric in ("mtta", "mttr"):
            groups = await analytics.durations(session, version, metric, by, bucket, first, last)
        elif metric == "volume":
            groups = await analytics.volume(session, version, by, bucket, first, last)
        elif metric == "backlog":
            groups = await analytics.backlog(session, version, by, bucket, runtime.clock.now())
        elif metric == "rates":
            groups = await analytics.rates(session, version, by, bucket, first, last)
        elif metric == "sla":
            groups = await analytics.sla_compliance(session, version, by, bucket, first, last)
        elif metric == "noisiest-sources":
            groups = await analytics.noisiest_sources(session, version, limit, first, last)
        else:
            raise HTTPException(
                404, f"unknown analytics {metric!r}: mtta, mttr, volume, backlog, rates, sla, noisiest-sources"
            )
    except BadParameter as exc:
        raise bad(exc) from None
    return JSON({"metric": metric, "by": by, "projection_version": version, "groups": groups})


def manager_of(runtime: Runtime = Depends(runtime_of)) -> ProjectionManager:
    manager = runtime.extras.get("projections")
    if not isinstance(manager, ProjectionManager):
        raise HTTPException(503, "projections are not running yet", {"Retry-After": "1"})
    return manager


@admin.post("/rebuild", status_code=202)
async def start_rebuild(manager: ProjectionManager = Depends(manager_of)) -> dict[str, Any]:
    """Replay the log from offset 0 into a new projection version; switch when caught up."""
    try:
        return await manager.request_rebuild()
    except RebuildAlreadyRunning as exc:
        raise HTTPException(409, str(exc)) from None


@admin.get("/rebuild")
async def rebuild_status(manager: ProjectionManager = Depends(manager_of)) -> dict[str, Any]:
    return await manager.status()
