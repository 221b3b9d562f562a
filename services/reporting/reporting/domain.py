"""Pure projection logic: how each event changes an incident's current state, and the audit
hash chain. No I/O, so every rule here is unit-testable without Kafka or PostgreSQL."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from opsledger.bus.consumer import INVALID_PAYLOAD
from opsledger.events import Envelope, EventPayload, registry
from opsledger.events.assignment import (
    AcknowledgementChannel,
    IncidentAcknowledged,
    IncidentAssigned,
    IncidentEscalated,
    IncidentPutOnHold,
    IncidentResumed,
    TaskAssigned,
    TaskCreated,
    TaskOverdue,
    TaskStatus,
    TaskStatusChanged,
)
from opsledger.events.common import SlaTargetKind
from opsledger.events.intake import (
    AlertAcknowledged,
    AlertCorrelated,
    AlertFlapping,
    AlertResolved,
    IncidentDetailsUpdated,
    IncidentLogged,
)
from opsledger.events.resolution import (
    CorrelationRefused,
    IncidentClosed,
    IncidentReopened,
    IncidentResolved,
    IncidentStatusUpdated,
    PostIncidentReviewCompleted,
)
from opsledger.events.sla import (
    SlaBreached,
    SlaCancelled,
    SlaClock,
    SlaClockPaused,
    SlaClockResumed,
    SlaClockStarted,
    SlaMet,
    SlaWarning,
)
from opsledger.events.triage import (
    IncidentCategorized,
    IncidentPrioritized,
    IncidentReprioritized,
    TriageOverrideCleared,
)

GENESIS_HASH = "0" * 64
# How a projection version's audit entries are chained (chain_heads.scheme). 1: one chain through
# every entry of the version, in applied order (versions made before revision 0004). 2: one chain
# per aggregate (an incident, or a configuration object: the event's subject, which is its Kafka
# key, so each chain is in log order whatever the partitions' interleaving), plus the version's
# head, a chain over those chains: it folds in each entry's hash in applied order.
LEGACY_CHAIN = 1
PER_SUBJECT_CHAINS = 2

# Not resolved yet: logged, with a team (and usually a person), taken on, or waiting.
OPEN_STATUSES = ("open", "assigned", "acknowledged", "on_hold")
STATUSES = ("unknown", *OPEN_STATUSES, "resolved", "closed")
# Not resolved yet. `unknown` (only undecodable events so far) counts: nothing says it is over.
BACKLOG_STATUSES = ("unknown", *OPEN_STATUSES)
# Where an incident stands between its open statuses once nothing holds it (IncidentResumed).
_UNTOUCHED = ("unknown", "open")
_FINAL = ("resolved", "closed")

# The state of one SLA target's clock (the SLA stage's vocabulary), and how the incident's overall
# `sla_state` is chosen among its targets: the first of these any target is in. A target ever
# breached makes the overall state `breached` for good (a re-targeted clock stays breached in
# the record), as does being in `sla_breached`.
SLA_STATES = ("breached", "warned", "running", "paused", "met", "cancelled")
OPEN_TASK_STATUSES = (TaskStatus.OPEN, TaskStatus.IN_PROGRESS)


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
    team: str | None = None  # the team's id (IncidentAssigned.team_id)
    assignee: str | None = None  # the person's `sub`
    sla_state: str | None = None  # overall, over every target (SLA_STATES)
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
    # SLA targets (response, resolution) warned about / breached, sorted: compliance is reported
    # per target, and one incident can meet one target and miss another.
    sla_warned: tuple[str, ...] = ()
    sla_breached: tuple[str, ...] = ()
    # When the alert source said someone acknowledged (AlertAcknowledged). Shown, not used by
    # MTTA: the incident is acknowledged when the assignment stage says so (IncidentAcknowledged).
    source_acknowledged_at: datetime | None = None
    # Revision 0003: what the typed events of the assignment, SLA and resolution stages say.
    team_name: str | None = None
    assignee_name: str | None = None
    acknowledged_by: str | None = None  # a person's sub, or integration:<id> for the alert source
    escalation_tier: int | None = None  # the policy tier the incident is at
    on_hold_reason: str | None = None  # while on hold
    resolution_code: str | None = None
    sla_response_state: str | None = None
    sla_response_due_at: datetime | None = None
    sla_resolution_state: str | None = None
    sla_resolution_due_at: datetime | None = None
    reviewed_at: datetime | None = None  # PostIncidentReviewCompleted
    task_count: int = 0
    open_task_count: int = 0

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


# --- the projection: one typed apply function per incident-stream event type -------------------

P = TypeVar("P", bound=EventPayload)
Apply = Callable[[IncidentState, Any, datetime], None]

# Event type -> how it changes an incident (in place, on the copy apply_event made). A contract
# test fails when an incident-stream event type of the catalog has no entry here.
APPLIERS: dict[str, Apply] = {}


def applies(*models: type[P]) -> Callable[[Callable[[IncidentState, P, datetime], None]], Apply]:
    """Register the decorated function as the projection of events of `models` (their latest
    version: the consumer hands over payloads upcast to it). `at` is the envelope's time."""

    def register(fn: Callable[[IncidentState, P, datetime], None]) -> Apply:
        for model in models:
            if registry.model(model.event_type) is not model:
                raise ValueError(f"{model.event_type}: project its latest version, not {model.__name__}")
            if model.event_type in APPLIERS:
                raise ValueError(f"{model.event_type} is projected twice")
            APPLIERS[model.event_type] = fn
        return fn

    return register


