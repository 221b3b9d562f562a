"""The events the SLA stage consumes, as the other stages would write them (for the tests)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from opsledger.events import Envelope, EventPayload, new_event
from opsledger.events.assignment import (
    AcknowledgementChannel,
    HoldReason,
    IncidentAcknowledged,
    IncidentPutOnHold,
    IncidentResumed,
)
from opsledger.events.intake import IncidentLogged
from opsledger.events.resolution import (
    IncidentReopened,
    IncidentResolved,
    ReopenKind,
    ReopenTrigger,
    ResolutionCode,
)
from opsledger.events.triage import IncidentPrioritized, IncidentReprioritized, PriorityInputs


def envelope(payload: EventPayload, incident_id: uuid.UUID, at: datetime, producer: str = "test") -> Envelope:
    return new_event(payload, producer=producer, actor="system:test", incident_id=incident_id, occurred_at=at)


def logged(incident_id: uuid.UUID, at: datetime, **fields: Any) -> Envelope:
    body: dict[str, Any] = dict(
        source="alertmanager",
        occurred_at=at,
        received_at=at,
        title="db-1 disk 95% full",
        service="payments-db",
        severity="critical",
        dedup_key=f"dk-{incident_id}",
        raw={"big": "x" * 100},
    )
    body.update(fields)
    return envelope(IncidentLogged.model_validate(body), incident_id, at, "intake")


INPUTS = PriorityInputs(impact=1, urgency=1)


def prioritized(incident_id: uuid.UUID, at: datetime, priority: str) -> Envelope:
    payload = IncidentPrioritized(priority=priority, major=priority == "P1", inputs=INPUTS, matrix_version=1)
    return envelope(payload, incident_id, at, "triage")


def reprioritized(incident_id: uuid.UUID, at: datetime, priority: str, previous: str) -> Envelope:
    payload = IncidentReprioritized(
        priority=priority,
        previous_priority=previous,
        major=priority == "P1",
        inputs=INPUTS,
        matrix_version=1,
        reason="severity raised",
    )
    return envelope(payload, incident_id, at, "triage")


def on_hold(incident_id: uuid.UUID, at: datetime) -> Envelope:
    return envelope(IncidentPutOnHold(reason=HoldReason.AWAITING_VENDOR), incident_id, at, "assignment")


def resumed(incident_id: uuid.UUID, at: datetime) -> Envelope:
    return envelope(IncidentResumed(reason=HoldReason.AWAITING_VENDOR), incident_id, at, "assignment")


def acknowledged(incident_id: uuid.UUID, at: datetime) -> Envelope:
    payload = IncidentAcknowledged(via=AcknowledgementChannel.INTEGRATION, integration_id="am")
    return envelope(payload, incident_id, at, "assignment")


def resolved(incident_id: uuid.UUID, at: datetime) -> Envelope:
    return envelope(IncidentResolved(code=ResolutionCode.FIXED, auto=True), incident_id, at, "resolution")


def reopened(incident_id: uuid.UUID, at: datetime) -> Envelope:
    payload = IncidentReopened(reason="it came back", by=ReopenTrigger(kind=ReopenKind.ALERT_REFIRED, dedup_key="dk"))
    return envelope(payload, incident_id, at, "resolution")
