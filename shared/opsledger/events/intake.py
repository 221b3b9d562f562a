"""Events produced by the intake service (incident logging)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from opsledger.events.common import ImpactLevel, Link, Person, Severity
from opsledger.events.registry import EventPayload, Stream, event, upcaster


class BusinessImpact(EventPayload):
    text: str | None = Field(default=None, max_length=5000)
    level: ImpactLevel | None = None


@event("IncidentLogged", 1, Stream.INCIDENTS)
class IncidentLoggedV1(EventPayload):
    """A new incident opened from an alert or a person's report."""

    source: str  # alertmanager | grafana | pagerduty | generic | manual
    integration_id: str | None = None
    integration_name: str | None = None
    reporter: Person | None = None
    occurred_at: datetime  # when the problem started (source's clock)
    received_at: datetime  # when intake accepted it
    title: str
    description: str | None = None
    service: str | None = None
    environment: str | None = None
    component: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    severity: Severity
    source_severity: str | None = None  # as the source said it, before normalization
    business_impact: BusinessImpact | None = None
    urgency_hint: int | None = Field(default=None, ge=1, le=3)
    dedup_key: str
    links: list[Link] = Field(default_factory=list)
    raw: dict[str, Any] = Field(default_factory=dict)  # the alert as received, for re-mapping on replay


@event("IncidentLogged", 2, Stream.INCIDENTS)
class IncidentLogged(IncidentLoggedV1):
    """A new incident opened from an alert or a person's report. v2 adds `reported_at`: when a
    person says the incident was reported (e.g. phoned in), which may be earlier than intake
    received it and later than it started; None for alerts."""

    reported_at: datetime | None = None


@upcaster("IncidentLogged", 1)
def _incident_logged_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    # v1 reports kept the reporter's own time only in the raw body; it is not guessed back.
    return {**body, "reported_at": None}


@event("AlertCorrelated", 1, Stream.INCIDENTS)
class AlertCorrelatedV1(EventPayload):
    """Another occurrence of an alert attached to the open incident with the same dedup key."""

    source: str
    integration_id: str | None = None
    dedup_key: str
    occurrence_count: int = Field(ge=2)
    first_seen: datetime
    last_seen: datetime
    severity: Severity
    source_severity: str | None = None
    title: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    raw: dict[str, Any] = Field(default_factory=dict)


@event("AlertCorrelated", 2, Stream.INCIDENTS)
class AlertCorrelated(AlertCorrelatedV1):
    """Another occurrence of an alert attached to the open incident with the same dedup key. v2
    carries the rest of what the alert said (as IncidentLogged does), so that an alert the
    incident can no longer take (the resolution stage's CorrelationRefused) can open a new
    incident as if it had never been attached; None and empty in v1 events."""

    integration_name: str | None = None
    occurred_at: datetime | None = None  # when the problem started (source's clock)
    description: str | None = None
    service: str | None = None
    environment: str | None = None
    component: str | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    links: list[Link] = Field(default_factory=list)


@upcaster("AlertCorrelated", 1)
def _alert_correlated_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "integration_name": None, "occurred_at": None, "description": None, "service": None,
            "environment": None, "component": None, "annotations": {}, "links": []}  # fmt: skip


@event("AlertResolved", 1, Stream.INCIDENTS)
class AlertResolved(EventPayload):
    """The source says the alert behind an incident stopped firing (input for auto-resolution)."""

    source: str
    integration_id: str | None = None
    dedup_key: str
    resolved_at: datetime
    raw: dict[str, Any] = Field(default_factory=dict)


@event("AlertAcknowledged", 1, Stream.INCIDENTS)
class AlertAcknowledged(EventPayload):
    """The source (e.g. a PagerDuty `acknowledge`) says someone acknowledged the alert."""

    source: str
    integration_id: str | None = None
    dedup_key: str
    acknowledged_at: datetime
    raw: dict[str, Any] = Field(default_factory=dict)


@event("AlertFlapping", 1, Stream.INCIDENTS)
class AlertFlapping(EventPayload):
    """The alert changed state too often: it stops opening new incidents until it calms down."""

    dedup_key: str
    transitions: int
    window_seconds: int
    since: datetime


@event("IncidentDetailsUpdated", 1, Stream.INCIDENTS)
class IncidentDetailsUpdated(EventPayload):
    """A person corrected what was reported (e.g. the business impact); triage re-evaluates."""

    business_impact: BusinessImpact | None = None
    urgency_hint: int | None = Field(default=None, ge=1, le=3)
    reason: str | None = None


@event("IntegrationCreated", 1, Stream.CONFIG)
class IntegrationCreated(EventPayload):
    integration_id: str
    name: str
    kind: str  # alertmanager | pagerduty | generic | any
    key_prefix: str  # first characters of the key, to recognise it; never the key itself


@event("IntegrationDisabled", 1, Stream.CONFIG)
class IntegrationDisabled(EventPayload):
    integration_id: str
    reason: str | None = None
