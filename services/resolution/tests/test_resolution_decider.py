"""Unit tests of the resolution stage, no infrastructure: the state machine as the other stages'
events move it, every transition this service owns and every refusal, auto-resolution from source
signals and the integration's policy, reopening on a re-fire, auto-close, the review requirement,
the review draft from a known event history, and its Markdown."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from opsledger.bus.outbox import Outbox
from opsledger.clock import ManualClock
from opsledger.events import Envelope, EventPayload, derived_event_id, new_event, registry
from opsledger.events.assignment import (
    IncidentAcknowledged,
    IncidentAssigned,
    IncidentEscalated,
    IncidentPutOnHold,
    IncidentResumed,
)
from opsledger.events.common import PersonRef
from opsledger.events.intake import AlertCorrelated, AlertResolved, IncidentLogged
from opsledger.events.resolution import ActionItem, Audience, ClosureCode, ResolutionCode
from opsledger.events.sla import SlaBreached, SlaWarning
from opsledger.events.triage import IncidentPrioritized, IncidentReprioritized, PriorityInputs
from opsledger.stage import Command, Decision
from opsledger.timers import FiredTimer
from resolution import decider, domain
from resolution.domain import Action, Context, Incident, Policy, Status
from resolution.handlers import Resolution
from resolution.settings import Settings

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
POLICY = Policy()
ALICE = PersonRef(sub="alice", name="Alice Ops", email="alice@example.com")
BOB = PersonRef(sub="bob", name="Bob Builder")
MANAGER = PersonRef(sub="mia", name="Mia Manager")
ID = uuid.UUID("00000000-0000-0000-0000-0000000000a1")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ctx(minutes: float = 0, policy: Policy = POLICY) -> Context:
    return Context(policy, at(minutes))


def ev(payload: EventPayload, minutes: float = 0, actor: str = "system:test", **kw: Any) -> Envelope:
    return new_event(payload, producer="test", actor=actor, incident_id=ID, occurred_at=at(minutes), **kw)


def logged(source: str = "alertmanager", dedup_key: str = "db-disk", actor: str = "integration:am") -> Envelope:
    payload = IncidentLogged(
        source=source,
        integration_id="int-am" if source != "manual" else None,
        occurred_at=T0,
        received_at=T0,
        title="db-1 disk 95% full",
        service="payments-db",
        severity="critical",  # type: ignore[arg-type]
        dedup_key=dedup_key,
    )
    return ev(payload, actor=actor, correlation_id="alert-1")


def prioritized(priority: str) -> Envelope:
    inputs = PriorityInputs(impact=1, urgency=1)
    return ev(IncidentPrioritized(priority=priority, major=priority == "P1", inputs=inputs, matrix_version=1), 0.5)


def assigned(minutes: float = 1, assignee: PersonRef | None = BOB) -> Envelope:
    return ev(IncidentAssigned(team_id="dba", team_name="DBA", assignee=assignee, reason="on call"), minutes)


def acknowledged(minutes: float = 5, by: PersonRef = BOB) -> Envelope:
    return ev(IncidentAcknowledged(via="api", by=by), minutes, actor=f"user:{by.sub}")  # type: ignore[arg-type]


def on_hold(minutes: float = 10) -> Envelope:
    return ev(IncidentPutOnHold(reason="awaiting_vendor", note="vendor ticket 42"), minutes)  # type: ignore[arg-type]


def resumed(minutes: float = 20) -> Envelope:
    return ev(IncidentResumed(reason="awaiting_vendor"), minutes)  # type: ignore[arg-type]


def correlated(dedup_key: str = "db-disk", minutes: float = 2, source: str = "alertmanager") -> Envelope:
    payload = AlertCorrelated(
        source=source,
        integration_id="int-am",
        dedup_key=dedup_key,
        occurrence_count=2,
        first_seen=T0,
        last_seen=at(minutes),
        severity="critical",  # type: ignore[arg-type]
    )
    return ev(payload, minutes)


def alert_resolved(
    dedup_key: str = "db-disk", minutes: float = 30, source: str = "alertmanager", integration_id: str | None = "int-am"
) -> Envelope:
    payload = AlertResolved(source=source, integration_id=integration_id, dedup_key=dedup_key, resolved_at=at(minutes))
    return ev(payload, minutes)


def decide(state: Incident | None, event: Envelope, context: Context | None = None) -> Decision[Incident]:
    return decider.decider.decide(state, event, registry.decode(event), context or ctx(event_minutes(event)))


def event_minutes(event: Envelope) -> float:
    return (event.occurred_at - T0).total_seconds() / 60


def apply(*events: Envelope, state: Incident | None = None) -> Incident:
    for e in events:
        state = decide(state, e).state
    assert state is not None
    return state


def run(command: Command[Incident, Context], state: Incident | None, context: Context) -> Decision[Incident]:
    return command(state, context)


def resolve_cmd(code: ResolutionCode = ResolutionCode.FIXED) -> Command[Incident, Context]:
    return decider.resolve(ID, ALICE, code=code, root_cause="full disk: log rotation off", steps_taken="rotated logs")


def review_cmd(items: list[ActionItem] | None = None) -> Command[Incident, Context]:
    return decider.complete_review(
        ID,
        MANAGER,
        review_id="PIR-1",
        summary="disk filled",
        impact="payments slow for 30 min",
        root_cause="log rotation disabled",
        contributing_factors=["no disk alert below 95%"],
        went_well=["fast acknowledgement"],
        to_improve=["alert earlier"],
        action_items=items or [],
    )


def resolved_state(priority: str = "P3", minutes: float = 30) -> Incident:
    state = apply(logged(), prioritized(priority), assigned(), acknowledged())
    new = run(resolve_cmd(), state, ctx(minutes)).state
    assert new is not None
    return new


def types(events: Any) -> list[str]:
    return [e.event_type for e in events]


# --------------------------------------------------------------------------- the state machine followed


def test_the_consumer_subscribes_to_what_the_decider_reacts_to_and_subscriptions_ask_for() -> None:
    expected = {
        "IncidentLogged",
        "IncidentPrioritized",
        "IncidentReprioritized",
        "IncidentAssigned",
        "IncidentAcknowledged",
        "IncidentPutOnHold",
        "IncidentResumed",
        "IncidentEscalated",
        "SlaWarning",
        "SlaBreached",
        "AlertCorrelated",
        "AlertResolved",
    }
    assert decider.decider.event_types == expected
    assert decider.decider.timer_kinds == {"autoclose"}
    settings = Settings()
    stage = Resolution(settings, Outbox(settings), ManualClock(T0))
    # The consumer also hears this service's own events, for the subscriptions that ask for them.
    own = {
        "IncidentResolved",
        "IncidentClosed",
        "IncidentReopened",
        "IncidentStatusUpdated",
        "PostIncidentReviewCompleted",
    }
    assert stage.consumer().event_types == expected | own
    assert set(stage.timer_handlers()) == {"autoclose", "webhook"}


def test_the_lifecycle_follows_the_other_stages_events() -> None:
    state = apply(logged())
    assert state.status is Status.LOGGED and state.alerts == {"db-disk": True}
    assert (state.title, state.source, state.correlation_id, state.logged_at) == (
        "db-1 disk 95% full",
        "alertmanager",
        "alert-1",
        T0,
    )
    steps = [
        (prioritized("P2"), Status.LOGGED),
        (assigned(), Status.ASSIGNED),
        (acknowledged(), Status.ACKNOWLEDGED),
        (on_hold(), Status.ON_HOLD),
        (assigned(12), Status.ON_HOLD),  # a reassignment while on hold keeps it on hold
        (resumed(), Status.IN_PROGRESS),
        (on_hold(25), Status.ON_HOLD),
        (resumed(26), Status.IN_PROGRESS),
        (assigned(27, ALICE), Status.ASSIGNED),  # escalated to someone new: acknowledged again
        (acknowledged(28, ALICE), Status.ACKNOWLEDGED),
    ]
    for event, expected in steps:
        state = apply(event, state=state)
        assert state.status is expected, event.event_type
    assert state.priority == "P2" and state.acknowledged_at == at(5), "the first acknowledgement counts"
    assert set(state.people) == {"bob", "alice"} and state.people["bob"].parts == ("assigned", "acknowledged")
    assert state.timeline[0].event_type == "IncidentLogged" and len(state.timeline) == 11


def test_events_of_unknown_incidents_and_repeated_logging_change_nothing() -> None:
    for event in (assigned(), acknowledged(), alert_resolved(), correlated(), prioritized("P1"), on_hold()):
        assert decide(None, event) == Decision(None)
    state = apply(logged())
    assert decide(state, logged()).state is state


def test_reprioritization_and_noted_events_are_recorded() -> None:
    reprioritized = IncidentReprioritized(
        priority="P1",
        previous_priority="P3",
        major=True,
        inputs=PriorityInputs(impact=1, urgency=1),
        matrix_version=1,
        reason="correlated alert raised severity",
    )
    escalated = IncidentEscalated(from_tier=0, to_tier=1, cause="manual", reason="no progress")  # type: ignore[arg-type]
    clock: dict[str, Any] = dict(target="response", target_seconds=900, due_at=at(15), policy_version=1)
    warning = SlaWarning(**clock, threshold_percent=75, threshold_at=at(11), fired_at=at(11))
    breached = SlaBreached(**clock, fired_at=at(15))
    events = [ev(reprioritized, 1), ev(escalated, 2), ev(warning, 11), ev(breached, 15)]
    state = apply(logged(), prioritized("P3"), *events)
    assert state.priority == "P1" and state.status is Status.LOGGED
    assert [e.event_id for e in state.timeline[2:]] == [e.event_id for e in events]
    assert "75% of the response target" in state.timeline[-2].text and "SLA breached" in state.timeline[-1].text


# --------------------------------------------------------------------------- resolve


@pytest.mark.parametrize(
    "history",
    [[], [assigned()], [assigned(), acknowledged()], [assigned(), on_hold()], [assigned(), on_hold(), resumed()]],
    ids=["logged", "assigned", "acknowledged", "on_hold", "in_progress"],
)
def test_an_open_incident_can_be_resolved(history: list[Envelope]) -> None:
    state = apply(logged(), *history)
    decision = run(resolve_cmd(), state, ctx(30))
    assert decision.state is not None and decision.state.status is Status.RESOLVED
    (resolved,) = decision.events
    assert resolved.model_dump(mode="json") == {
        "code": "fixed",
        "duplicate_of": None,
        "root_cause": "full disk: log rotation off",
        "steps_taken": "rotated logs",
        "change_ref": None,
        "auto": False,
        "resolved_by": ALICE.model_dump(),
    }
    (timer,) = decision.schedule
    assert (timer.key, timer.due_at, dict(timer.data)) == (
        f"autoclose:{ID}",
        at(30) + timedelta(days=7),
        {"incident_id": str(ID)},
    )
    assert decision.state.resolution == domain.Resolution(
        ResolutionCode.FIXED, at(30), False, ALICE, "full disk: log rotation off", "rotated logs"
    )
    assert "resolved" in decision.state.people["alice"].parts


def test_resolving_a_resolved_or_closed_incident_is_refused() -> None:
    state = resolved_state()
    with pytest.raises(domain.Refused) as refused:
        run(resolve_cmd(), state, ctx(31))
    assert refused.value.status is Status.RESOLVED and "reopen" in refused.value.refusal.missing[0]
    closed = run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), state, ctx(40)).state
    with pytest.raises(domain.Refused) as refused:
        run(resolve_cmd(), closed, ctx(41))
    assert refused.value.status is Status.CLOSED and "final" in refused.value.refusal.reason
    with pytest.raises(domain.NotFound):
        run(resolve_cmd(), None, ctx())


# --------------------------------------------------------------------------- close


@pytest.mark.parametrize(
    "history",
    [[], [assigned()], [assigned(), acknowledged()], [assigned(), on_hold()], [assigned(), on_hold(), resumed()]],
    ids=["logged", "assigned", "acknowledged", "on_hold", "in_progress"],
)
def test_closing_an_unresolved_incident_is_refused(history: list[Envelope]) -> None:
    state = apply(logged(), *history)
    with pytest.raises(domain.Refused) as refused:
        run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), state, ctx(30))
    assert refused.value.status is state.status
    assert refused.value.refusal.missing == ("a resolution (POST .../resolve)",)


def test_a_resolved_incident_closes_and_its_auto_close_is_cancelled() -> None:
    state = resolved_state("P3")
    decision = run(decider.close(ID, ALICE, ClosureCode.RESOLVED, "fix held"), state, ctx(60))
    assert decision.state is not None and decision.state.status is Status.CLOSED
    assert decision.state.closed_at == at(60) and decision.state.closure_code is ClosureCode.RESOLVED
    assert decision.cancel == [f"autoclose:{ID}"]
    assert decision.events[0].model_dump(mode="json")["closed_by"] == ALICE.model_dump()
    with pytest.raises(domain.Refused, match="closed already"):
        run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), decision.state, ctx(61))


@pytest.mark.parametrize("priority", ["P1", "P2"])
def test_a_p1_or_p2_needs_its_approved_review_before_closure(priority: str) -> None:
    state = resolved_state(priority)
    with pytest.raises(domain.Refused) as refused:
        run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), state, ctx(60))
    assert refused.value.status is Status.RESOLVED
    assert refused.value.refusal.missing == ("an approved post-incident review (POST .../review)",)
    reviewed = run(review_cmd(), state, ctx(90)).state
    closed = run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), reviewed, ctx(91)).state
    assert closed is not None and closed.status is Status.CLOSED


def test_which_priorities_need_a_review_is_configurable() -> None:
    state = resolved_state("P1")
    lenient = Policy(review_required=frozenset({"P2"}))
    assert run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), state, ctx(60, lenient)).events
    strict = Policy(review_required=frozenset({"P3"}))
    with pytest.raises(domain.Refused):
        run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), resolved_state("P3"), ctx(60, strict))


# --------------------------------------------------------------------------- reopen


def test_a_responder_reopens_within_the_window() -> None:
    state = resolved_state()
    decision = run(decider.reopen(ID, BOB, "disk filled again", as_responder=True), state, ctx(30 + 60 * 24 * 7))
    assert decision.state is not None and decision.state.status is Status.IN_PROGRESS
    assert decision.state.reopened == 1 and decision.cancel == [f"autoclose:{ID}"]
    assert decision.events[0].model_dump(mode="json")["by"] == {
        "kind": "person",
        "person": BOB.model_dump(),
        "dedup_key": None,
    }
    # Open again: it can be resolved again, not reopened.
    assert domain.refusal(Action.RESOLVE, decision.state, ctx(30)) is None
    with pytest.raises(domain.Refused, match="open already"):
        run(decider.reopen(ID, BOB, "again", as_responder=True), decision.state, ctx(31))


def test_reopening_after_the_window_or_a_closed_incident_is_refused() -> None:
    state = resolved_state()
    with pytest.raises(domain.Refused) as refused:
        run(decider.reopen(ID, BOB, "late", as_responder=True), state, ctx(31 + 60 * 24 * 7))
    assert "reopen window ended" in refused.value.refusal.reason and refused.value.refusal.missing == (
        "a new incident",
    )
    closed = run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), state, ctx(40)).state
    with pytest.raises(domain.Refused, match="closed"):
        run(decider.reopen(ID, BOB, "again", as_responder=True), closed, ctx(41))
    short = Policy(reopen_window=timedelta(hours=1))
    with pytest.raises(domain.Refused):
        run(decider.reopen(ID, BOB, "late", as_responder=True), state, ctx(91, short))


def test_a_reporter_reopens_only_what_they_reported() -> None:
    state = apply(logged(source="manual", actor="user:rita"), assigned(), acknowledged())
    assert state.reporter_actor == "user:rita" and state.alerts == {}
    resolved = run(resolve_cmd(), state, ctx(30)).state
    rita, other = PersonRef(sub="rita"), PersonRef(sub="ron")
    with pytest.raises(domain.Forbidden):
        run(decider.reopen(ID, other, "still broken", as_responder=False), resolved, ctx(40))
    decision = run(decider.reopen(ID, rita, "still broken", as_responder=False), resolved, ctx(40))
    assert decision.state is not None and decision.state.status is Status.IN_PROGRESS


# --------------------------------------------------------------------------- status updates


def test_status_updates_until_closure() -> None:
    state = apply(logged(), assigned())
    decision = run(decider.status_update(BOB, Audience.STAKEHOLDERS, "failing over to db-2"), state, ctx(10))
    assert decision.events[0].model_dump(mode="json") == {"audience": "stakeholders", "message": "failing over to db-2"}
    assert decision.state is not None and decision.state.status is Status.ASSIGNED
    closed = run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), resolved_state(), ctx(40)).state
    with pytest.raises(domain.Refused):
        run(decider.status_update(BOB, Audience.RESPONDERS, "x"), closed, ctx(41))


# --------------------------------------------------------------------------- auto-resolve and re-fire


def test_auto_resolves_when_every_correlated_alert_resolved_at_its_source() -> None:
    state = apply(logged(), correlated("db-disk"), correlated("db-inodes", 3))
    assert state.alerts == {"db-disk": True, "db-inodes": True}
    first = decide(state, alert_resolved("db-disk", 20))
    assert not first.events and first.state is not None and first.state.status is Status.LOGGED
    cause = alert_resolved("db-inodes", 30)
    decision = decide(first.state, cause)
    assert types(decision.events) == ["IncidentResolved"]
    body = decision.events[0].model_dump(mode="json")
    assert body["auto"] is True and body["resolved_by"] is None and body["code"] == "other"
    assert "db-disk, db-inodes" in body["steps_taken"]
    assert decision.state is not None and decision.state.status is Status.RESOLVED
    assert [t.key for t in decision.schedule] == [f"autoclose:{ID}"]
    # On the timeline with the id the stage derives for it.
    assert decision.state.timeline[-1].event_id == derived_event_id(cause.event_id, "IncidentResolved")
    # A second resolve signal changes the record, announces nothing.
    assert not decide(decision.state, alert_resolved("db-disk", 40)).events


def test_auto_resolve_follows_the_integrations_policy() -> None:
    generic = apply(logged(source="generic"))
    assert not decide(generic, alert_resolved(source="generic", integration_id="int-am")).events
    allow_generic = Policy(auto_resolve_integrations={"int-am": True})
    assert decide(generic, alert_resolved(source="generic"), ctx(30, allow_generic)).events
    deny = Policy(auto_resolve_integrations={"int-am": False})
    assert not decide(apply(logged()), alert_resolved(), ctx(30, deny)).events
    assert decide(apply(logged()), alert_resolved(source="pagerduty")).events


def test_an_alert_firing_again_within_the_window_reopens() -> None:
    state = decide(apply(logged()), alert_resolved()).state
    assert state is not None and state.status is Status.RESOLVED and state.alerts == {"db-disk": False}
    cause = correlated("db-disk", 120)
    decision = decide(state, cause)
    assert types(decision.events) == ["IncidentReopened"]
    assert decision.events[0].model_dump(mode="json")["by"] == {
        "kind": "alert_refired",
        "person": None,
        "dedup_key": "db-disk",
    }
    assert decision.state is not None and decision.state.status is Status.IN_PROGRESS
    assert decision.cancel == [f"autoclose:{ID}"] and decision.state.alerts == {"db-disk": True}
    assert decision.state.timeline[-1].event_id == derived_event_id(cause.event_id, "IncidentReopened")
    # Past the window, or closed: no reopen. The alert is refused, with what intake needs to open
    # the new incident it belongs to.
    late = decide(state, correlated("db-disk", 31 + 60 * 24 * 7))
    assert types(late.events) == ["CorrelationRefused"]
    assert late.state is not None and late.state.status is Status.RESOLVED and late.state.reopened == 0
    assert "reopen window ended" in late.events[0].model_dump()["reason"]
    closed = run(decider.close(ID, ALICE, ClosureCode.RESOLVED, None), state, ctx(40)).state
    assert closed is not None
    cause = correlated("db-disk", 50)
    refused = decide(closed, cause)
    assert types(refused.events) == ["CorrelationRefused"] and not refused.cancel and not refused.schedule
    body = refused.events[0].model_dump(mode="json")
    assert "closed" in body["reason"] and body["alert"] == cause.payload
    assert refused.state is not None and refused.state.status is Status.CLOSED
    assert refused.state.alerts == closed.alerts == {"db-disk": False}, "the alert is the new incident's"
    assert refused.state.timeline[-1].event_id == derived_event_id(cause.event_id, "CorrelationRefused")


def test_an_alert_firing_after_a_person_resolved_reopens_within_the_window() -> None:
    """Intake attaches a trigger to an incident resolved downstream only while it may be reopened:
    the alert firing after a person's resolution means the fix did not hold."""
    resolved = resolved_state()  # by a person, while db-disk still fires at its source
    assert resolved.alerts == {"db-disk": True}
    decision = decide(resolved, correlated("db-disk", 35))
    assert types(decision.events) == ["IncidentReopened"]
    assert decision.events[0].model_dump(mode="json")["by"]["kind"] == "alert_refired"
    assert decision.state is not None and decision.state.status is Status.IN_PROGRESS
    # Past the window: recorded, not reopened, and refused (a new incident's).
    late = decide(resolved, correlated("db-disk", 40 + 60 * 24 * 7))
    assert types(late.events) == ["CorrelationRefused"]
    assert late.state is not None and late.state.status is Status.RESOLVED


