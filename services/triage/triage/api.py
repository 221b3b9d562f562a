"""HTTP API of the triage service: configuration (categories, rules, matrix, with history), dry
runs, per-incident decisions with their explanation, and overrides."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from opsledger.auth import Principal, require_roles
from opsledger.events.common import ImpactLevel, Severity
from opsledger.problems import FieldError, Problem, ProblemDetails
from opsledger.service import runtime_of
from triage import domain, store
from triage.handlers import Triage, VersionConflict
from triage.runtime import TriageRuntime

router = APIRouter(prefix="/v1", tags=["triage"])
read_access = require_roles("analyst", "responder", "manager", "admin")
admin_access = require_roles("admin")
dry_run_access = require_roles("admin", "analyst")
override_access = require_roles("manager", "admin")


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


def _unprocessable(exc: domain.ConfigError) -> Problem:
    # `where` names the field in the body: "rules[0] (id 'slow-db').when.title_regex", "matrix['1/1']".
    return Problem(422, str(exc), [FieldError(f"body.{exc.where}", exc.message)])


# --------------------------------------------------------------------------- answers


class _Out(BaseModel):
    """An answer as the routes below write it: a key the model lacks is an error, never dropped."""

    model_config = ConfigDict(extra="forbid")


class _Stored(BaseModel):
    """JSON this service stored (facts, decisions, overrides): rows an older release wrote may
    carry keys it has since dropped, and they are answered as stored."""

    model_config = ConfigDict(extra="allow")


# ISO 8601 text, as `datetime.isoformat()` writes it.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Priority = Literal["P1", "P2", "P3", "P4", "P5"]
MatrixCell = Annotated[str, Field(pattern=r"^[123]/[123]$", description="impact/urgency")]


class CategoryTree(_Out):
    categories: dict[str, list[str]] = Field(description="category -> its subcategories")
    fallback: str = Field(description="the category of an incident no rule categorizes")


class RuleSet(_Out):
    rules: list[domain.RuleSpec] = Field(description="in order: for each field, the first rule that sets it wins")


class PriorityMatrix(_Out):
    matrix: dict[MatrixCell, Priority]


class _Changed(_Out):
    version: int
    changed_by: str = Field(description="the actor, `user:<sub>`")
    comment: str | None


class _Version(_Changed):
    changed_at: Timestamp


class CategoriesChanged(_Changed, CategoryTree):
    pass


class RulesChanged(_Changed, RuleSet):
    pass


class MatrixChanged(_Changed, PriorityMatrix):
    pass


class CategoriesVersion(_Version, CategoryTree):
    pass


class RulesVersion(_Version, RuleSet):
    pass


class MatrixVersion(_Version, PriorityMatrix):
    pass


class CategoriesHistory(_Out):
    kind: Literal["categories"]
    versions: list[CategoriesVersion] = Field(description="newest first")


class RulesHistory(_Out):
    kind: Literal["rules"]
    versions: list[RulesVersion] = Field(description="newest first")


class MatrixHistory(_Out):
    kind: Literal["matrix"]
    versions: list[MatrixVersion] = Field(description="newest first")


Compared = Literal[
    "category",
    "subcategory",
    "affected_service",
    "priority",
    "impact",
    "urgency",
    "category_rule_id",
    "priority_rule_id",
]


class DecisionSummary(_Out):
    category: str
    subcategory: str | None
    affected_service: str | None
    category_rule_id: str | None
    matched_rules: list[str]
    priority: str
    impact: int
    urgency: int
    priority_rule_id: str | None


class SampleOutcome(_Out):
    current: DecisionSummary
    candidate: DecisionSummary
    changed: list[Compared]


class IncidentChange(_Out):
    incident_id: uuid.UUID
    title: str
    changed: list[Compared]
    current: DecisionSummary
    candidate: DecisionSummary
    overridden: list[Literal["category", "priority"]] = Field(description="set by hand: kept by either rule set")


class DryRunIncidents(_Out):
    evaluated: int
    would_change: int
    changes: list[IncidentChange]


class DryRunResult(_Out):
    current_rule_set_version: int
    sample: SampleOutcome | None
    incidents: DryRunIncidents


class CategoryOverrideOut(_Stored):
    category: str
    subcategory: str | None
    reason: str
    actor: str


class PriorityOverrideOut(_Stored):
    priority: str
    reason: str
    actor: str


class OverridesOut(_Stored):
    """Only the overrides in force are present."""

    category: CategoryOverrideOut | None = None
    priority: PriorityOverrideOut | None = None


class CategorizationOut(_Stored):
    category: str
    subcategory: str | None
    affected_service: str | None
    rule_id: str | None = Field(description="None: no rule set the category, the fallback applies")
    rule_set_version: int
    matched_rules: list[str] = []
    matched_on: str | None = None


class PrioritizationOut(_Stored):
    priority: str
    impact: int
    urgency: int
    impact_reasons: list[str]
    urgency_reasons: list[str]
    matrix_version: int
    impact_rule_id: str | None = None
    urgency_rule_id: str | None = None
    service_criticality: int | None = None


class AutomaticDecision(_Stored):
    categorization: CategorizationOut
    prioritization: PrioritizationOut


class FactsOut(_Stored):
    """What triage decided on, as the incident's events told it."""

    source: str
    title: str
    severity: Severity = Field(description="the highest seen so far")
    initial_severity: Severity
    description: str | None = None
    service: str | None = None
    environment: str | None = None
    labels: dict[str, str] = {}
    occurrence_count: int = 1
    business_impact: ImpactLevel | None = None
    urgency_hint: int | None = None