def apply_event(state: IncidentState, envelope: Envelope, payload: EventPayload | None) -> IncidentState:
    """The incident after `envelope` (returns a new state; `state` is not modified). An event this
    code cannot decode (unknown type, newer version, invalid payload) is counted and shown in the
    timeline, and changes nothing else.

    Fields are merged, never reset, so an event arriving out of its usual order (e.g. a
    categorization seen before the logging) still ends in the same state."""
    s = state.copy()
    evolve(s, envelope, payload)
    return s


def evolve(s: IncidentState, envelope: Envelope, payload: EventPayload | None) -> None:
    """What apply_event does, in place (the projector's hot path: it snapshots each state into
    its history row, so it needs no copy per event)."""
    at = envelope.occurred_at
    s.event_count += 1
    s.last_event_type = envelope.event_type
    s.last_event_at = at if s.last_event_at is None else max(s.last_event_at, at)
    if payload is not None:
        apply = APPLIERS.get(payload.event_type)
        if apply is not None:
            apply(s, payload, at)


# intake


@applies(IncidentLogged)
def _logged(s: IncidentState, p: IncidentLogged, at: datetime) -> None:
    s.title = p.title
    s.source = p.source
    s.integration_id = p.integration_id
    s.dedup_key = p.dedup_key
    s.service = s.service or p.service
    s.environment = p.environment
    s.severity = p.severity.value
    s.occurred_at = p.occurred_at
    s.logged_at = at
    s.alert_count = max(s.alert_count, 1)
    s.alert_state = s.alert_state or "firing"
    if s.status == "unknown":
        s.status = "open"


@applies(AlertCorrelated)
def _correlated(s: IncidentState, p: AlertCorrelated, at: datetime) -> None:
    if s.status == "closed":
        return  # attached before intake knew of the closure: refused, it opens a new incident
    s.alert_count = max(s.alert_count, p.occurrence_count)
    s.severity = p.severity.value
    s.alert_state = "firing"


@applies(AlertResolved)
def _alert_resolved(s: IncidentState, p: AlertResolved, at: datetime) -> None:
    s.alert_state = "resolved"


@applies(AlertAcknowledged)
def _alert_acknowledged(s: IncidentState, p: AlertAcknowledged, at: datetime) -> None:
    # The source's acknowledgement is an input for the assignment stage; the incident counts as
    # acknowledged (status, MTTA) only when that stage says so (IncidentAcknowledged). Intake's
    # clock (the envelope), like every other time here, not the source's.
    s.source_acknowledged_at = s.source_acknowledged_at or at


@applies(AlertFlapping)
def _flapping(s: IncidentState, p: AlertFlapping, at: datetime) -> None:
    s.alert_state = "flapping"


# triage