def test_a_new_alert_on_an_auto_resolved_incident_does_not_reopen() -> None:
    """After an automatic resolution only a key that had resolved at its source reopens by firing."""
    state = decide(apply(logged()), alert_resolved()).state
    assert state is not None and state.status is Status.RESOLVED
    other = decide(state, correlated("db-inodes", 40))
    assert not other.events and other.state is not None and other.state.status is Status.RESOLVED


# --------------------------------------------------------------------------- auto-close


def fired(state: Incident, minutes: float) -> FiredTimer:
    due = domain.auto_close_at(state, POLICY)
    assert due is not None
    return FiredTimer(f"autoclose:{ID}", due, {"incident_id": str(ID)}, at(minutes))


def test_the_auto_close_timer_closes_a_resolution_that_held() -> None:
    state = resolved_state("P3")
    when = 30 + 60 * 24 * 7
    timer = fired(state, when + 1)
    decision = decider.decider.decide_timer(state, timer, ctx(when + 1))
    assert types(decision.events) == ["IncidentClosed"]
    body = decision.events[0].model_dump(mode="json")
    assert body["auto"] is True and body["code"] == "resolved" and body["closed_by"] is None
    assert (body["due_at"], body["fired_at"]) == (
        at(when).isoformat().replace("+00:00", "Z"),
        at(when + 1).isoformat().replace("+00:00", "Z"),
    )
    assert decision.state is not None and decision.state.status is Status.CLOSED
    assert decision.state.timeline[-1].event_id == timer.event_id("IncidentClosed")


