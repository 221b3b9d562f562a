"""The events triage publishes, built from its decisions (so every one carries its explanation)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from opsledger.events import Envelope, EventPayload, new_event
from opsledger.events.triage import (
    CategoryTreeChanged,
    IncidentCategorized,
    IncidentPrioritized,
    IncidentReprioritized,
    PriorityInputs,
    PriorityMatrixChanged,
    TriageRulesChanged,
)
from triage import domain

PRODUCER = "triage"
SYSTEM_ACTOR = "system:triage"
CONFIG_SUBJECTS = {"categories": "triage.categories", "rules": "triage.rules", "matrix": "triage.matrix"}
# Seeded defaults get fixed ids: a second replica seeding at the same time stages the same event.
_DEFAULTS_NAMESPACE = uuid.UUID("0b6f8a4e-5b7c-4d0a-9a55-3c1f7e2d9b10")


def priority_inputs(facts: domain.Facts, p: domain.Prioritization) -> PriorityInputs:
    return PriorityInputs(
        impact=p.impact,
        urgency=p.urgency,
        impact_reasons=list(p.impact_reasons),
        urgency_reasons=list(p.urgency_reasons),
        severity=str(facts.severity),
        occurrence_count=facts.occurrence_count,
        impact_rule_id=p.impact_rule_id,
        urgency_rule_id=p.urgency_rule_id,
        service_criticality=p.service_criticality,
        business_impact=str(facts.business_impact) if facts.business_impact else None,
        urgency_hint=facts.urgency_hint,
    )


def category_inputs(facts: domain.Facts, c: domain.Categorization) -> dict[str, Any]:
    return {
        "source": facts.source,
        "service": facts.service,
        "environment": facts.environment,
        "severity": str(facts.severity),
        "labels": dict(facts.labels),
        "title": facts.title,
        "matched_rules": list(c.matched_rules),
        "matched_on": c.matched_on,
    }


def categorized(
    facts: domain.Facts, d: domain.Decision, override: domain.CategoryOverride | None, reason: str | None
) -> IncidentCategorized:
    c = d.categorization
    if override is not None:
        return IncidentCategorized(
            category=override.category,
            subcategory=override.subcategory,
            affected_service=c.affected_service,
            rule_id=None,
            rule_set_version=c.rule_set_version,
            overridden=True,
            reason=f"override by {override.actor}: {override.reason}",
            inputs=category_inputs(facts, c),
        )
    return IncidentCategorized(
        category=c.category,
        subcategory=c.subcategory,
        affected_service=c.affected_service,
        rule_id=c.rule_id,
        rule_set_version=c.rule_set_version,
        reason=reason or _category_reason(c),
        inputs=category_inputs(facts, c),
    )


def _category_reason(c: domain.Categorization) -> str:
    if c.rule_id is None:
        return "no rule matched: fallback category"
    return f"rule {c.rule_id} matched" + (f" ({c.matched_on})" if c.matched_on else "")


def prioritized(facts: domain.Facts, d: domain.Decision) -> IncidentPrioritized:
    p = d.prioritization
    return IncidentPrioritized(
        priority=p.priority,
        major=p.major,
        inputs=priority_inputs(facts, p),
        rule_id=p.rule_id,
        matrix_version=p.matrix_version,
        rule_set_version=d.categorization.rule_set_version,
        reason=f"impact {p.impact} x urgency {p.urgency} -> {p.priority} (matrix v{p.matrix_version})",
    )


def reprioritized(
    facts: domain.Facts,
    d: domain.Decision,
    previous: str,
    override: domain.PriorityOverride | None,
    reason: str,
) -> IncidentReprioritized:
    p = d.prioritization
    priority = override.priority if override else p.priority
    return IncidentReprioritized(
        priority=priority,
        previous_priority=previous,
        major=domain.is_major(priority),
        inputs=priority_inputs(facts, p),
        rule_id=None if override else p.rule_id,
        matrix_version=p.matrix_version,
        rule_set_version=d.categorization.rule_set_version,
        overridden=override is not None,
        reason=reason,
    )


def incident_event(
    payload: EventPayload,
    incident_id: uuid.UUID,
    *,
    at: datetime,
    actor: str = SYSTEM_ACTOR,
    cause: Envelope | None = None,
    correlation_id: str | None = None,
) -> Envelope:
    return new_event(
        payload,
        producer=PRODUCER,
        actor=actor,
        incident_id=incident_id,
        cause=cause,
        correlation_id=correlation_id,
        occurred_at=at,
    )


def config_payload(kind: str, version: int, body: dict[str, Any], comment: str | None) -> EventPayload:
    if kind == "categories":
        return CategoryTreeChanged(
            version=version, categories=body["categories"], fallback=body.get("fallback"), comment=comment
        )
    if kind == "rules":
        return TriageRulesChanged(version=version, rules=body["rules"], comment=comment)
    return PriorityMatrixChanged(version=version, matrix=body["matrix"], comment=comment)


def config_event(
    kind: str, version: int, body: dict[str, Any], *, actor: str, comment: str | None, at: datetime
) -> Envelope:
    event_id = uuid.uuid5(_DEFAULTS_NAMESPACE, f"{kind}:1") if version == 1 and actor == SYSTEM_ACTOR else None
    return new_event(
        config_payload(kind, version, body, comment),
        producer=PRODUCER,
        actor=actor,
        subject=CONFIG_SUBJECTS[kind],
        event_id=event_id,
        occurred_at=at,
    )
