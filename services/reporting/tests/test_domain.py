"""Unit tests of the pure projection rules and the audit hash chain."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from typing import Any

import pytest

from opsledger.events import Envelope
from reporting.domain import (
    GENESIS_HASH,
    IncidentState,
    apply_event,
    canonical_event,
    canonical_payload,
    chain_hash,
    decode_status,
)

from . import factory as f


def replay(envelopes: list[Envelope]) -> IncidentState:
    assert envelopes[0].incident_id is not None
    state = IncidentState(incident_id=envelopes[0].incident_id)
    for env in envelopes:
        state = apply_event(state, env, f.decode(env))
    return state


def test_incident_logged_sets_identity_and_times() -> None:
    incident = uuid.uuid4()
    state = replay([f.logged(incident, 0)])
    assert (state.status, state.source, state.service, state.severity) == ("open", "alertmanager", "checkout", "high")
    assert state.logged_at == f.at(0) and state.occurred_at == f.at(-1)
    assert state.dedup_key == f"fp-{incident.hex[:8]}" and state.alert_count == 1 and state.alert_state == "firing"
    assert state.integration_id == "int-1" and state.event_count == 1


def test_triage_events_set_category_and_priority() -> None:
    first = f.logged(uuid.uuid4())
    state = replay([first, f.categorized(first, 1, "Database"), f.prioritized(first, 2, "P2")])
    assert (state.category, state.subcategory, state.priority, state.major) == ("Database", "Errors", "P2", False)
    state = apply_event(state, r := f.reprioritized(first, 3, "P1", "P2"), f.decode(r))
    assert (state.priority, state.major) == ("P1", True)


def test_correlated_alerts_count_and_raise_severity() -> None:
    first = f.logged(uuid.uuid4())
    state = replay([first, f.correlated(first, 1, 2), f.correlated(first, 2, 3)])
    assert (state.alert_count, state.severity) == (3, "critical")
    state = apply_event(state, r := f.alert_resolved(first, 3), f.decode(r))
    assert state.alert_state == "resolved" and state.status == "open", "a resolved alert does not resolve the incident"


def test_full_lifecycle_of_later_stages() -> None:
    incident = uuid.uuid4()
    events = f.lifecycle(incident)
    states = []
    state = IncidentState(incident_id=incident)
    for env in events:
        state = apply_event(state, env, f.decode(env))
        states.append(state)
    by_type = {e.event_type: s for e, s in zip(events, states, strict=True)}
    assert (by_type["IncidentAssigned"].assignee, by_type["IncidentAssigned"].team) == ("alice", "payments")
    assert by_type["IncidentAcknowledged"].status == "acknowledged"
    assert by_type["IncidentAcknowledged"].acknowledged_at == f.at(5)
    assert by_type["SlaWarning"].sla_state == "warning"
    assert by_type["IncidentEscalated"].escalation_count == 1 and by_type["IncidentEscalated"].team == "payments-l2"
    assert by_type["IncidentReopened"].status == "open" and by_type["IncidentReopened"].resolved_at is None
    final = states[-1]
    assert (final.status, final.resolved_at, final.closed_at, final.reopen_count) == ("closed", f.at(60), f.at(70), 1)
    assert final.event_count == len(events) and final.last_event_at == f.at(70)


def test_sla_breach_is_not_downgraded_by_a_later_warning() -> None:
    incident = uuid.uuid4()
    state = replay([f.logged(incident), f.foreign("SlaBreached", incident, 9, producer="sla"),
                    f.foreign("SlaWarning", incident, 10, producer="sla")])  # fmt: skip
    assert state.sla_state == "breached"


@pytest.mark.parametrize(
    ("event_type", "version", "expected"),
    [
        ("SomethingNew", 1, "unknown_type"),
        ("IncidentLogged", 99, "newer_version"),
        ("IncidentLogged", 2, "invalid_payload"),
    ],
)
def test_unknown_types_and_versions_are_counted_but_change_nothing_else(
    event_type: str, version: int, expected: str
) -> None:
    incident = uuid.uuid4()
    before = replay([f.logged(incident)])
    odd = f.foreign(event_type, incident, 5, {"title": "x", "whatever": [1, 2]}, version=version)
    payload, error = f.decode_with_error(odd)
    assert payload is None and decode_status(odd, None, error) == expected
    after = apply_event(before, odd, None)
    ignored = {"event_count", "last_event_type", "last_event_at"}
    assert {k: v for k, v in dataclasses.asdict(after).items() if k not in ignored} == {
        k: v for k, v in dataclasses.asdict(before).items() if k not in ignored
    }
    assert after.event_count == 2 and after.last_event_type == event_type


def test_lifecycle_payloads_of_unexpected_shape_do_not_crash() -> None:
    incident = uuid.uuid4()
    state = replay([f.logged(incident), f.foreign("IncidentAssigned", incident, 1, {"assignee": 42, "team": None}),
                    f.foreign("IncidentAssigned", incident, 2, {"assignee": {"name": "bob"}})])  # fmt: skip
    assert state.assignee == "bob" and state.team is None


MEANINGFUL = [f.name for f in dataclasses.fields(IncidentState) if f.name != "last_event_type"]


def test_interleavings_of_one_incidents_events_end_in_the_same_state() -> None:
    """Triage's two decisions and intake's correlated repeats are independent: in whatever order
    they arrive after the logging, the incident ends the same."""
    first = f.logged(uuid.uuid4())
    rest = [f.categorized(first, 1), f.prioritized(first, 2, "P2"), f.correlated(first, 3, 2)]
    finals: list[dict[str, Any]] = []
    for order in itertools.permutations(rest):
        state = replay([first, *order])
        finals.append({k: getattr(state, k) for k in MEANINGFUL})
    assert all(final == finals[0] for final in finals), finals
    assert (finals[0]["category"], finals[0]["priority"], finals[0]["alert_count"]) == ("Application", "P2", 2)


def test_triage_before_logging_is_kept_when_the_logging_arrives() -> None:
    first = f.logged(uuid.uuid4(), 0, service=None)
    late = replay([f.categorized(first, 1), f.prioritized(first, 2, "P4"), first])
    assert (late.status, late.category, late.priority, late.title) == (
        "open",
        "Application",
        "P4",
        first.payload["title"],
    )


def _canonical(env: Envelope, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "event_id": env.event_id, "event_type": env.event_type, "schema_version": env.schema_version,
        "incident_id": env.incident_id, "subject": env.subject, "occurred_at": env.occurred_at,
        "producer": env.producer, "correlation_id": env.correlation_id, "causation_id": env.causation_id,
        "actor": env.actor, "payload": canonical_payload(env.payload),
    }  # fmt: skip
    fields.update(changes)
    return canonical_event(**fields)


def test_hash_chain_links_entries_and_notices_any_changed_field() -> None:
    env = f.logged(uuid.uuid4())
    base = chain_hash(GENESIS_HASH, _canonical(env))
    assert base == chain_hash(GENESIS_HASH, _canonical(env)), "the hash must be deterministic"
    assert base != chain_hash("1" * 64, _canonical(env)), "the hash must depend on the previous one"
    edited = canonical_payload({**env.payload, "title": "edited"})
    changes: list[dict[str, Any]] = [
        {"actor": "someone else"}, {"producer": "x"}, {"occurred_at": f.at(3)}, {"payload": edited},
        {"event_type": "Other"},
    ]  # fmt: skip
    for change in changes:
        assert chain_hash(GENESIS_HASH, _canonical(env, **change)) != base, change


def test_canonical_payload_ignores_key_order() -> None:
    assert canonical_payload({"b": 1, "a": {"d": 2, "c": 3}}) == canonical_payload({"a": {"c": 3, "d": 2}, "b": 1})


def test_flapping_and_source_signals_update_alert_state_only() -> None:
    from opsledger.events import new_event
    from opsledger.events.intake import AlertAcknowledged, AlertFlapping, IncidentDetailsUpdated
    from opsledger.events.triage import TriageOverrideCleared

    first = f.logged(uuid.uuid4())
    assert first.incident_id is not None
    dedup = first.payload["dedup_key"]

    def wrap(payload: Any, minute: float) -> Envelope:
        return new_event(payload, producer="intake", actor="x", incident_id=first.incident_id, occurred_at=f.at(minute))

    base = replay([first])
    flapping = replay(
        [first, wrap(AlertFlapping(dedup_key=dedup, transitions=8, window_seconds=600, since=f.at(1)), 2)]
    )
    assert flapping.alert_state == "flapping" and flapping.status == "open"
    for payload in (
        AlertAcknowledged(source="pagerduty", dedup_key=dedup, acknowledged_at=f.at(3)),
        IncidentDetailsUpdated(reason="impact corrected", urgency_hint=1),
        TriageOverrideCleared(field="priority"),
    ):
        after = replay([first, wrap(payload, 3)])
        assert after.event_count == 2 and after.last_event_type == type(payload).event_type
        assert (after.status, after.acknowledged_at, after.priority) == (base.status, None, base.priority), payload


def test_sla_events_record_each_target_in_any_order() -> None:
    incident = uuid.uuid4()
    sla = [
        f.foreign("SlaWarning", incident, 5, {"target": "resolve", "threshold": 0.8}, producer="sla"),
        f.foreign("SlaBreached", incident, 6, {"target": "acknowledge"}, producer="sla"),
        f.foreign("SlaWarning", incident, 7, {"target": "acknowledge"}, producer="sla"),
        f.foreign("SlaWarning", incident, 8, {"threshold": 0.5}, producer="sla"),  # names no target
    ]
    finals = {
        (s.sla_warned, s.sla_breached, s.sla_state)
        for order in itertools.permutations(sla)
        for s in [replay([f.logged(incident), *order])]
    }
    assert finals == {(("acknowledge", "resolve", "unspecified"), ("acknowledge",), "breached")}


def test_source_acknowledgement_is_shown_but_does_not_acknowledge_the_incident() -> None:
    from opsledger.events import new_event
    from opsledger.events.intake import AlertAcknowledged

    first = f.logged(uuid.uuid4())
    ack = new_event(
        AlertAcknowledged(source="pagerduty", dedup_key=first.payload["dedup_key"], acknowledged_at=f.at(1)),
        producer="intake", actor="integration:int-1", incident_id=first.incident_id, occurred_at=f.at(2),
    )  # fmt: skip
    state = replay([first, ack, f.foreign("IncidentAcknowledged", first.incident_id, 9)])  # type: ignore[arg-type]
    assert state.source_acknowledged_at == f.at(2), "intake's clock, like every other time"
    assert state.acknowledged_at == f.at(9) and state.status == "acknowledged"


def test_decode_status_tells_newer_from_unsupported_older_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    from opsledger.events import EventPayload, Stream
    from opsledger.events.registry import EventRegistry
    from reporting import domain

    scratch = EventRegistry()  # not the global one: the event catalog must not see a test type

    @scratch.register("Versioned", 2, Stream.INCIDENTS)
    class Versioned(EventPayload):
        pass

    monkeypatch.setattr(domain, "registry", scratch)
    incident = uuid.uuid4()
    assert decode_status(f.foreign("Versioned", incident, 1, version=3), None) == "newer_version"
    assert decode_status(f.foreign("Versioned", incident, 1, version=1), None) == "unsupported_version"
    assert decode_status(f.foreign("Unheard", incident, 1), None) == "unknown_type"