def test_auto_close_waits_for_a_required_review_and_ignores_a_reopened_incident() -> None:
    state = resolved_state("P1")
    late = 30 + 60 * 24 * 7 + 1
    assert not decider.decider.decide_timer(state, fired(state, late), ctx(late)).events
    # Approving the review schedules the close again (already due: it fires at once).
    review = run(review_cmd(), state, ctx(late + 1))
    assert [(t.key, t.due_at) for t in review.schedule] == [(f"autoclose:{ID}", at(30 + 60 * 24 * 7))]
    assert review.state is not None
    assert types(decider.decider.decide_timer(review.state, fired(state, late + 2), ctx(late + 2)).events) == [
        "IncidentClosed"
    ]
    reopened = run(decider.reopen(ID, BOB, "again", as_responder=True), resolved_state("P3"), ctx(40)).state
    assert reopened is not None
    assert not decider.decider.decide_timer(reopened, fired(state, late), ctx(late)).events
    assert not decider.decider.decide_timer(None, fired(state, late), ctx(late)).events


def test_auto_close_waits_longer_when_the_configured_time_grew() -> None:
    state = resolved_state("P3")
    when = 30 + 60 * 24 * 7 + 1
    longer = Policy(auto_close_after=timedelta(days=14))
    decision = decider.decider.decide_timer(state, fired(state, when), ctx(when, longer))
    assert not decision.events and [t.due_at for t in decision.schedule] == [at(30) + timedelta(days=14)]


