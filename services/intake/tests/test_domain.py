"""Unit tests of intake's pure decisions: dedup keys, the open/correlate/resolve lifecycle, flapping."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from intake.domain import (
    Action,
    AlertSignal,
    AlertState,
    FlapPolicy,
    SignalKind,
    Status,
    closed_downstream,
    decide,
    reopened_downstream,
    resolved_downstream,
    stable_key,
)
from opsledger.events.common import Severity
from opsledger.events.intake import (
    AlertAcknowledged,
    AlertCorrelated,
    AlertFlapping,
    AlertResolved,
    IncidentLogged,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = FlapPolicy(max_transitions=4, window=timedelta(minutes=10))


def signal(kind: SignalKind = SignalKind.TRIGGER, key: str = "k1") -> AlertSignal:
    return AlertSignal(
        kind=kind,
        source="generic",
        dedup_key=key,
        title="disk full",
        severity=Severity.HIGH,
        occurred_at=T0,
        labels={"host": "a"},
        raw={"title": "disk full"},
    )


def apply(state: AlertState, kind: SignalKind, at: datetime) -> tuple[AlertState, Action, uuid.UUID | None, list]:
    out = decide(state, signal(kind), now=at, policy=POLICY, new_incident_id=uuid.uuid4())
    return out.state, out.action, out.incident_id, list(out.events)


def test_first_trigger_opens_an_incident_with_the_signal_fields() -> None:
    new_id = uuid.uuid4()
    out = decide(AlertState(), signal(), now=T0, policy=POLICY, new_incident_id=new_id)
    assert out.action is Action.LOGGED and out.opened and out.incident_id == new_id
    [event] = out.events
    assert isinstance(event, IncidentLogged)
    assert (event.title, event.severity, event.dedup_key, event.received_at) == ("disk full", "high", "k1", T0)
    assert event.raw == {"title": "disk full"}
    assert out.state.status is Status.FIRING and out.state.occurrence_count == 1


def test_repeated_trigger_correlates_with_counts_and_times() -> None:
    state, _, first_id, _ = apply(AlertState(), SignalKind.TRIGGER, T0)
    state, action, incident, events = apply(state, SignalKind.TRIGGER, T0 + timedelta(minutes=1))
    state, action, incident, events = apply(state, SignalKind.TRIGGER, T0 + timedelta(minutes=2))
    assert action is Action.CORRELATED and incident == first_id
    [event] = events
    assert isinstance(event, AlertCorrelated)
    assert event.occurrence_count == 3
    assert (event.first_seen, event.last_seen) == (T0, T0 + timedelta(minutes=2))


def test_trigger_resolve_trigger_opens_a_second_incident() -> None:
    state, _, first_id, _ = apply(AlertState(), SignalKind.TRIGGER, T0)
    state, action, incident, events = apply(state, SignalKind.RESOLVE, T0 + timedelta(minutes=1))
    assert action is Action.RESOLVED and incident == first_id
    assert [type(e) for e in events] == [AlertResolved]
    state, action, incident, events = apply(state, SignalKind.TRIGGER, T0 + timedelta(minutes=2))
    assert action is Action.LOGGED and incident not in (None, first_id)
    assert state.occurrence_count == 1


def test_resolve_or_acknowledge_without_open_incident_is_ignored() -> None:
    for kind in (SignalKind.RESOLVE, SignalKind.ACKNOWLEDGE):
        state, action, incident, events = apply(AlertState(), kind, T0)
        assert (action, incident, events) == (Action.IGNORED, None, [])
        assert state.status is Status.INACTIVE


def test_acknowledge_of_open_incident() -> None:
    state, _, first_id, _ = apply(AlertState(), SignalKind.TRIGGER, T0)
    state, action, incident, events = apply(state, SignalKind.ACKNOWLEDGE, T0 + timedelta(seconds=5))
    assert action is Action.ACKNOWLEDGED and incident == first_id
    assert isinstance(events[0], AlertAcknowledged) and events[0].acknowledged_at == T0 + timedelta(seconds=5)
    assert state.status is Status.FIRING  # acknowledged is not resolved


def test_flapping_stops_new_incidents_and_is_announced_once() -> None:
    state, _, first_id, _ = apply(AlertState(), SignalKind.TRIGGER, T0)
    opened, flapping_events, at = {first_id}, 0, T0
    for i in range(10):
        at += timedelta(seconds=30)
        state, action, incident, events = apply(state, SignalKind.RESOLVE if i % 2 == 0 else SignalKind.TRIGGER, at)
        flapping_events += sum(isinstance(e, AlertFlapping) for e in events)
        if action is Action.LOGGED:
            opened.add(incident)
    # 4 transitions allowed: resolve, trigger(new), resolve, trigger(new), then the 5th transition flaps.
    assert len(opened) == 3
    assert flapping_events == 1
    assert state.flapping_since is not None


def test_flapping_ends_when_the_window_has_passed() -> None:
    state = AlertState()
    at = T0
    for i in range(9):
        state, *_ = apply(state, SignalKind.TRIGGER if i % 2 == 0 else SignalKind.RESOLVE, at)
        at += timedelta(seconds=10)
    assert state.flapping_since is not None and state.status is Status.FIRING
    state, *_ = apply(state, SignalKind.RESOLVE, at)
    state, action, *_ = apply(state, SignalKind.TRIGGER, at + POLICY.window + timedelta(minutes=1))
    assert action is Action.LOGGED
    assert state.flapping_since is None and len(state.transitions) == 1


def test_suppressed_trigger_attaches_to_the_last_incident() -> None:
    state = AlertState()
    at = T0
    last = None
    for i in range(12):
        state, action, incident, events = apply(state, SignalKind.TRIGGER if i % 2 == 0 else SignalKind.RESOLVE, at)
        if action is Action.LOGGED:
            last = incident
        if action is Action.SUPPRESSED:
            assert incident == last
            assert any(isinstance(e, AlertCorrelated) for e in events)
        at += timedelta(seconds=10)


labels_strategy = st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=8)


@given(labels_strategy)
def test_stable_key_ignores_label_order(labels: dict[str, str]) -> None:
    reordered = dict(reversed(list(labels.items())))
    assert stable_key("generic", labels) == stable_key("generic", reordered)


@given(labels_strategy, st.text(min_size=1, max_size=5))
def test_stable_key_changes_with_labels_and_source(labels: dict[str, str], extra: str) -> None:
    changed = {**labels, "\x00extra": extra}
    assert stable_key("generic", labels) != stable_key("generic", changed)
    assert stable_key("generic", labels) != stable_key("alertmanager", labels)


def am_signal(kind: SignalKind, started: datetime) -> AlertSignal:
    return AlertSignal(
        kind=kind,
        source="alertmanager",
        dedup_key="fp",
        title="5xx",
        severity=Severity.HIGH,
        occurred_at=started,
        episode_started_at=started,
    )


def test_a_late_firing_resend_of_an_episode_the_source_resolved_is_ignored() -> None:
    """An Alertmanager HA pair both notify: the second pair member's 'firing' for an episode can
    arrive after the first member's 'resolved'. Same startsAt: the same episode, no new incident."""
    episode, later = T0, T0 + timedelta(hours=1)
    opened = decide(
        AlertState(), am_signal(SignalKind.TRIGGER, episode), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    resolved = decide(
        opened.state, am_signal(SignalKind.RESOLVE, episode), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    late = decide(
        resolved.state, am_signal(SignalKind.TRIGGER, episode), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    assert (late.action, late.events, late.state) == (Action.IGNORED, (), resolved.state)
    # A new episode (another startsAt) is a new problem: a new incident.
    again = decide(
        resolved.state, am_signal(SignalKind.TRIGGER, later), now=later, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    assert again.action is Action.LOGGED and again.incident_id != opened.incident_id


WINDOW = timedelta(days=7)


def test_a_person_resolving_does_not_make_the_source_episode_resolved() -> None:
    """Resolved downstream (a person), still firing at the source: its re-send within the reopen
    window goes to the same incident (the resolution stage reopens it); after the window, or once
    the incident is closed, it opens a new incident."""
    opened = decide(
        AlertState(), am_signal(SignalKind.TRIGGER, T0), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    resolved_at = T0 + timedelta(minutes=30)
    by_person = resolved_downstream(opened.state, at=resolved_at, reopen_window=WINDOW)
    assert by_person.status is Status.RESOLVED and by_person.reopenable_until == resolved_at + WINDOW
    assert by_person.resolved_episode is None  # the source never said the episode resolved

    resend_at = T0 + timedelta(hours=4)
    resend = decide(
        by_person, am_signal(SignalKind.TRIGGER, T0), now=resend_at, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    assert (resend.action, resend.incident_id, resend.opened) == (Action.CORRELATED, opened.incident_id, False)
    [event] = resend.events
    assert isinstance(event, AlertCorrelated)
    assert (event.occurrence_count, event.first_seen, event.last_seen) == (2, T0, resend_at)
    assert resend.state.status is Status.FIRING and resend.state.reopenable_until is None
    # Its reopening (IncidentReopened, caused by that AlertCorrelated) changes nothing more.
    assert reopened_downstream(resend.state) == resend.state

    late_at = resolved_at + WINDOW + timedelta(seconds=1)
    late = decide(
        by_person, am_signal(SignalKind.TRIGGER, T0), now=late_at, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    assert late.action is Action.LOGGED and late.incident_id != opened.incident_id
    assert late.state.reopenable_until is None

    closed = closed_downstream(by_person)
    after_close = decide(
        closed, am_signal(SignalKind.TRIGGER, T0), now=resend_at, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    assert after_close.action is Action.LOGGED and after_close.incident_id != opened.incident_id


def test_a_new_episode_after_the_source_resolved_reopens_within_the_window() -> None:
    """Resolved at the source (and so downstream, automatically), then a new episode fires: the same
    incident within the window, the late re-send of the resolved episode still ignored."""
    episode, later = T0, T0 + timedelta(hours=2)
    opened = decide(
        AlertState(), am_signal(SignalKind.TRIGGER, episode), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    at_source = decide(
        opened.state, am_signal(SignalKind.RESOLVE, episode), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    auto = resolved_downstream(at_source.state, at=T0 + timedelta(seconds=1), reopen_window=WINDOW)
    assert auto.last_seen == at_source.state.last_seen and auto.resolved_episode == episode
    late = decide(auto, am_signal(SignalKind.TRIGGER, episode), now=later, policy=POLICY, new_incident_id=uuid.uuid4())
    assert (late.action, late.events, late.state.status) == (Action.IGNORED, (), Status.RESOLVED)
    assert late.state.reopenable_until == auto.reopenable_until
    refire = decide(auto, am_signal(SignalKind.TRIGGER, later), now=later, policy=POLICY, new_incident_id=uuid.uuid4())
    assert refire.action is Action.CORRELATED and refire.incident_id == opened.incident_id
    assert [type(e) for e in refire.events] == [AlertCorrelated]


def test_a_person_reopening_makes_the_key_fire_again_and_closing_forgets_it() -> None:
    opened = decide(AlertState(), signal(), now=T0, policy=POLICY, new_incident_id=uuid.uuid4())
    resolved = resolved_downstream(opened.state, at=T0, reopen_window=WINDOW)
    reopened = reopened_downstream(resolved)
    assert reopened.status is Status.FIRING and reopened.reopenable_until is None
    repeat = decide(reopened, signal(), now=T0 + timedelta(minutes=1), policy=POLICY, new_incident_id=uuid.uuid4())
    assert repeat.action is Action.CORRELATED and repeat.incident_id == opened.incident_id
    # Closed: the key keeps its last incident only for flapping; a trigger opens a new incident.
    closed = closed_downstream(resolved)
    assert closed.status is Status.RESOLVED and closed.reopenable_until is None
    assert closed.incident_id == opened.incident_id
    fresh = decide(closed, signal(), now=T0 + timedelta(minutes=1), policy=POLICY, new_incident_id=uuid.uuid4())
    assert fresh.action is Action.LOGGED and fresh.opened


def test_a_flapping_key_resolved_downstream_is_still_suppressed_to_its_incident() -> None:
    state, _, _, _ = apply(AlertState(), SignalKind.TRIGGER, T0)
    for n in range(1, 5):
        kind = SignalKind.RESOLVE if n % 2 else SignalKind.TRIGGER
        state, _, _, _ = apply(state, kind, T0 + timedelta(seconds=n))
    state = resolved_downstream(state, at=T0 + timedelta(seconds=5), reopen_window=WINDOW)
    first_id = state.incident_id
    out = decide(state, signal(), now=T0 + timedelta(seconds=6), policy=POLICY, new_incident_id=uuid.uuid4())
    assert out.action is Action.SUPPRESSED and out.incident_id == first_id
    assert out.state.reopenable_until is None
