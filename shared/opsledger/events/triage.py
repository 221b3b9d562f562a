"""Events produced by the triage service (categorization and prioritization)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from opsledger.events.registry import EventPayload, Stream, event


class PriorityInputs(EventPayload):
    """Everything a priority was computed from, so "why P2?" is answered by the event alone."""

    impact: int = Field(ge=1, le=3)
    urgency: int = Field(ge=1, le=3)
    impact_reasons: list[str] = Field(default_factory=list)
    urgency_reasons: list[str] = Field(default_factory=list)
    severity: str | None = None
    occurrence_count: int = 1
    # Added (optional) so the explanation names its sources without a second lookup.
    impact_rule_id: str | None = None
    urgency_rule_id: str | None = None
    service_criticality: int | None = Field(default=None, ge=1, le=3)
    business_impact: str | None = None  # high | medium | low, as the reporter stated it
    urgency_hint: int | None = Field(default=None, ge=1, le=3)


@event("IncidentCategorized", 1, Stream.INCIDENTS)
class IncidentCategorized(EventPayload):
    category: str
    subcategory: str | None = None
    affected_service: str | None = None
    rule_id: str | None = None  # None: no rule matched, default category
    rule_set_version: int
    overridden: bool = False  # set by a person, wins over automation until cleared
    reason: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)


@event("IncidentPrioritized", 1, Stream.INCIDENTS)
class IncidentPrioritized(EventPayload):
    priority: str  # P1..P5
    major: bool  # P1 marks a major incident
    inputs: PriorityInputs
    rule_id: str | None = None
    matrix_version: int
    overridden: bool = False
    reason: str | None = None
    rule_set_version: int | None = None


@event("IncidentReprioritized", 1, Stream.INCIDENTS)
class IncidentReprioritized(EventPayload):
    priority: str
    previous_priority: str
    major: bool
    inputs: PriorityInputs
    rule_id: str | None = None
    matrix_version: int
    overridden: bool = False
    rule_set_version: int | None = None
    reason: str  # e.g. "correlated alert raised severity to critical", "override by ...", "override cleared"


@event("TriageOverrideCleared", 1, Stream.INCIDENTS)
class TriageOverrideCleared(EventPayload):
    field: str  # category | priority
    reason: str | None = None


@event("CategoryTreeChanged", 1, Stream.CONFIG)
class CategoryTreeChanged(EventPayload):
    version: int
    categories: dict[str, list[str]]  # category -> subcategories
    fallback: str | None = None  # the category of an incident no rule classifies
    comment: str | None = None


@event("TriageRulesChanged", 1, Stream.CONFIG)
class TriageRulesChanged(EventPayload):
    version: int
    rules: list[dict[str, Any]]
    comment: str | None = None


@event("PriorityMatrixChanged", 1, Stream.CONFIG)
class PriorityMatrixChanged(EventPayload):
    version: int
    matrix: dict[str, str]  # "impact/urgency" -> "P1".."P5", e.g. {"1/1": "P1"}
    comment: str | None = None