# --------------------------------------------------------------------------- review


def test_a_review_follows_resolution_once() -> None:
    with pytest.raises(domain.Refused) as refused:
        run(review_cmd(), apply(logged(), assigned()), ctx(10))
    assert refused.value.refusal.missing == ("a resolution (POST .../resolve)",)
    reviewed = run(review_cmd(), resolved_state("P3"), ctx(60)).state
    with pytest.raises(domain.Refused, match="approved already"):
        run(review_cmd(), reviewed, ctx(61))
    with pytest.raises(domain.NotFound):
        run(review_cmd(), None, ctx(61))


def known_history() -> tuple[Incident, list[Envelope]]:
    events = [
        logged(),
        prioritized("P1"),
        assigned(1),
        acknowledged(5),
        ev(IncidentEscalated(from_tier=0, to_tier=1, cause="manual", reason="need DBA lead"), 7),  # type: ignore[arg-type]
    ]
    state = apply(*events)
    update = run(decider.status_update(BOB, Audience.STAKEHOLDERS, "payments degraded"), state, ctx(8))
    assert update.state is not None
    envelope = ev(update.events[0], 8, actor="user:bob")
    state = decider.recorded(update.state, [envelope])
    resolution = run(resolve_cmd(), state, ctx(45))
    assert resolution.state is not None
    resolved = ev(resolution.events[0], 45, actor="user:alice")
    return decider.recorded(resolution.state, [resolved]), [*events, envelope, resolved]