class Explanation(_Out):
    priority: str
    category: str


class IncidentTriage(_Out):
    incident_id: uuid.UUID
    title: str
    category: str
    subcategory: str | None
    priority: str
    major: bool
    overrides: OverridesOut
    explanation: Explanation
    automatic: AutomaticDecision
    facts: FactsOut
    updated_at: Timestamp


class OverrideResult(_Out):
    incident_id: uuid.UUID
    events: list[str] = Field(description="the types of the events the change emitted")


# Who may not, and what every route may answer besides; the stored rules answer as stored (what a
# rule leaves unset is absent), hence `response_model_exclude_unset` where rules are answered.
AUTH = ProblemDetails.responses(401, 403)
READ = ProblemDetails.responses(401, 403, 422)
CONFIG_CHANGE = ProblemDetails.responses(401, 403, 409, 422)
CURRENT_CONFIG = ProblemDetails.responses(401, 403, 503)
INCIDENT = ProblemDetails.responses(401, 403, 404, 422)


# --------------------------------------------------------------------------- configuration


def _version_json(row: Any) -> dict[str, Any]:
    return {
        "version": row.version,
        **row.body,
        "changed_by": row.actor,
        "changed_at": row.created_at.isoformat(),
        "comment": row.comment,
    }


async def _current(runtime: TriageRuntime, kind: str) -> dict[str, Any]:
    async with runtime.sessionmaker() as session:
        rows = await store.current_configs(session)
    if kind not in rows:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"no {kind} configuration yet (service starting)")
    return _version_json(rows[kind])


async def _history(runtime: TriageRuntime, kind: str, limit: int) -> dict[str, Any]:
    async with runtime.sessionmaker() as session:
        rows = await store.config_history(session, kind, limit)
    return {"kind": kind, "versions": [_version_json(r) for r in rows]}


async def _change(
    runtime: TriageRuntime, triage: Triage, kind: str, body_in: _ConfigBody, actor: str
) -> dict[str, Any]:
    raw, comment = body_in.model_dump(), body_in.comment
    try:
        async with runtime.sessionmaker() as session, session.begin():
            version, body = await triage.change_config(
                session, kind, raw, actor, comment, expected_version=body_in.expected_version
            )
    except domain.ConfigError as exc:
        raise _unprocessable(exc) from exc
    except VersionConflict as exc:
        raise Problem(status.HTTP_409_CONFLICT, str(exc), [FieldError("body.expected_version", str(exc))]) from exc
    return {"version": version, **body, "changed_by": actor, "comment": comment}


@router.get(
    "/{kind}/defaults",
    response_model=CategoryTree | RuleSet | PriorityMatrix,
    response_model_exclude_unset=True,
    responses=READ,
)
async def get_defaults(
    kind: Literal["categories", "rules", "matrix"], _: Principal = Depends(read_access)
) -> dict[str, Any]:
    """This release's defaults, as the body of a PUT: what a new install starts with. An existing
    install keeps the configuration it has; to adopt newer defaults, PUT categories, then rules."""
    return domain.default_bodies()[kind]


@router.get("/categories", response_model=CategoriesVersion, responses=CURRENT_CONFIG)
async def get_categories(
    runtime: TriageRuntime = Depends(runtime_of), _: Principal = Depends(read_access)
) -> dict[str, Any]:
    """The category tree in force."""
    return await _current(runtime, "categories")


@router.put("/categories", response_model=CategoriesChanged, responses=CONFIG_CHANGE)
async def put_categories(
    body: CategoriesBody,
    runtime: TriageRuntime = Depends(runtime_of),
    admin: Principal = Depends(admin_access),
) -> dict[str, Any]:
    """Replace the category tree (a new version; rules must still fit it)."""
    return await _change(runtime, runtime.triage, "categories", body, admin.actor)


@router.get("/categories/history", response_model=CategoriesHistory, responses=READ)
async def categories_history(
    limit: int = Query(100, ge=1, le=1000),
    runtime: TriageRuntime = Depends(runtime_of),
    _: Principal = Depends(read_access),
) -> dict[str, Any]:
    return await _history(runtime, "categories", limit)


@router.get("/rules", response_model=RulesVersion, response_model_exclude_unset=True, responses=CURRENT_CONFIG)
async def get_rules(
    runtime: TriageRuntime = Depends(runtime_of), _: Principal = Depends(read_access)
) -> dict[str, Any]:
    """The ordered rule set in force."""
    return await _current(runtime, "rules")


