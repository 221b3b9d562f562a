"""Pure projection logic: how each event changes an incident's current state, and the audit
hash chain. No I/O, so every rule here is unit-testable without Kafka or PostgreSQL."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from opsledger.bus.consumer import INVALID_PAYLOAD
from opsledger.events import Envelope, EventPayload, registry
from opsledger.events.intake import (
    AlertAcknowledged,
    AlertCorrelated,
    AlertFlapping,
    AlertResolved,
    IncidentDetailsUpdated,
    IncidentLogged,
)
from opsledger.events.triage import (
    IncidentCategorized,
    IncidentPrioritized,
    IncidentReprioritized,
    TriageOverrideCleared,
)

GENESIS_HASH = "0" * 64

OPEN_STATUSES = ("open", "acknowledged")
STATUSES = ("unknown", "open", "acknowledged", "resolved", "closed")
# Not resolved yet. `unknown` (only undecodable events so far) counts: nothing says it is over.
BACKLOG_STATUSES = ("unknown", *OPEN_STATUSES)
# SLA events whose payload names no target (or that this code cannot read) are counted here.
UNSPECIFIED_TARGET = "unspecified"


@dataclass
class IncidentState:
    """One incident as the read model shows it. `event_count` doubles as the sequence number of
    its history rows (incident_versions)."""

    incident_id: uuid.UUID
    status: str = "unknown"  # until IncidentLogged arrives (it always should come first)
    title: str | None = None
    priority: str | None = None
    major: bool = False
    category: str | None = None
    subcategory: str | None = None
    team: str | None = None
    assignee: str | None = None
    sla_state: str | None = None
    source: str | None = None
    integration_id: str | None = None
    dedup_key: str | None = None
    service: str | None = None
    environment: str | None = None
    severity: str | None = None
    alert_state: str | None = None  # firing | resolved | flapping (what the source says)
    occurred_at: datetime | None = None
    logged_at: datetime | None = None
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    alert_count: int = 0
    reopen_count: int = 0
    escalation_count: int = 0
    event_count: int = 0
    last_event_type: str | None = None
    last_event_at: datetime | None = None
    # SLA targets (e.g. "acknowledge", "resolve") warned about / breached, sorted: compliance is
    # reported per target, and one incident can meet one target and miss another.
    sla_warned: tuple[str, ...] = ()
    sla_breached: tuple[str, ...] = ()
    # When the alert source said someone acknowledged (AlertAcknowledged). Shown, not used by
    # MTTA: the incident is acknowledged when the assignment stage says so (IncidentAcknowledged).
    source_acknowledged_at: datetime | None = None

    def copy(self) -> IncidentState:
        # A shallow copy without dataclasses.replace's per-field __init__ (a hot path on replay).
        clone = object.__new__(IncidentState)
        clone.__dict__.update(self.__dict__)
        return clone

    def row(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy was most of the replay time, and every field is
        # immutable anyway.
        return {name: getattr(self, name) for name in STATE_FIELDS}


STATE_FIELDS = tuple(f.name for f in dataclasses.fields(IncidentState))


ARRAY_FIELDS = ("sla_warned", "sla_breached")


def state_from_row(row: Any) -> IncidentState:
    """Rebuild a state from a DB row (mapping) of the incidents table."""
    state = IncidentState(**{name: row[name] for name in STATE_FIELDS})
    for name in ARRAY_FIELDS:  # the driver returns lists; states share values, so keep them immutable
        setattr(state, name, tuple(getattr(state, name) or ()))
    return state


def decode_status(envelope: Envelope, payload: EventPayload | None, decode_error: str | None = None) -> str:
    """How this code understood the event: ok, unknown_type, newer_version, unsupported_version
    (an old version with no upcaster) or invalid_payload (does not match its schema)."""
    if payload is not None:
        return "ok"
    if not registry.knows(envelope.event_type):
        return "unknown_type"
    if decode_error is not None and decode_error.startswith(INVALID_PAYLOAD):
        return "invalid_payload"
    latest = registry.model(envelope.event_type).schema_version
    return "newer_version" if envelope.schema_version > latest else "unsupported_version"


def _text(body: dict[str, Any], *keys: str) -> str | None:
    """First string value among keys of a payload this code has no schema for (best effort)."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):  # e.g. {"assignee": {"name": ...}}
            nested = _text(value, "id", "name", "email")
            if nested:
                return nested
    return None


