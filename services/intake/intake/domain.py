"""Pure decisions of intake (no I/O): the de-duplication key, and what an alert signal does to the
state kept for its key — open an incident, correlate to the open one, resolve, acknowledge — with
flapping detection. The caller loads and locks the state, applies `decide`, and writes back."""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from opsledger.bus.topics import MAX_EVENT_BYTES
from opsledger.events.common import Link, Person, Severity
from opsledger.events.intake import (
    AlertAcknowledged,
    AlertCorrelated,
    AlertFlapping,
    AlertResolved,
    BusinessImpact,
    IncidentLogged,
)
from opsledger.events.registry import EventPayload


class SignalKind(enum.StrEnum):
    TRIGGER = "trigger"
    RESOLVE = "resolve"
    ACKNOWLEDGE = "acknowledge"


class Status(enum.StrEnum):
    INACTIVE = "inactive"  # the key is known (a row exists) but never opened an incident
    FIRING = "firing"  # an incident is open for the key
    RESOLVED = "resolved"  # the last incident for the key was resolved (at its source, or downstream)


class Action(enum.StrEnum):
    """What intake did with one signal (returned to the caller)."""

    LOGGED = "logged"  # a new incident
    CORRELATED = "correlated"  # attached to the open incident
    SUPPRESSED = "suppressed"  # flapping: attached to the last incident instead of opening one
    RESOLVED = "resolved"
    ACKNOWLEDGED = "acknowledged"
    IGNORED = "ignored"  # resolve/acknowledge with no open incident, or a late re-send of a resolved episode


@dataclass(frozen=True)
class AlertSignal:
    """One alert occurrence, whatever format it came in."""

    kind: SignalKind
    source: str  # alertmanager | grafana | pagerduty | generic
    dedup_key: str
    title: str
    severity: Severity
    occurred_at: datetime
    integration_id: str | None = None
    integration_name: str | None = None
    source_severity: str | None = None
    description: str | None = None
    service: str | None = None
    environment: str | None = None
    component: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)
    # When the source says this firing episode started (Alertmanager's and Grafana's startsAt, sent
    # unchanged with every notification of the episode); None where the source has no such notion.
    episode_started_at: datetime | None = None


@dataclass(frozen=True)
class AlertState:
    """What intake keeps per (integration, dedup key)."""

    status: Status = Status.INACTIVE
    incident_id: uuid.UUID | None = None  # the open incident, or the last one once resolved
    occurrence_count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    transitions: tuple[datetime, ...] = ()  # state changes within the flapping window
    flapping_since: datetime | None = None
    # The start of the last episode the source itself said had resolved: a firing notification of
    # that same episode arriving later (the second Alertmanager of an HA pair) is no new problem.
    resolved_episode: datetime | None = None
    # Set while the key's last incident is resolved downstream (IncidentResolved) and may still be
    # reopened: until then a trigger goes to that incident (AlertCorrelated, which the resolution
    # stage turns into IncidentReopened) instead of opening a new one. None once it is closed.
    reopenable_until: datetime | None = None


@dataclass(frozen=True)
class FlapPolicy:
    """An alert changing state more than `max_transitions` times within `window` is flapping."""

    max_transitions: int = 6
    window: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class Outcome:
    state: AlertState
    action: Action
    incident_id: uuid.UUID | None
    events: tuple[EventPayload, ...] = ()  # all about `incident_id`, in order
    opened: bool = False


def stable_key(source: str, labels: Mapping[str, str], **extra: str | None) -> str:
    """Dedup key for an alert that brings none: a hash of its source and labels (order-free)."""
    material = {"source": source, "labels": dict(labels), **{k: v for k, v in extra.items() if v is not None}}
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def decide(
    state: AlertState, signal: AlertSignal, *, now: datetime, policy: FlapPolicy, new_incident_id: uuid.UUID
) -> Outcome:
    """Apply one signal to its key's state. `new_incident_id` is used only if an incident opens."""
    if state.transitions:  # a new key has none: no copy of the state to make
        since = now - policy.window
        state = replace(state, transitions=tuple(t for t in state.transitions if t > since))
    if signal.kind is SignalKind.TRIGGER:
        return _trigger(state, signal, now, policy, new_incident_id)
    if signal.kind is SignalKind.RESOLVE:
        return _resolve(state, signal, now, policy)
    return _acknowledge(state, signal, now)


