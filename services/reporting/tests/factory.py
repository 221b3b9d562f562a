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
from opsledger.events.common import Severity
from opsledger.events.intake import AlertCorrelated, AlertResolved, IncidentLogged
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
    acknowledged, SLA warning, resolved, reopened, resolved again, closed."""
    first = logged(incident, 0)
    return [
        first,
        categorized(first, 0.1),
        prioritized(first, 0.2, "P3"),
        correlated(first, 2, 2),
        reprioritized(first, 2.1, "P1", "P3"),
        foreign("IncidentAssigned", incident, 3, {"assignee": "alice", "team": "payments"}),
        foreign("IncidentAcknowledged", incident, 5),
        foreign("SlaWarning", incident, 20, producer="sla"),
        foreign("IncidentEscalated", incident, 25, {"team": "payments-l2"}),
        alert_resolved(first, 30),
        foreign("IncidentResolved", incident, 40, producer="resolution"),
        foreign("IncidentReopened", incident, 50, producer="resolution"),
        foreign("IncidentResolved", incident, 60, producer="resolution"),
        foreign("IncidentClosed", incident, 70, producer="resolution"),
    ]