@router.put("/rules", response_model=RulesChanged, response_model_exclude_unset=True, responses=CONFIG_CHANGE)
async def put_rules(
    body: RulesBody,
    runtime: TriageRuntime = Depends(runtime_of),
    admin: Principal = Depends(admin_access),
) -> dict[str, Any]:
    """Replace the whole ordered rule set (a new version)."""
    return await _change(runtime, runtime.triage, "rules", body, admin.actor)


@router.get("/rules/history", response_model=RulesHistory, response_model_exclude_unset=True, responses=READ)
async def rules_history(
    limit: int = Query(100, ge=1, le=1000),
    runtime: TriageRuntime = Depends(runtime_of),
    _: Principal = Depends(read_access),
) -> dict[str, Any]:
    return await _history(runtime, "rules", limit)


@router.get("/matrix", response_model=MatrixVersion, responses=CURRENT_CONFIG)
async def get_matrix(
    runtime: TriageRuntime = Depends(runtime_of), _: Principal = Depends(read_access)
) -> dict[str, Any]:
    """The priority matrix in force: {"impact/urgency": "P1".."P5"}."""
    return await _current(runtime, "matrix")


@router.put("/matrix", response_model=MatrixChanged, responses=CONFIG_CHANGE)
async def put_matrix(
    body: MatrixBody,
    runtime: TriageRuntime = Depends(runtime_of),
    admin: Principal = Depends(admin_access),
) -> dict[str, Any]:
    """Replace the priority matrix (a new version)."""
    return await _change(runtime, runtime.triage, "matrix", body, admin.actor)


@router.get("/matrix/history", response_model=MatrixHistory, responses=READ)
async def matrix_history(
    limit: int = Query(100, ge=1, le=1000),
    runtime: TriageRuntime = Depends(runtime_of),
    _: Principal = Depends(read_access),
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


@router.post("/rules/dry-run", response_model=DryRunResult, responses=ProblemDetails.responses(401, 403, 422))
async def dry_run(
    body: DryRunBody,
    runtime: TriageRuntime = Depends(runtime_of),
    _: Principal = Depends(dry_run_access),
) -> dict[str, Any]:
    """Evaluate a candidate rule set against a sample alert and the incidents this service has
    seen, and report what would change. Nothing is stored or emitted."""
    triage = runtime.triage
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


@router.get(
    "/incidents/{incident_id}/triage",
    response_model=IncidentTriage,
    response_model_exclude_unset=True,
    responses=INCIDENT,
)
async def incident_triage(
    incident_id: uuid.UUID, runtime: TriageRuntime = Depends(runtime_of), _: Principal = Depends(read_access)
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


@router.post("/incidents/{incident_id}/override", response_model=OverrideResult, responses=INCIDENT)
async def override(
    incident_id: uuid.UUID,
    body: OverrideBody,
    runtime: TriageRuntime = Depends(runtime_of),
    manager: Principal = Depends(override_access),
) -> dict[str, Any]:
    """Set category and/or priority by hand; wins over automation until cleared."""
    if body.category is None and body.priority is None:
        raise Problem(
            422,
            "give 'category' and/or 'priority' to override",
            [FieldError("body.category", "give 'category' and/or 'priority'")],
        )
    if body.subcategory is not None and body.category is None:
        raise Problem(
            422, "field 'subcategory': needs 'category' too", [FieldError("body.subcategory", "needs 'category' too")]
        )
    try:
        async with runtime.sessionmaker() as session, session.begin():
            events = await runtime.triage.override(
                session,
                incident_id,
                category=body.category,
                subcategory=body.subcategory,
                priority=body.priority,
                reason=body.reason,
                actor=manager.actor,
            )
    except domain.ConfigError as exc:
        raise _unprocessable(exc) from exc
    if events is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"incident {incident_id} has not been triaged")
    return {"incident_id": str(incident_id), "events": [e.event_type for e in events]}


@router.delete(
    "/incidents/{incident_id}/override",
    response_model=OverrideResult,
    responses=ProblemDetails.responses(401, 403, 404, 409, 422),
)
async def clear_override(
    incident_id: uuid.UUID,
    field: Literal["category", "priority", "all"] = Query("all"),
    reason: str | None = Query(None, max_length=2000),
    runtime: TriageRuntime = Depends(runtime_of),
    manager: Principal = Depends(override_access),
) -> dict[str, Any]:
    """Clear an override (category, priority or all); automation decides again."""
    fields: set[str] = {"category", "priority"} if field == "all" else {field}
    try:
        async with runtime.sessionmaker() as session, session.begin():
            events = await runtime.triage.clear_override(session, incident_id, fields, reason, manager.actor)
    except LookupError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        raise Problem(status.HTTP_409_CONFLICT, message, [FieldError("query.field", message)]) from exc
    if events is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"incident {incident_id} has not been triaged")
    return {"incident_id": str(incident_id), "events": [e.event_type for e in events]}