def _trigger(state: AlertState, signal: AlertSignal, now: datetime, policy: FlapPolicy, new_id: uuid.UUID) -> Outcome:
    if (
        state.status is Status.RESOLVED
        and signal.episode_started_at is not None
        and signal.episode_started_at == state.resolved_episode
    ):
        return Outcome(state, Action.IGNORED, state.incident_id)
    if state.status is Status.FIRING and state.incident_id is not None:
        state = replace(state, occurrence_count=state.occurrence_count + 1, last_seen=now)
        return Outcome(state, Action.CORRELATED, state.incident_id, (_correlated(state, signal),))
    if state.status is Status.RESOLVED and state.incident_id is not None:
        state = replace(state, transitions=(*state.transitions, now))
        if len(state.transitions) > policy.max_transitions:
            # Flapping: re-attach to the last incident instead of opening another one.
            events: list[EventPayload] = []
            if state.flapping_since is None:
                state = replace(state, flapping_since=now)
                events.append(_flapping(state, signal, policy))
            state = replace(
                state,
                status=Status.FIRING,
                occurrence_count=state.occurrence_count + 1,
                last_seen=now,
                reopenable_until=None,
            )
            events.append(_correlated(state, signal))
            return Outcome(state, Action.SUPPRESSED, state.incident_id, tuple(events))
        state = replace(state, flapping_since=None)  # calmed down (or never flapped)
        if state.reopenable_until is not None and now <= state.reopenable_until:
            # Resolved downstream and still within its reopen window: the fix did not hold. The
            # incident goes on (resolution reopens it) instead of a new one being logged.
            state = replace(
                state,
                status=Status.FIRING,
                occurrence_count=state.occurrence_count + 1,
                last_seen=now,
                reopenable_until=None,
            )
            return Outcome(state, Action.CORRELATED, state.incident_id, (_correlated(state, signal),))
    state = replace(
        state,
        status=Status.FIRING,
        incident_id=new_id,
        occurrence_count=1,
        first_seen=now,
        last_seen=now,
        reopenable_until=None,
    )
    return Outcome(state, Action.LOGGED, new_id, (logged(signal, received_at=now),), opened=True)


def resolved_downstream(state: AlertState, *, at: datetime, reopen_window: timedelta) -> AlertState:
    """The key's incident was resolved by a later stage (a person, or automatically): it keeps the
    incident, reopenable until `at` + `reopen_window`."""
    return replace(
        state,
        status=Status.RESOLVED,
        last_seen=at if state.status is Status.FIRING else state.last_seen,
        reopenable_until=at + reopen_window,
    )


def closed_downstream(state: AlertState) -> AlertState:
    """The key's incident was closed: it is over for good, the next trigger opens a new incident."""
    return replace(state, status=Status.RESOLVED, reopenable_until=None)


def reopened_downstream(state: AlertState) -> AlertState:
    """The key's incident was reopened (by a person, or this key firing again): it is open again."""
    if state.reopenable_until is None:
        return state  # intake already attached a re-fire to it, or it was never resolved here
    return replace(state, status=Status.FIRING, reopenable_until=None)


def _resolve(state: AlertState, signal: AlertSignal, now: datetime, policy: FlapPolicy) -> Outcome:
    if state.status is not Status.FIRING or state.incident_id is None:
        return Outcome(state, Action.IGNORED, state.incident_id)
    state = replace(
        state,
        status=Status.RESOLVED,
        transitions=(*state.transitions, now),
        last_seen=now,
        resolved_episode=signal.episode_started_at,
    )
    events: list[EventPayload] = [
        AlertResolved(
            source=signal.source,
            integration_id=signal.integration_id,
            dedup_key=signal.dedup_key,
            resolved_at=signal.occurred_at,
            raw=dict(signal.raw),
        )
    ]
    if len(state.transitions) > policy.max_transitions and state.flapping_since is None:
        state = replace(state, flapping_since=now)
        events.append(_flapping(state, signal, policy))
    return Outcome(state, Action.RESOLVED, state.incident_id, tuple(events))


def _acknowledge(state: AlertState, signal: AlertSignal, now: datetime) -> Outcome:
    if state.status is not Status.FIRING or state.incident_id is None:
        return Outcome(state, Action.IGNORED, state.incident_id)
    event = AlertAcknowledged(
        source=signal.source,
        integration_id=signal.integration_id,
        dedup_key=signal.dedup_key,
        acknowledged_at=now,
        raw=dict(signal.raw),
    )
    return Outcome(state, Action.ACKNOWLEDGED, state.incident_id, (event,))


def _correlated(state: AlertState, signal: AlertSignal) -> AlertCorrelated:
    assert state.first_seen is not None and state.last_seen is not None
    return AlertCorrelated(
        **_told(signal),
        occurrence_count=max(state.occurrence_count, 2),
        first_seen=state.first_seen,
        last_seen=state.last_seen,
    )


