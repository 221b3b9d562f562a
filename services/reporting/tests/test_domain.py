"""Unit tests of the pure projection rules and the audit hash chain."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from typing import Any

import pytest

from opsledger.events import Envelope
from opsledger.events.intake import AlertCorrelated
from opsledger.events.resolution import CorrelationRefused
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


def test_an_alert_refused_by_a_closed_incident_leaves_it_as_it_was() -> None:
    """Attached before intake knew of the closure, refused by the resolution stage, logged anew."""
    first = f.logged(uuid.uuid4())
    incident = first.incident_id
    assert incident is not None
    closed = [first, f.alert_resolved(first, 1), f.resolved(incident, 2), f.closed(incident, 3)]
    racing = f.correlated(first, 4, 2)
    refusal = CorrelationRefused(reason="closed", alert=AlertCorrelated.model_validate(racing.payload))
    state, after = replay(closed), replay([*closed, racing, f.stage(refusal, incident, 5, "resolution")])
    same = ("status", "alert_count", "severity", "alert_state", "closed_at")
    assert [getattr(after, k) for k in same] == [getattr(state, k) for k in same]
    assert (after.alert_state, after.event_count, after.last_event_type) == ("resolved", 6, "CorrelationRefused")


def test_full_lifecycle_of_later_stages() -> None:
    incident = uuid.uuid4()
    events = f.lifecycle(incident)
    states = []
    state = IncidentState(incident_id=incident)
    for env in events:
        state = apply_event(state, env, f.decode(env))
        states.append(state)
    by_step = dict(zip((f"{e.event_type}@{e.occurred_at:%M:%S}" for e in events), states, strict=True))
    first = by_step["IncidentAssigned@03:00"]
    assert (first.status, first.assignee, first.assignee_name, first.team, first.team_name) == (
        "assigned", "alice", "Alice", "payments", "Payments",
    )  # fmt: skip
    ack = by_step["IncidentAcknowledged@05:00"]
    assert (ack.status, ack.acknowledged_at, ack.acknowledged_by) == ("acknowledged", f.at(5), "alice")
    warned = by_step["SlaWarning@20:00"]
    assert (warned.sla_state, warned.sla_resolution_state, warned.sla_warned) == ("warned", "warned", ("resolution",))
    assert warned.sla_resolution_due_at == f.at(50) and warned.sla_response_state is None
    escalated = by_step["IncidentEscalated@25:00"]
    assert (escalated.escalation_count, escalated.escalation_tier, escalated.team) == (1, 1, "payments")
    second = by_step["IncidentAssigned@25:30"]
    assert (second.status, second.assignee, second.team) == ("assigned", "bob", "payments-l2")
    assert second.acknowledged_at == f.at(5), "MTTA keeps the first acknowledgement"
    assert (by_step["IncidentResolved@40:00"].status, by_step["IncidentResolved@40:00"].resolution_code) == (
        "resolved", "fixed",
    )  # fmt: skip
    reopened = by_step["IncidentReopened@50:00"]
    assert (reopened.status, reopened.resolved_at, reopened.resolution_code) == ("open", None, None)
    final = states[-1]
    assert (final.status, final.resolved_at, final.closed_at, final.reopen_count) == ("closed", f.at(60), f.at(70), 1)
    assert final.event_count == len(events) and final.last_event_at == f.at(70)


def test_sla_breach_is_not_downgraded_by_a_later_warning() -> None:
    incident = uuid.uuid4()
    state = replay([f.logged(incident), f.sla("SlaBreached", incident, 9), f.sla("SlaWarning", incident, 10)])
    assert (state.sla_state, state.sla_resolution_state) == ("breached", "breached")


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


def test_lifecycle_payloads_that_do_not_match_their_schema_are_shown_but_change_nothing() -> None:
    """Reporting reads the later stages typed: a payload of another shape (e.g. written before the
    schema was registered) is in the timeline as invalid_payload, and the incident stays as it was."""
    incident = uuid.uuid4()
    before = replay([f.logged(incident), f.assigned(incident, 1)])
    guessed = f.foreign("IncidentAssigned", incident, 2, {"assignee": {"name": "bob"}, "team": "other"})
    payload, error = f.decode_with_error(guessed)
    assert payload is None and decode_status(guessed, None, error) == "invalid_payload"
    after = apply_event(before, guessed, None)
    assert (after.assignee, after.team, after.status, after.event_count) == ("alice", "payments", "assigned", 3)


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


def test_canonical_bytes_are_those_every_stored_chain_was_hashed_over() -> None:
    """The bytes an entry's hash covers never change: entries hashed before (str() of each id, the
    time in UTC with microseconds) still verify, whatever types the ids and times arrive as."""
    from datetime import timedelta, timezone

    import orjson

    env = f.logged(uuid.uuid4())
    cause = uuid.uuid4()
    payload = canonical_payload(env.payload)
    written = orjson.dumps(
        [str(env.event_id), env.event_type, env.schema_version, str(env.incident_id), env.subject,
         env.occurred_at.isoformat(timespec="microseconds"), env.producer, "corr", str(cause), env.actor]
    ) + b"\n" + payload.encode()  # fmt: skip
    plus_two = env.occurred_at.astimezone(timezone(timedelta(hours=2))).replace(microsecond=0)
    assert _canonical(env, correlation_id="corr", causation_id=cause) == written
    assert _canonical(env, correlation_id="corr", causation_id=cause, occurred_at=plus_two) == written.replace(
        env.occurred_at.isoformat(timespec="microseconds").encode(),
        env.occurred_at.replace(microsecond=0).isoformat(timespec="microseconds").encode(),
    )
    with_none = orjson.loads(_canonical(env, incident_id=None, causation_id=None).split(b"\n")[0])
    assert (with_none[3], with_none[8]) == (None, None)


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
        f.sla("SlaWarning", incident, 5, "resolution"),
        f.sla("SlaBreached", incident, 6, "response"),
        f.sla("SlaWarning", incident, 7, "response"),
    ]
    finals = {
        (s.sla_warned, s.sla_breached, s.sla_state, s.sla_response_state)
        for order in itertools.permutations(sla)
        for s in [replay([f.logged(incident), *order])]
    }
    assert finals == {(("resolution", "response"), ("response",), "breached", "breached")}


def test_source_acknowledgement_is_shown_but_does_not_acknowledge_the_incident() -> None:
    from opsledger.events import new_event
    from opsledger.events.intake import AlertAcknowledged

    first = f.logged(uuid.uuid4())
    ack = new_event(
        AlertAcknowledged(source="pagerduty", dedup_key=first.payload["dedup_key"], acknowledged_at=f.at(1)),
        producer="intake", actor="integration:int-1", incident_id=first.incident_id, occurred_at=f.at(2),
    )  # fmt: skip
    assert first.incident_id is not None
    state = replay([first, ack, f.acknowledged(first.incident_id, 9)])
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


def test_hold_and_resume_return_to_where_the_incident_stood() -> None:
    from opsledger.events.assignment import HoldReason, IncidentPutOnHold, IncidentResumed

    incident = uuid.uuid4()
    hold = f.stage(IncidentPutOnHold(reason=HoldReason.AWAITING_VENDOR, note="ticket 123"), incident, 6, "assignment")
    resume = f.stage(IncidentResumed(reason=HoldReason.AWAITING_VENDOR), incident, 8, "assignment")
    base = [f.logged(incident), f.assigned(incident, 1)]
    held = replay([*base, hold])
    assert (held.status, held.on_hold_reason) == ("on_hold", "awaiting_vendor")
    assert replay([*base, hold, f.assigned(incident, 7, "other", "carol")]).status == "on_hold", (
        "reassigned, still waiting"
    )
    assert (replay([*base, hold, resume]).status, replay([*base, hold, resume]).on_hold_reason) == ("assigned", None)
    acked = replay([*base, f.acknowledged(incident, 2), hold, resume])
    assert acked.status == "acknowledged"
    assert replay([*base, f.resolved(incident, 5), hold]).status == "resolved", "a resolved incident is not on hold"


def test_sla_clock_states_per_target_and_the_overall_state() -> None:
    from opsledger.events.sla import (
        SlaCancelled,
        SlaCancelReason,
        SlaClockPaused,
        SlaClockResumed,
        SlaClockStarted,
        SlaMet,
    )

    incident = uuid.uuid4()

    def clock(target: str, due: float) -> dict[str, Any]:
        return {"target": target, "target_seconds": 900, "due_at": f.at(due), "policy_version": 3, "priority": "P1"}

    def ev(payload: Any, minute: float) -> Envelope:
        return f.stage(payload, incident, minute, "sla")

    started = [
        ev(SlaClockStarted(**clock("response", 15), counted_from=f.at(0)), 1),
        ev(SlaClockStarted(**clock("resolution", 240), counted_from=f.at(0)), 1),
    ]
    running = replay([f.logged(incident), *started])
    assert (running.sla_state, running.sla_response_state, running.sla_resolution_state) == ("running",) * 3
    assert (running.sla_response_due_at, running.sla_resolution_due_at) == (f.at(15), f.at(240))
    met = replay(
        [f.logged(incident), *started, ev(SlaMet(**clock("response", 15), met_at=f.at(5), elapsed_seconds=300), 5)]
    )
    assert (met.sla_response_state, met.sla_state) == ("met", "running")
    pause = ev(SlaClockPaused(**clock("resolution", 240), elapsed_seconds=600, reason="awaiting_vendor"), 10)
    paused = replay([f.logged(incident), *started, pause])
    assert (paused.sla_resolution_state, paused.sla_state) == ("paused", "running"), "the response clock still runs"
    resume = ev(SlaClockResumed(**clock("resolution", 300), paused_seconds=3600), 70)
    resumed = replay([f.logged(incident), *started, f.sla("SlaWarning", incident, 9), pause, resume])
    assert (resumed.sla_resolution_state, resumed.sla_resolution_due_at) == ("warned", f.at(300))
    retarget = [
        f.sla("SlaBreached", incident, 15, "response"),
        ev(SlaCancelled(**clock("response", 15), reason=SlaCancelReason.RETARGETED, was_breached=True), 16),
        ev(SlaClockStarted(**clock("response", 30), counted_from=f.at(0), retargeted=True), 16),
    ]
    cancelled = replay([f.logged(incident), *started, *retarget])
    assert cancelled.sla_response_state == "running" and cancelled.sla_breached == ("response",)
    assert cancelled.sla_state == "breached", "a breach stays in the record after re-targeting"


def test_integration_acknowledgement_tasks_and_review() -> None:
    from opsledger.events.assignment import (
        AcknowledgementChannel,
        AssigneeChoice,
        IncidentAcknowledged,
        TaskAssigned,
        TaskCreated,
        TaskStatus,
        TaskStatusChanged,
    )
    from opsledger.events.common import PersonRef
    from opsledger.events.resolution import Audience, IncidentStatusUpdated, PostIncidentReviewCompleted

    incident = uuid.uuid4()
    tasks = [uuid.uuid4(), uuid.uuid4()]
    events = [
        f.logged(incident),
        f.assigned(incident, 1),
        f.stage(IncidentAcknowledged(via=AcknowledgementChannel.INTEGRATION, integration_id="int-9"), incident, 2,
                "assignment", actor="integration:int-9"),
        *(f.stage(TaskCreated(task_id=t, title=f"t{n}"), incident, 3 + n, "assignment") for n, t in enumerate(tasks)),
        f.stage(TaskAssigned(task_id=tasks[0], assignee=PersonRef(sub="bob"), chosen_by=AssigneeChoice.LEAST_LOADED,
                             reason="fewest open tasks"), incident, 6, "assignment"),
        f.stage(TaskStatusChanged(task_id=tasks[0], status=TaskStatus.IN_PROGRESS, previous_status=TaskStatus.OPEN),
                incident, 7, "assignment"),
        f.stage(TaskStatusChanged(task_id=tasks[1], status=TaskStatus.DONE, previous_status=TaskStatus.OPEN),
                incident, 8, "assignment"),
        f.stage(IncidentStatusUpdated(audience=Audience.STAKEHOLDERS, message="mitigated"), incident, 9, "resolution"),
        f.stage(PostIncidentReviewCompleted(review_id="r1", summary="s", impact="i", root_cause="rc",
                                            approved_by=PersonRef(sub="manager")), incident, 10, "resolution"),
    ]  # fmt: skip
    state = replay(events)
    assert (state.status, state.acknowledged_by, state.acknowledged_at) == (
        "acknowledged",
        "integration:int-9",
        f.at(2),
    )
    assert (state.task_count, state.open_task_count, state.reviewed_at) == (2, 1, f.at(10))
    assert state.event_count == len(events) and state.last_event_type == "PostIncidentReviewCompleted"


def test_the_projection_registry_takes_each_latest_version_once() -> None:
    from opsledger.events.intake import IncidentLoggedV1
    from reporting.domain import APPLIERS, applies

    assert APPLIERS["IncidentLogged"] is not None
    with pytest.raises(ValueError, match="projected twice"):
        applies(f.IncidentAssigned)(lambda s, p, at: None)
    with pytest.raises(ValueError, match="latest version"):
        applies(IncidentLoggedV1)(lambda s, p, at: None)
