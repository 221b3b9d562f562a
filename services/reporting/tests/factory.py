"""Events of one incident's life, built the way the producing services build them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.structs import ConsumerRecord

from opsledger.bus.consumer import INVALID_PAYLOAD, UNKNOWN_EVENT, Delivery
from opsledger.events import (
    Envelope,
    EventPayload,
    InvalidPayload,
    UnknownEventType,
    UnsupportedSchemaVersion,
    new_event,
    registry,
)
from opsledger.events.assignment import (
    AcknowledgementChannel,
    EscalationCause,
    IncidentAcknowledged,
    IncidentAssigned,
    IncidentEscalated,
)
from opsledger.events.common import PersonRef, Severity, SlaTargetKind
from opsledger.events.intake import AlertCorrelated, AlertResolved, IncidentLogged
from opsledger.events.resolution import (
    ClosureCode,
    IncidentClosed,
    IncidentReopened,
    IncidentResolved,
    ReopenKind,
    ReopenTrigger,
    ResolutionCode,
)
from opsledger.events.sla import SlaBreached, SlaWarning
from opsledger.events.triage import IncidentCategorized, IncidentPrioritized, IncidentReprioritized, PriorityInputs

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def logged(incident: uuid.UUID, minute: float = 0, **overrides: Any) -> Envelope:
    fields: dict[str, Any] = {
        "source": "alertmanager",
        "integration_id": "int-1",
        "occurred_at": at(minute - 1),
        "received_at": at(minute),
        "title": "HighErrorRate on checkout",
        "service": "checkout",
        "environment": "prod",
        "severity": Severity.HIGH,
        "dedup_key": f"fp-{incident.hex[:8]}",
    }
    fields.update(overrides)
    return new_event(
        IncidentLogged(**fields),
        producer="intake",
        actor="integration:int-1",
        incident_id=incident,
        correlation_id=fields["dedup_key"],
        occurred_at=at(minute),
    )


def derived(payload: EventPayload, cause: Envelope, minute: float, producer: str = "triage") -> Envelope:
    assert cause.incident_id is not None
    return new_event(
        payload, producer=producer, actor=f"system:{producer}", incident_id=cause.incident_id, cause=cause,
        occurred_at=at(minute),
    )  # fmt: skip


def categorized(cause: Envelope, minute: float, category: str = "Application") -> Envelope:
    return derived(IncidentCategorized(category=category, subcategory="Errors", rule_set_version=1), cause, minute)


def inputs(impact: int = 2, urgency: int = 2) -> PriorityInputs:
    return PriorityInputs(impact=impact, urgency=urgency)


def prioritized(cause: Envelope, minute: float, priority: str = "P3") -> Envelope:
    payload = IncidentPrioritized(priority=priority, major=priority == "P1", inputs=inputs(), matrix_version=1)
    return derived(payload, cause, minute)


def reprioritized(cause: Envelope, minute: float, priority: str, previous: str) -> Envelope:
    payload = IncidentReprioritized(
        priority=priority, previous_priority=previous, major=priority == "P1", inputs=inputs(1, 1),
        matrix_version=1, reason="correlated alert raised severity to critical",
    )  # fmt: skip
    return derived(payload, cause, minute)


def correlated(first: Envelope, minute: float, count: int) -> Envelope:
    payload = AlertCorrelated(
        source="alertmanager", dedup_key=first.payload["dedup_key"], occurrence_count=count,
        first_seen=first.occurred_at, last_seen=at(minute), severity=Severity.CRITICAL,
    )  # fmt: skip
    assert first.incident_id is not None
    return new_event(payload, producer="intake", actor="integration:int-1", incident_id=first.incident_id,
                     occurred_at=at(minute))  # fmt: skip


def alert_resolved(first: Envelope, minute: float) -> Envelope:
    payload = AlertResolved(source="alertmanager", dedup_key=first.payload["dedup_key"], resolved_at=at(minute))
    assert first.incident_id is not None
    return new_event(payload, producer="intake", actor="integration:int-1", incident_id=first.incident_id,
                     occurred_at=at(minute))  # fmt: skip


def stage(
    payload: EventPayload, incident: uuid.UUID, minute: float, producer: str, actor: str | None = None
) -> Envelope:
    """An event of a later stage (assignment, sla, resolution), as that service writes it."""
    return new_event(
        payload, producer=producer, actor=actor or f"system:{producer}", incident_id=incident, occurred_at=at(minute)
    )


def assigned(incident: uuid.UUID, minute: float, team: str = "payments", assignee: str | None = "alice",
             tier: int = 0) -> Envelope:  # fmt: skip
    person = PersonRef(sub=assignee, name=assignee.title()) if assignee else None
    payload = IncidentAssigned(
        team_id=team, team_name=team.title(), assignee=person, escalation_policy_id=f"{team}-policy", tier=tier,
        reason=f"on call in {team} primary" if person else "nobody on call",
    )  # fmt: skip
    return stage(payload, incident, minute, "assignment")


def acknowledged(incident: uuid.UUID, minute: float, by: str = "alice") -> Envelope:
    payload = IncidentAcknowledged(via=AcknowledgementChannel.API, by=PersonRef(sub=by))
    return stage(payload, incident, minute, "assignment", actor=f"user:{by}")


def escalated(incident: uuid.UUID, minute: float, to_tier: int = 1,
              cause: EscalationCause = EscalationCause.MANUAL) -> Envelope:  # fmt: skip
    payload = IncidentEscalated(from_tier=to_tier - 1, to_tier=to_tier, cause=cause, reason=f"escalated: {cause}")
    actor = "user:manager" if cause is EscalationCause.MANUAL else None
    return stage(payload, incident, minute, "assignment", actor=actor)


def sla(kind: str, incident: uuid.UUID, minute: float, target: str = "resolution") -> Envelope:
    """An SlaWarning (at 75 %) or SlaBreached of `target` (response | resolution), fired at `minute`."""
    due = at(minute + 30) if kind == "SlaWarning" else at(minute)
    clock: dict[str, Any] = {"target": SlaTargetKind(target), "target_seconds": 3600, "due_at": due,
                             "policy_version": 1, "fired_at": at(minute)}  # fmt: skip
    payload: EventPayload = (
        SlaWarning(**clock, threshold_percent=75, threshold_at=at(minute)) if kind == "SlaWarning"
        else SlaBreached(**clock)
    )  # fmt: skip
    return stage(payload, incident, minute, "sla")


def resolved(incident: uuid.UUID, minute: float, code: ResolutionCode = ResolutionCode.FIXED) -> Envelope:
    payload = IncidentResolved(code=code, root_cause="a bad deploy", steps_taken="rolled back",
                               resolved_by=PersonRef(sub="alice"))  # fmt: skip
    return stage(payload, incident, minute, "resolution", actor="user:alice")


def reopened(incident: uuid.UUID, minute: float) -> Envelope:
    payload = IncidentReopened(reason="the alert fired again", by=ReopenTrigger(kind=ReopenKind.ALERT_REFIRED))
    return stage(payload, incident, minute, "resolution")


def closed(incident: uuid.UUID, minute: float, code: ClosureCode = ClosureCode.RESOLVED) -> Envelope:
    return stage(IncidentClosed(code=code, auto=True), incident, minute, "resolution")


def foreign(
    event_type: str,
    incident: uuid.UUID,
    minute: float,
    payload: dict[str, Any] | None = None,
    version: int = 1,
    producer: str = "assignment",
) -> Envelope:
    """An event of a stage this code has no schema for (yet), as a newer producer would write it."""
    return Envelope(
        event_id=uuid.uuid4(), event_type=event_type, schema_version=version, incident_id=incident,
        subject=str(incident), occurred_at=at(minute), producer=producer, actor=f"system:{producer}",
        correlation_id=None, causation_id=None, payload=payload or {},
    )  # fmt: skip


def decode(envelope: Envelope) -> EventPayload | None:
    return decode_with_error(envelope)[0]


def decode_with_error(envelope: Envelope) -> tuple[EventPayload | None, str | None]:
    """What the consumer runner hands over: the payload, or None and why."""
    try:
        return registry.decode(envelope), None
    except InvalidPayload as exc:
        return None, f"{INVALID_PAYLOAD}: {exc}"
    except (UnknownEventType, UnsupportedSchemaVersion) as exc:
        return None, f"{UNKNOWN_EVENT}: {exc}"


def deliveries(envelopes: list[Envelope], topic: str = "t.incidents", start_offset: int = 0) -> list[Delivery]:
    """The envelopes as the consumer would hand them over, at consecutive offsets of partition 0."""
    out = []
    for i, env in enumerate(envelopes):
        raw = env.to_bytes()
        record = ConsumerRecord(topic, 0, start_offset + i, 0, 0, env.key, raw, None, len(env.key), len(raw), [])
        out.append(Delivery(record, env, *decode_with_error(env)))
    return out


def last_positions(batch: list[Delivery]) -> dict[tuple[str, int], int]:
    """What the consumer runner passes to save_positions for `batch`."""
    last: dict[tuple[str, int], int] = {}
    for d in batch:
        topic, partition, offset = d.position
        last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
    return last


def lifecycle(incident: uuid.UUID) -> list[Envelope]:
    """A full life: logged, triaged, a correlated repeat that raises the priority, assigned,
    acknowledged, SLA warning, escalated and assigned to the next tier, resolved, reopened,
    resolved again, closed."""
    first = logged(incident, 0)
    return [
        first,
        categorized(first, 0.1),
        prioritized(first, 0.2, "P3"),
        correlated(first, 2, 2),
        reprioritized(first, 2.1, "P1", "P3"),
        assigned(incident, 3, "payments", "alice"),
        acknowledged(incident, 5, "alice"),
        sla("SlaWarning", incident, 20, "resolution"),
        escalated(incident, 25, 1, EscalationCause.SLA_WARNING),
        assigned(incident, 25.5, "payments-l2", "bob", tier=1),
        alert_resolved(first, 30),
        resolved(incident, 40),
        reopened(incident, 50),
        resolved(incident, 60),
        closed(incident, 70),
    ]