def test_the_draft_review_is_assembled_from_the_recorded_events() -> None:
    state, events = known_history()
    d = domain.draft(state, POLICY)
    assert [e.event_id for e in d.timeline] == [e.event_id for e in events]
    assert [e.text for e in d.timeline] == [
        "Logged from alertmanager: db-1 disk 95% full (severity critical)",
        "Prioritized P1 (major incident)",
        "Assigned to Bob Builder of team DBA: on call",
        "Acknowledged by Bob Builder",
        "Escalated from tier 0 to tier 1 (manual): need DBA lead",
        "Status update to stakeholders by user:bob: payments degraded",
        "Resolved (fixed) by Alice Ops; root cause: full disk: log rotation off",
    ]
    assert (d.time_to_acknowledge_seconds, d.time_to_resolve_seconds) == (300.0, 2700.0)
    assert [(i.person.sub, i.parts) for i in d.people] == [
        ("bob", ("assigned", "acknowledged", "status updates")),
        ("alice", ("resolved",)),
    ]
    assert d.required and d.root_cause == "full disk: log rotation off" and d.priority == "P1"
    assert d.summary == "P1 incident 'db-1 disk 95% full' on payments-db, resolved (fixed) 45 min after it was logged."

    item = ActionItem(item_id="A1", title="Alert on disk at 80%", owner=BOB, due=date(2026, 12, 15))
    completed = run(review_cmd([item]), state, ctx(60))
    (review,) = completed.events
    body = review.model_dump(mode="json")
    assert [t["event_id"] for t in body["timeline"]] == [str(e.event_id) for e in events]
    assert body["time_to_acknowledge_seconds"] == 300.0 and body["approved_by"] == MANAGER.model_dump()
    assert body["action_items"] == [
        {"item_id": "A1", "title": "Alert on disk at 80%", "owner": BOB.model_dump(), "due": "2026-12-15"}
    ]


