"""HTTP API of the triage service: configuration (categories, rules, matrix, with history), dry
runs, per-incident decisions with their explanation, and overrides."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from opsledger.auth import require_role
from opsledger.events.common import ImpactLevel, Severity
from opsledger.service import Runtime, runtime_of
from triage import domain, store
from triage.handlers import Triage, VersionConflict

router = APIRouter(prefix="/v1", tags=["triage"])
read_access = require_role("analyst")
admin_access = require_role("admin")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ConfigBody(_Body):
    comment: str | None = Field(default=None, max_length=1000)
    # Optimistic concurrency: the version this change was made from. When another admin has put
    # a newer version in force meanwhile, the change is refused (409) instead of silently undoing theirs.
    expected_version: StrictInt | None = Field(default=None, ge=1)


class CategoriesBody(_ConfigBody):
    categories: dict[str, list[str]]
    fallback: str | None = None


class RulesBody(_ConfigBody):
    # Parsed by the domain, not here, so a fault is reported by rule position and id.
    rules: list[dict[str, Any]]


class MatrixBody(_ConfigBody):
    matrix: dict[str, Any]


class SampleAlert(_Body):
    """An alert as IncidentLogged would carry it (only what triage looks at)."""

    # The same bounds intake puts on what it logs.
    source: str = Field(default="generic", min_length=1, max_length=255)
    title: str = Field(min_length=1, max_length=1024)
    description: str | None = Field(default=None, max_length=64 * 1024)
    service: str | None = Field(default=None, max_length=255)
    environment: str | None = Field(default=None, max_length=255)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    severity: Severity = Severity.MEDIUM
    business_impact: ImpactLevel | None = None
    urgency_hint: StrictInt | None = Field(default=None, ge=1, le=3)
    occurrence_count: StrictInt = Field(default=1, ge=1, le=1_000_000_000)

    def facts(self) -> domain.Facts:
        return domain.Facts(
            source=self.source,
            title=self.title,
            severity=self.severity,
            initial_severity=self.severity,
            description=self.description,
            service=self.service,
            environment=self.environment,
            labels=self.labels,
            occurrence_count=self.occurrence_count,
            business_impact=self.business_impact,
            urgency_hint=self.urgency_hint,
        )


class DryRunBody(_Body):
    rules: list[dict[str, Any]]
    sample: SampleAlert | None = None
    include_incidents: StrictBool = True
    limit: StrictInt | None = Field(default=None, ge=1)


class OverrideBody(_Body):
    category: str | None = Field(default=None, min_length=1, max_length=100)
    subcategory: str | None = Field(default=None, min_length=1, max_length=100)
    priority: str | None = Field(default=None, max_length=10)
    reason: str = Field(min_length=1, max_length=2000)


def _triage(runtime: Runtime) -> Triage:
    triage: Triage | None = runtime.extras.get("triage")
    if triage is None:  # the API answers before the boot sequence has wired the write side
        raise HTTPException(503, "triage is starting; retry shortly", {"Retry-After": "2"})
    return triage


def _unprocessable(exc: domain.ConfigError) -> HTTPException:
    return HTTPException(422, detail=str(exc))


# --------------------------------------------------------------------------- configuration


def _version_json(row: Any) -> dict[str, Any]:
    return {
        "version": row.version,
        **row.body,
        "changed_by": row.actor,
        "changed_at": row.created_at.isoformat(),
        "comment": row.comment,
    }


async def _current(runtime: Runtime, kind: str) -> dict[str, Any]:
    async with runtime.sessionmaker() as session:
        rows = await store.current_configs(session)
    if kind not in rows:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"no {kind} configuration yet (service starting)")
    return _version_json(rows[kind])


async def _history(runtime: Runtime, kind: str, limit: int) -> dict[str, Any]:
    async with runtime.sessionmaker() as session:
        rows = await store.config_history(session, kind, limit)
    return {"kind": kind, "versions": [_version_json(r) for r in rows]}


async def _change(runtime: Runtime, kind: str, body_in: _ConfigBody, actor: str) -> dict[str, Any]:
    raw, comment = body_in.model_dump(), body_in.comment
    try:
        async with runtime.sessionmaker() as session, session.begin():
            version, body = await _triage(runtime).change_config(
                session, kind, raw, actor, comment, expected_version=body_in.expected_version
            )
    except domain.ConfigError as exc:
        raise _unprocessable(exc) from exc
    except VersionConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    runtime.outbox.wake()
    return {"version": version, **body, "changed_by": actor, "comment": comment}


@router.get("/{kind}/defaults")
async def get_defaults(kind: Literal["categories", "rules", "matrix"], _: str = Depends(read_access)) -> dict[str, Any]:
    """This release's defaults, as the body of a PUT: what a new install starts with. An existing
    install keeps the configuration it has; to adopt newer defaults, PUT categories, then rules."""
    return domain.default_bodies()[kind]


@router.get("/categories")
async def get_categories(runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)) -> dict[str, Any]:
    """The category tree in force."""
    return await _current(runtime, "categories")


@router.put("/categories")
async def put_categories(
    body: CategoriesBody, runtime: Runtime = Depends(runtime_of), actor: str = Depends(admin_access)
) -> dict[str, Any]:
    """Replace the category tree (a new version; rules must still fit it)."""
    return await _change(runtime, "categories", body, actor)


@router.get("/categories/history")
async def categories_history(
    limit: int = Query(100, ge=1, le=1000), runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)
) -> dict[str, Any]:
    return await _history(runtime, "categories", limit)


@router.get("/rules")
async def get_rules(runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)) -> dict[str, Any]:
    """The ordered rule set in force."""
    return await _current(runtime, "rules")


@router.put("/rules")
async def put_rules(
    body: RulesBody, runtime: Runtime = Depends(runtime_of), actor: str = Depends(admin_access)
) -> dict[str, Any]:
    """Replace the whole ordered rule set (a new version)."""
    return await _change(runtime, "rules", body, actor)


@router.get("/rules/history")
async def rules_history(
    limit: int = Query(100, ge=1, le=1000), runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)
) -> dict[str, Any]:
    return await _history(runtime, "rules", limit)


@router.get("/matrix")
async def get_matrix(runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)) -> dict[str, Any]:
    """The priority matrix in force: {"impact/urgency": "P1".."P5"}."""
    return await _current(runtime, "matrix")


@router.put("/matrix")
async def put_matrix(
    body: MatrixBody, runtime: Runtime = Depends(runtime_of), actor: str = Depends(admin_access)
) -> dict[str, Any]:
    """Replace the priority matrix (a new version)."""
    return await _change(runtime, "matrix", body, actor)


@router.get("/matrix/history")
async def matrix_history(
    limit: int = Query(100, ge=1, le=1000), runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)
) -> dict[str, Any]:
    return await _history(runtime, "matrix", limit)


# --------------------------------------------------------------------------- dry run


def _summary(d: domain.Decision, eff: domain.Effective | None = None) -> dict[str, Any]:
    c, p = d.categorization, d.prioritization
    return {
        "category": eff.category if eff else c.category,
        "subcategory": eff.subcategory if eff else c.subcategory,
        "affected_service": c.affected_service,
        "category_rule_id": c.rule_id,
        "matched_rules": list(c.matched_rules),
        "priority": eff.priority if eff else p.priority,
        "impact": p.impact,
        "urgency": p.urgency,
        "priority_rule_id": p.rule_id,
    }


_COMPARED = ("category", "subcategory", "affected_service", "priority", "impact", "urgency")


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [k for k in (*_COMPARED, "category_rule_id", "priority_rule_id") if before[k] != after[k]]


@router.post("/rules/dry-run")
async def dry_run(
    body: DryRunBody, runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)
) -> dict[str, Any]:
    """Evaluate a candidate rule set against a sample alert and the incidents this service has
    seen, and report what would change. Nothing is stored or emitted."""
    triage = _triage(runtime)
    limit = min(body.limit or triage.settings.dry_run_max_incidents, triage.settings.dry_run_max_incidents)
    async with runtime.sessionmaker() as session:
        current = await triage.policy(session)
        try:
            rules = domain.build_rules(0, domain.parse_rules(body.rules), current.tree)
        except domain.ConfigError as exc:
            raise _unprocessable(exc) from exc
        rows = await store.recent_incidents(session, limit) if body.include_incidents else []
    candidate = replace(current, rules=rules)
    result: dict[str, Any] = {"current_rule_set_version": current.rule_set.version, "sample": None}
    if body.sample is not None:
        facts = body.sample.facts()
        before, after = _summary(domain.evaluate(facts, current)), _summary(domain.evaluate(facts, candidate))
        result["sample"] = {"current": before, "candidate": after, "changed": _differences(before, after)}
    changes = []
    for row in rows:
        facts = domain.Facts.from_json(row.facts)
        overrides = store.overrides_from(row.overrides)
        old_d, new_d = domain.evaluate(facts, current), domain.evaluate(facts, candidate)
        before = _summary(old_d, domain.effective(old_d, overrides))
        after = _summary(new_d, domain.effective(new_d, overrides))
        changed = _differences(before, after)
        if changed:
            changes.append(
                {
                    "incident_id": str(row.incident_id),
                    "title": row.title,
                    "changed": changed,
                    "current": before,
                    "candidate": after,
                    "overridden": sorted(store.overrides_json(overrides)),
                }
            )
    result["incidents"] = {"evaluated": len(rows), "would_change": len(changes), "changes": changes}
    return result


# --------------------------------------------------------------------------- incidents


@router.get("/incidents/{incident_id}/triage")
async def incident_triage(
    incident_id: uuid.UUID, runtime: Runtime = Depends(runtime_of), _: str = Depends(read_access)
) -> dict[str, Any]:
    """The incident's triage decision in force, with the automatic decision and its explanation."""
    async with runtime.sessionmaker() as session:
        row = await store.load_incident(session, incident_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"incident {incident_id} has not been triaged")
    automatic = row.decision
    p, c = automatic["prioritization"], automatic["categorization"]
    overrides = row.overrides or {}
    if "priority" in overrides:
        o = overrides["priority"]
        why = f"{row.priority} set by {o['actor']}: {o['reason']} (automation says {p['priority']})"
    else:
        why = (
            f"{p['priority']}: impact {p['impact']} ({'; '.join(p['impact_reasons'])}) x urgency {p['urgency']} "
            f"({'; '.join(p['urgency_reasons'])}) through matrix v{p['matrix_version']}"
        )
    category_why = (
        f"set by {overrides['category']['actor']}: {overrides['category']['reason']}"
        if "category" in overrides
        else (
            f"rule {c['rule_id']} (rule set v{c['rule_set_version']})"
            + (f": {c['matched_on']}" if c.get("matched_on") else "")
            if c["rule_id"]
            else "no rule matched"
        )
    )
    return {
        "incident_id": str(row.incident_id),
        "title": row.title,
        "category": row.category,
        "subcategory": row.subcategory,
        "priority": row.priority,
        "major": domain.is_major(row.priority),
        "overrides": overrides,
        "explanation": {"priority": why, "category": category_why},
        "automatic": automatic,
        "facts": row.facts,
        "updated_at": row.updated_at.isoformat(),
    }


