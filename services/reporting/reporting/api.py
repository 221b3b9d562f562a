"""HTTP API of the reporting service: incidents (list, detail, timeline, as_of), the audit chain
check, analytics, and the admin endpoints that rebuild the projections while live."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, create_model
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.auth import require_roles
from opsledger.problems import FieldError, Problem, ProblemDetails
from opsledger.service import runtime_of
from reporting import analytics, queries
from reporting.queries import BadParameter, IncidentFilter, parse_timestamp
from reporting.runtime import ReportingRuntime, ReportingRuntimeDep
from reporting.store import INCIDENT_COLUMNS, incidents, timeline
from reporting.versions import ProjectionManager, RebuildAlreadyRunning, active_version


class JSON(JSONResponse):
    """orjson, with anything it cannot encode natively (asyncpg's UUIDs, Decimals) as text. (A
    JSONResponse only so that /docs shows the routes' response models: `render` is all its own.)"""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS)


# --- the answers (documentation: the routes answer orjson-encoded rows, written below) ----------------


def _python_type(column: sa.Column[Any]) -> Any:
    kind = column.type
    python: Any = kind.python_type
    if isinstance(kind, sa.ARRAY):
        python = list[kind.item_type.python_type]  # type: ignore[name-defined]
    return python | None if column.nullable else python


def _row_fields(table: sa.Table, *skip: str) -> dict[str, Any]:
    """A pydantic field per column, in the table's order: the answers are its rows as they are."""
    return {c.name: (_python_type(c), ...) for c in table.columns if c.name not in skip}


# From the table itself, so the documentation cannot fall behind a migration.
Incident = create_model("Incident", __doc__="An incident's state.", **_row_fields(incidents, "version"))
IncidentAsOf = create_model(
    "IncidentAsOf",
    __base__=Incident,
    __doc__="An incident's state, now or as it was at `as_of`.",
    as_of=(datetime | None, Field(description="the `as_of` asked for; null: now")),
)


class IncidentPage(BaseModel):
    items: list[Incident]  # type: ignore[valid-type]
    next_cursor: str | None = Field(description="the next page's `cursor`; null on the last page")
    as_of: datetime | None


class LogPosition(BaseModel):
    topic: str
    partition: int
    offset: int


TimelineEntry = create_model(
    "TimelineEntry",
    __doc__="One event of the incident as the audit trail holds it; `hash` chains it to the entry before.",
    **{
        **_row_fields(timeline, "version", "topic", "partition", "offset"),
        "payload": (dict[str, Any], Field(description="the event's payload")),
        "position": (LogPosition, Field(description="where the event is on the log")),
    },
)


class Timeline(BaseModel):
    incident_id: uuid.UUID
    events: list[TimelineEntry]  # type: ignore[valid-type]


class ChainMismatch(BaseModel):
    seq: int
    problem: str
    event_id: uuid.UUID | None = None
    event_type: str | None = None
    incident_id: uuid.UUID | None = None


class ChainIntact(BaseModel):
    ok: Literal[True]
    version: int
    entries_checked: int
    head_hash: str


class ChainBroken(BaseModel):
    ok: Literal[False]
    version: int
    entries_checked: int
    first_mismatch: ChainMismatch


class _Ids(BaseModel):
    incident_ids: list[uuid.UUID] = Field(description="at most 500; `incidents_url` lists them all")
    incident_ids_truncated: bool
    incidents_url: str | None = Field(description="the incident list behind the group; null when no filter says it")


class DurationGroup(_Ids):
    """mtta, mttr"""

    key: str | None
    count: int
    mean_seconds: float | None
    median_seconds: float | None
    p90_seconds: float | None


class VolumeGroup(_Ids):
    """volume"""

    key: str | None
    incidents: int
    alerts: int


class BacklogGroup(_Ids):
    """backlog"""

    key: str | None
    open: int
    mean_age_seconds: float | None
    median_age_seconds: float | None
    oldest_age_seconds: float | None


class RatesGroup(BaseModel):
    """rates"""

    key: str | None
    incidents: int
    resolved: int
    reopened: int
    escalated: int
    reopen_rate: float | None
    escalation_rate: float | None
    reopened_incident_ids: list[uuid.UUID]
    escalated_incident_ids: list[uuid.UUID]
    incidents_url: str | None


class SlaTarget(BaseModel):
    target: str
    warned: int
    breached: int
    compliance: float | None
    breached_incident_ids: list[uuid.UUID]


class SlaGroup(BaseModel):
    """sla"""

    key: str | None
    incidents: int
    warned: int
    breached: int
    compliance: float | None
    breached_incident_ids: list[uuid.UUID]
    targets: list[SlaTarget]
    incidents_url: str | None


class SourceGroup(_Ids):
    """noisiest-sources"""

    source: str
    integration_id: str | None
    service: str | None
    alerts: int
    incidents: int


Metric = Literal["mtta", "mttr", "volume", "backlog", "rates", "sla", "noisiest-sources"]


class Analytics(BaseModel):
    metric: Metric
    by: str
    projection_version: int
    groups: list[DurationGroup | VolumeGroup | BacklogGroup | RatesGroup | SlaGroup | SourceGroup] = Field(
        description="one shape per metric (see each group's description)"
    )


class Rebuild(BaseModel):
    version: int
    status: Literal["running", "switched", "failed"]
    started_at: datetime | None
    finished_at: datetime | None
    detail: str | None
    applied: int | None = Field(default=None, description="log entries the new version has applied")
    live_applied: int | None = Field(default=None, description="log entries the live version has applied")


class RebuildStatus(BaseModel):
    active_version: int
    rebuild: Rebuild | None = Field(description="the latest rebuild; null if there has been none")


# Bad parameters (named; FastAPI's own checks too, see app.py: never a 422), who may not, no such
# thing; "4XX" stops FastAPI from documenting a 422 in its own shape.
READ_PROBLEMS = ProblemDetails.responses(400, 401, 403, 404, "4XX")
# `format=csv`: the same rows as CSV.
CSV: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}