def refused_signal(alert: AlertCorrelated) -> AlertSignal:
    """The trigger behind an alert the resolution stage refused (CorrelationRefused), as intake
    received it: what opens the new incident it belongs to."""
    return AlertSignal(
        kind=SignalKind.TRIGGER,
        source=alert.source,
        dedup_key=alert.dedup_key,
        title=alert.title or alert.dedup_key,
        severity=alert.severity,
        occurred_at=alert.occurred_at or alert.last_seen,
        integration_id=alert.integration_id,
        integration_name=alert.integration_name,
        source_severity=alert.source_severity,
        description=alert.description,
        service=alert.service,
        environment=alert.environment,
        component=alert.component,
        labels=alert.labels,
        annotations=alert.annotations,
        links=tuple(alert.links),
        raw=alert.raw,
    )


def _flapping(state: AlertState, signal: AlertSignal, policy: FlapPolicy) -> AlertFlapping:
    assert state.flapping_since is not None
    return AlertFlapping(
        dedup_key=signal.dedup_key,
        transitions=len(state.transitions),
        window_seconds=int(policy.window.total_seconds()),
        since=state.flapping_since,
    )


def logged(signal: AlertSignal, *, received_at: datetime) -> IncidentLogged:
    return IncidentLogged(**_told(signal), received_at=received_at)


def _told(signal: AlertSignal) -> dict[str, Any]:
    """What an alert tells, as IncidentLogged and AlertCorrelated (v2) both carry it."""
    return {
        "source": signal.source,
        "integration_id": signal.integration_id,
        "integration_name": signal.integration_name,
        "occurred_at": signal.occurred_at,
        "title": signal.title,
        "description": signal.description,
        "service": signal.service,
        "environment": signal.environment,
        "component": signal.component,
        "labels": dict(signal.labels),
        "annotations": dict(signal.annotations),
        "severity": signal.severity,
        "source_severity": signal.source_severity,
        "dedup_key": signal.dedup_key,
        "links": list(signal.links),
        "raw": dict(signal.raw),
    }


@dataclass(frozen=True)
class Report:
    """A person's incident report, validated."""

    title: str
    severity: Severity
    occurred_at: datetime
    reporter: Person | None = None
    description: str | None = None
    service: str | None = None
    environment: str | None = None
    business_impact: BusinessImpact | None = None
    urgency_hint: int | None = None
    source_severity: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)
    # When the source says this firing episode started (Alertmanager's and Grafana's startsAt, sent
    # unchanged with every notification of the episode); None where the source has no such notion.
    episode_started_at: datetime | None = None
    integration_id: str | None = None  # when posted with an integration key
    integration_name: str | None = None
    reported_at: datetime | None = None  # when the reporter says it was reported (else: received)


def report_logged(report: Report, *, incident_id: uuid.UUID, received_at: datetime) -> IncidentLogged:
    """A report always opens its own incident (people are not de-duplicated: triage may merge)."""
    return IncidentLogged(
        source="manual",
        integration_id=report.integration_id,
        integration_name=report.integration_name,
        reporter=report.reporter,
        occurred_at=report.occurred_at,
        reported_at=report.reported_at or received_at,
        received_at=received_at,
        title=report.title,
        description=report.description,
        service=report.service,
        environment=report.environment,
        labels=dict(report.labels),
        severity=report.severity,
        source_severity=report.source_severity,
        business_impact=report.business_impact,
        urgency_hint=report.urgency_hint,
        dedup_key=f"manual:{incident_id}",
        links=list(report.links),
        raw=dict(report.raw),
    )


# The outbox refuses an event larger than a stream takes (opsledger.bus.topics.MAX_EVENT_BYTES).
# The envelope around a payload is bounded (ids, times, actor, subject, correlation id: < 2 kB).
MAX_PAYLOAD_BYTES = MAX_EVENT_BYTES - 8_000


def payload_size(payload: Mapping[str, Any]) -> int:
    return len(orjson.dumps(payload))


def fit_for_log(payload: dict[str, Any], limit: int = MAX_PAYLOAD_BYTES) -> dict[str, Any] | None:
    """The (JSON) payload as it can go on the log: unchanged if it fits; without its raw body (a
    marker says so and how large it was) if that is what makes it too large; None if even that
    does not fit (the request must be refused)."""
    size = payload_size(payload)
    if size <= limit:
        return payload
    if "raw" not in payload:
        return None
    omitted = {"omitted": "the raw body made the event too large for the log", "bytes": payload_size(payload["raw"])}
    slim = {**payload, "raw": omitted}
    return slim if payload_size(slim) <= limit else None