@router.post("/incidents/{incident_id}/override")
async def override(
    incident_id: uuid.UUID,
    body: OverrideBody,
    runtime: Runtime = Depends(runtime_of),
    actor: str = Depends(admin_access),
) -> dict[str, Any]:
    """Set category and/or priority by hand; wins over automation until cleared."""
    if body.category is None and body.priority is None:
        raise HTTPException(422, "give 'category' and/or 'priority' to override")
    if body.subcategory is not None and body.category is None:
        raise HTTPException(422, "field 'subcategory': needs 'category' too")
    try:
        async with runtime.sessionmaker() as session, session.begin():
            events = await _triage(runtime).override(
                session,
                incident_id,
                category=body.category,
                subcategory=body.subcategory,
                priority=body.priority,
                reason=body.reason,
                actor=actor,
            )
    except domain.ConfigError as exc:
        raise _unprocessable(exc) from exc
    if events is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"incident {incident_id} has not been triaged")
    runtime.outbox.wake()
    return {"incident_id": str(incident_id), "events": [e.event_type for e in events]}


@router.delete("/incidents/{incident_id}/override")
async def clear_override(
    incident_id: uuid.UUID,
    field: Literal["category", "priority", "all"] = Query("all"),
    reason: str | None = Query(None, max_length=2000),
    runtime: Runtime = Depends(runtime_of),
    actor: str = Depends(admin_access),
) -> dict[str, Any]:
    """Clear an override (category, priority or all); automation decides again."""
    fields: set[str] = {"category", "priority"} if field == "all" else {field}
    try:
        async with runtime.sessionmaker() as session, session.begin():
            events = await _triage(runtime).clear_override(session, incident_id, fields, reason, actor)
    except LookupError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if events is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"incident {incident_id} has not been triaged")
    runtime.outbox.wake()
    return {"incident_id": str(incident_id), "events": [e.event_type for e in events]}