def test_the_review_renders_as_markdown() -> None:
    state, events = known_history()
    draft_md = domain.render_markdown(ID, state, POLICY)
    assert "**DRAFT**" in draft_md and "| id | action |" not in draft_md
    item = ActionItem(item_id="A1", title="Alert on disk | at 80%", owner=BOB, due=date(2026, 12, 15))
    reviewed = run(review_cmd([item]), state, ctx(60)).state
    assert reviewed is not None
    text = domain.render_markdown(ID, reviewed, POLICY)
    assert text.startswith("# Post-incident review: db-1 disk 95% full\n")
    for expected in [
        f"- Incident: `{ID}`",
        "- Review: `PIR-1`, approved by Mia Manager",
        "- Time to acknowledge: 5 min",
        "- Time to resolve: 45 min",
        "## Customer and business impact\n\npayments slow for 30 min",
        "## Root cause\n\nlog rotation disabled",
        "- no disk alert below 95%",
        "| A1 | Alert on disk \\| at 80% | Bob Builder | 2026-12-15 |",
        "- Bob Builder (assigned, acknowledged, status updates)",
        f"| 2026-11-30 09:05:00 | `{events[3].event_id}` | Acknowledged by Bob Builder |",
    ]:
        assert expected in text, expected


# --------------------------------------------------------------------------- state as stored, /state


def test_the_state_survives_its_json_form() -> None:
    state, _ = known_history()
    reviewed = run(review_cmd(), state, ctx(60)).state
    assert reviewed is not None
    assert domain.from_json(domain.to_json(reviewed)) == reviewed


def test_what_the_state_allows_and_why_not() -> None:
    def allowed(state: Incident, minutes: float = 60) -> dict[str, str | None]:
        return {a.value: (r.reason if (r := domain.refusal(a, state, ctx(minutes))) else None) for a in Action}

    open_ = allowed(apply(logged(), prioritized("P1"), assigned()))
    assert open_["resolve"] is None and open_["update"] is None
    assert open_["close"] == "the incident is assigned, not resolved"
    assert open_["reopen"] == "the incident is assigned, not resolved: it is open already"
    resolved = allowed(resolved_state("P1"))
    assert resolved["close"] == "a P1 incident needs its post-incident review approved before closure"
    assert resolved["reopen"] is None and resolved["review"] is None
    assert resolved["resolve"] == "the incident is resolved already"