@applies(IncidentCategorized)
def _categorized(s: IncidentState, p: IncidentCategorized, at: datetime) -> None:
    s.category = p.category
    s.subcategory = p.subcategory
    if p.affected_service:
        s.service = p.affected_service


@applies(IncidentPrioritized)
@applies(IncidentReprioritized)
def _prioritized(s: IncidentState, p: IncidentPrioritized | IncidentReprioritized, at: datetime) -> None:
    s.priority = p.priority
    s.major = p.major


@applies(IncidentDetailsUpdated, TriageOverrideCleared, IncidentStatusUpdated, CorrelationRefused)
def _shown_only(s: IncidentState, p: EventPayload, at: datetime) -> None:
    """In the timeline only: triage answers a details update or a cleared override with a new
    categorization or priority (that is what changes state); a status update is a message; a
    refused alert opens a new incident, which intake logs."""


# assignment


@applies(IncidentAssigned)
def _assigned(s: IncidentState, p: IncidentAssigned, at: datetime) -> None:
    s.team, s.team_name = p.team_id, p.team_name
    s.assignee = p.assignee.sub if p.assignee else None
    s.assignee_name = (p.assignee.name or p.assignee.email) if p.assignee else None
    if p.tier is not None:
        s.escalation_tier = p.tier
    # A new assignee has not taken it on yet (even after an earlier acknowledgement, e.g. when it
    # escalated past that person); MTTA keeps the first acknowledgement.
    if s.status in (*_UNTOUCHED, "assigned", "acknowledged"):
        s.status = "assigned"


@applies(IncidentAcknowledged)
def _acknowledged(s: IncidentState, p: IncidentAcknowledged, at: datetime) -> None:
    s.acknowledged_at = s.acknowledged_at or at
    if p.by is not None:
        s.acknowledged_by = p.by.sub
    elif p.via is AcknowledgementChannel.INTEGRATION:
        s.acknowledged_by = f"integration:{p.integration_id or s.integration_id or 'unknown'}"
    if s.status in (*_UNTOUCHED, "assigned"):
        s.status = "acknowledged"


@applies(IncidentEscalated)
def _escalated(s: IncidentState, p: IncidentEscalated, at: datetime) -> None:
    s.escalation_count += 1
    s.escalation_tier = p.to_tier  # the IncidentAssigned that follows names the new assignee


@applies(IncidentPutOnHold)
def _on_hold(s: IncidentState, p: IncidentPutOnHold, at: datetime) -> None:
    if s.status not in _FINAL:
        s.status = "on_hold"
        s.on_hold_reason = p.reason.value


@applies(IncidentResumed)
def _resumed(s: IncidentState, p: IncidentResumed, at: datetime) -> None:
    s.on_hold_reason = None
    if s.status == "on_hold":
        s.status = _working_status(s)


def _working_status(s: IncidentState) -> str:
    """Where an open incident stands when nothing holds it."""
    if s.acknowledged_at is not None:
        return "acknowledged"
    return "assigned" if s.team is not None else "open"


@applies(TaskCreated)
def _task_created(s: IncidentState, p: TaskCreated, at: datetime) -> None:
    s.task_count += 1
    s.open_task_count += 1


@applies(TaskStatusChanged)
def _task_status(s: IncidentState, p: TaskStatusChanged, at: datetime) -> None:
    was_open, is_open = p.previous_status in OPEN_TASK_STATUSES, p.status in OPEN_TASK_STATUSES
    s.open_task_count = max(0, s.open_task_count + int(is_open) - int(was_open))


@applies(TaskAssigned, TaskOverdue)
def _task_shown_only(s: IncidentState, p: EventPayload, at: datetime) -> None:
    """In the incident's timeline; tasks have no columns of their own here."""


# sla


def _target(s: IncidentState, p: SlaClock, state: str | None) -> None:
    """Record `state` (None: keep it) and the due time of the event's target, then the overall state."""
    response = p.target is SlaTargetKind.RESPONSE
    if state is not None:
        if response:
            s.sla_response_state = state
        else:
            s.sla_resolution_state = state
    if response:
        s.sla_response_due_at = p.due_at
    else:
        s.sla_resolution_due_at = p.due_at
    current = {s.sla_response_state, s.sla_resolution_state}
    if s.sla_breached:
        s.sla_state = "breached"
    else:
        s.sla_state = next((name for name in SLA_STATES if name in current), None)