def apply_event(state: IncidentState, envelope: Envelope, payload: EventPayload | None) -> IncidentState:
    """The incident after `envelope` (returns a new state; `state` is not modified).

    Fields are merged, never reset, so an event arriving out of its usual order (e.g. a
    categorization seen before the logging) still ends in the same state."""
    s = state.copy()
    at = envelope.occurred_at
    s.event_count += 1
    s.last_event_type = envelope.event_type
    s.last_event_at = at if s.last_event_at is None else max(s.last_event_at, at)

    if isinstance(payload, IncidentLogged):
        s.title = payload.title
        s.source = payload.source
        s.integration_id = payload.integration_id
        s.dedup_key = payload.dedup_key
        s.service = s.service or payload.service
        s.environment = payload.environment
        s.severity = payload.severity.value
        s.occurred_at = payload.occurred_at
        s.logged_at = at
        s.alert_count = max(s.alert_count, 1)
        s.alert_state = s.alert_state or "firing"
        if s.status == "unknown":
            s.status = "open"
    elif isinstance(payload, AlertCorrelated):
        s.alert_count = max(s.alert_count, payload.occurrence_count)
        s.severity = payload.severity.value
        s.alert_state = "firing"
    elif isinstance(payload, AlertResolved):
        s.alert_state = "resolved"
    elif isinstance(payload, AlertAcknowledged):
        # The source's acknowledgement is an input for the assignment stage; the incident counts
        # as acknowledged (status, MTTA) only when that stage says so (IncidentAcknowledged).
        # Intake's clock (the envelope), like every other time here, not the source's.
        s.source_acknowledged_at = s.source_acknowledged_at or at
    elif isinstance(payload, AlertFlapping):
        s.alert_state = "flapping"
    elif isinstance(payload, IncidentCategorized):
        s.category = payload.category
        s.subcategory = payload.subcategory
        if payload.affected_service:
            s.service = payload.affected_service
    elif isinstance(payload, IncidentPrioritized | IncidentReprioritized):
        s.priority = payload.priority
        s.major = payload.major
    elif isinstance(payload, IncidentDetailsUpdated | TriageOverrideCleared):
        pass  # triage answers with a new categorization or priority; that is what changes state
    else:
        _apply_lifecycle(s, envelope, at)
    return s


def _apply_lifecycle(s: IncidentState, envelope: Envelope, at: datetime) -> None:
    """Events of later stages (assignment, sla, resolution). Until their schemas are registered
    here they arrive undecoded; their meaning is in their name and envelope, so apply that and
    read the payload only defensively."""
    body = envelope.payload if isinstance(envelope.payload, dict) else {}
    kind = envelope.event_type
    if kind == "IncidentAssigned":
        s.assignee = _text(body, "assignee", "assignee_id", "responder", "person") or s.assignee
        s.team = _text(body, "team", "team_id", "team_name") or s.team
    elif kind == "IncidentAcknowledged":
        s.acknowledged_at = s.acknowledged_at or at
        if s.status in ("unknown", "open"):
            s.status = "acknowledged"
    elif kind == "IncidentEscalated":
        s.escalation_count += 1
        s.team = _text(body, "team", "to_team", "team_id") or s.team
        s.assignee = _text(body, "assignee", "to_assignee") or s.assignee
    elif kind == "SlaWarning":
        s.sla_warned = _with(s.sla_warned, _text(body, "target", "sla_target") or UNSPECIFIED_TARGET)
        if s.sla_state != "breached":
            s.sla_state = "warning"
    elif kind == "SlaBreached":
        s.sla_breached = _with(s.sla_breached, _text(body, "target", "sla_target") or UNSPECIFIED_TARGET)
        s.sla_state = "breached"
    elif kind == "IncidentResolved":
        s.resolved_at = at
        if s.status != "closed":
            s.status = "resolved"
    elif kind == "IncidentClosed":
        s.closed_at = at
        s.resolved_at = s.resolved_at or at
        s.status = "closed"
    elif kind == "IncidentReopened":
        s.reopen_count += 1
        s.status = "open"
        s.resolved_at = None
        s.closed_at = None


def _with(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    """`items` plus `item`, sorted and without repeats (the same in any arrival order)."""
    return items if item in items else tuple(sorted((*items, item)))


# --- audit hash chain --------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_payload(payload: dict[str, Any]) -> str:
    """The payload as stored and hashed: JSON with sorted keys (stable across re-encoding)."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()


def canonical_event(
    *,
    event_id: uuid.UUID,
    event_type: str,
    schema_version: int,
    incident_id: uuid.UUID | None,
    subject: str,
    occurred_at: datetime,
    producer: str,
    correlation_id: str | None,
    causation_id: uuid.UUID | None,
    actor: str,
    payload: str,
) -> bytes:
    """The bytes an audit entry's hash covers, built from the stored columns so that changing
    any of them in the database breaks the chain. `payload` is the canonical payload text."""
    head = orjson.dumps(
        [
            str(event_id),
            event_type,
            schema_version,
            str(incident_id) if incident_id else None,
            subject,
            _ts(occurred_at),
            producer,
            correlation_id,
            str(causation_id) if causation_id else None,
            actor,
        ]
    )
    return head + b"\n" + payload.encode()


def chain_hash(previous: str, canonical: bytes) -> str:
    """sha256(previous hash (hex) + canonical event bytes), hex."""
    return hashlib.sha256(previous.encode() + canonical).hexdigest()
