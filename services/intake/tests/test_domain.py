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
    decide,
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


def test_a_person_resolving_does_not_make_the_source_episode_resolved() -> None:
    """Resolved downstream (a person), still firing at the source: its re-send opens a new incident."""
    opened = decide(
        AlertState(), am_signal(SignalKind.TRIGGER, T0), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    closed_by_person = AlertState(**{**opened.state.__dict__, "status": Status.RESOLVED})
    resend = decide(
        closed_by_person, am_signal(SignalKind.TRIGGER, T0), now=T0, policy=POLICY, new_incident_id=uuid.uuid4()
    )
    assert resend.action is Action.LOGGED