# Reading: analysts, and the people who work incidents. Rebuilding the projections: admins.
READ_ROLES = ("analyst", "responder", "manager", "admin")
router = APIRouter(default_response_class=JSON, dependencies=[Depends(require_roles(*READ_ROLES))])
admin = APIRouter(
    default_response_class=JSON, prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_roles("admin"))]
)


async def session_of(runtime: ReportingRuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessionmaker() as session:
        yield session


def bad(exc: BadParameter) -> Problem:
    return Problem(400, str(exc), [FieldError(f"query.{exc.parameter}", exc.problem)])


def _incident_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        message = f"{value[:100]!r} is not a UUID"
        raise Problem(400, f"parameter 'incident_id': {message}", [FieldError("path.incident_id", message)]) from None


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


@router.get("/v1/incidents", tags=["incidents"], response_model=IncidentPage, responses={**READ_PROBLEMS, **CSV})
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


@router.get("/v1/incidents/{incident_id}", tags=["incidents"], response_model=IncidentAsOf, responses=READ_PROBLEMS)
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


@router.get(
    "/v1/incidents/{incident_id}/timeline",
    tags=["incidents"],
    response_model=Timeline,
    responses={**READ_PROBLEMS, **CSV},
)
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


@router.get(
    "/v1/audit/verify",
    tags=["audit"],
    response_model=ChainIntact | ChainBroken,
    responses=ProblemDetails.responses(401, 403),
)
async def verify_audit(session: AsyncSession = Depends(session_of)) -> JSON:
    """Recompute the audit hash chain; names the first entry that does not match."""
    version = await active_version(session)
    return JSON(await queries.verify_chain(session, version))


def _range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    first, last = parse_timestamp("from", start), parse_timestamp("to", end)
    if first and last and first >= last:
        raise BadParameter("from", "must be before 'to'")
    return first, last


@router.get("/v1/analytics/{metric}", tags=["analytics"], response_model=Analytics, responses=READ_PROBLEMS)
async def get_analytics(
    metric: str,
    by: str = Query("all", description=", ".join(analytics.DIMENSIONS)),
    bucket: str = Query("day", description=", ".join(analytics.BUCKETS)),
    start: str | None = Query(None, alias="from"),
    end: str | None = Query(None, alias="to"),
    limit: int = Query(10, ge=1, le=1000),
    runtime: ReportingRuntime = Depends(runtime_of),
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


def manager_of(runtime: ReportingRuntimeDep) -> ProjectionManager:
    if runtime.projections is None:
        raise HTTPException(503, "projections are not running yet", {"Retry-After": "1"})
    return runtime.projections


@admin.post(
    "/rebuild", status_code=202, response_model=RebuildStatus, responses=ProblemDetails.responses(401, 403, 409, 503)
)
async def start_rebuild(manager: ProjectionManager = Depends(manager_of)) -> JSON:
    """Replay the log from offset 0 into a new projection version; switch when caught up."""
    try:
        return JSON(await manager.request_rebuild(), status_code=202)
    except RebuildAlreadyRunning as exc:
        raise HTTPException(409, str(exc)) from None


@admin.get("/rebuild", response_model=RebuildStatus, responses=ProblemDetails.responses(401, 403, 503))
async def rebuild_status(manager: ProjectionManager = Depends(manager_of)) -> JSON:
    return JSON(await manager.status())