def _target_state(s: IncidentState, p: SlaClock) -> str | None:
    return s.sla_response_state if p.target is SlaTargetKind.RESPONSE else s.sla_resolution_state


@applies(SlaClockStarted)
def _clock_started(s: IncidentState, p: SlaClockStarted, at: datetime) -> None:
    _target(s, p, "running")


@applies(SlaClockPaused)
def _clock_paused(s: IncidentState, p: SlaClockPaused, at: datetime) -> None:
    # A breached target stays breached while paused: its time is up either way.
    _target(s, p, None if _target_state(s, p) == "breached" else "paused")


@applies(SlaClockResumed)
def _clock_resumed(s: IncidentState, p: SlaClockResumed, at: datetime) -> None:
    if _target_state(s, p) == "breached":
        _target(s, p, None)
    else:
        _target(s, p, "warned" if p.target.value in s.sla_warned and not p.reopened else "running")


@applies(SlaWarning)
def _sla_warning(s: IncidentState, p: SlaWarning, at: datetime) -> None:
    s.sla_warned = _with(s.sla_warned, p.target.value)
    _target(s, p, None if _target_state(s, p) == "breached" else "warned")


@applies(SlaBreached)
def _sla_breached(s: IncidentState, p: SlaBreached, at: datetime) -> None:
    s.sla_breached = _with(s.sla_breached, p.target.value)
    _target(s, p, "breached")


@applies(SlaMet)
def _sla_met(s: IncidentState, p: SlaMet, at: datetime) -> None:
    _target(s, p, "met")


@applies(SlaCancelled)
def _sla_cancelled(s: IncidentState, p: SlaCancelled, at: datetime) -> None:
    _target(s, p, "cancelled")


# resolution


@applies(IncidentResolved)
def _resolved(s: IncidentState, p: IncidentResolved, at: datetime) -> None:
    s.resolved_at = at
    s.resolution_code = p.code.value
    s.on_hold_reason = None
    if s.status != "closed":
        s.status = "resolved"


@applies(IncidentClosed)
def _closed(s: IncidentState, p: IncidentClosed, at: datetime) -> None:
    s.closed_at = at
    s.resolved_at = s.resolved_at or at
    s.on_hold_reason = None
    s.status = "closed"


@applies(IncidentReopened)
def _reopened(s: IncidentState, p: IncidentReopened, at: datetime) -> None:
    s.reopen_count += 1
    s.resolved_at = None
    s.closed_at = None
    s.resolution_code = None
    # Assignment assigns it again (to its last team), which makes it `assigned`.
    s.status = "open"


@applies(PostIncidentReviewCompleted)
def _reviewed(s: IncidentState, p: PostIncidentReviewCompleted, at: datetime) -> None:
    s.reviewed_at = at


def _with(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    """`items` plus `item`, sorted and without repeats (the same in any arrival order)."""
    return items if item in items else tuple(sorted((*items, item)))


# --- audit hash chain --------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    if value.tzinfo is not UTC:  # envelopes' and asyncpg's times are UTC already
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


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
    # orjson writes a UUID as str() does (lowercase, hyphenated), without str()'s Python cost.
    head = orjson.dumps(
        [
            event_id,
            event_type,
            schema_version,
            incident_id,
            subject,
            _ts(occurred_at),
            producer,
            correlation_id,
            causation_id,
            actor,
        ],
        default=str,  # asyncpg's own UUID type (verify reads the stored columns)
    )
    return head + b"\n" + payload.encode()


def chain_hash(previous: str, canonical: bytes) -> str:
    """sha256(previous hash (hex) + canonical event bytes), hex."""
    return hashlib.sha256(previous.encode() + canonical).hexdigest()


def fold_head(head: str, entry_hash: str) -> str:
    """The chain over chains (PER_SUBJECT_CHAINS): the version's head after an entry whose own
    chain's hash is `entry_hash`, i.e. sha256(head (hex) + entry hash (hex)), hex. It commits to
    every entry and to the order they were applied in, at the cost of hashing 128 bytes."""
    return hashlib.sha256((head + entry_hash).encode()).hexdigest()
