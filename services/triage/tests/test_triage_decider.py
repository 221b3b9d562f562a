"""Unit tests of triage's stage shape, no infrastructure: the pure reactions to IncidentLogged,
AlertCorrelated and IncidentDetailsUpdated, the override commands, the stage running a batch with
one load and one save (ids derived from the cause, the incident's correlation id), and the policy
cache."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from opsledger.bus.consumer import Delivery
from opsledger.bus.outbox import Outbox
from opsledger.clock import ManualClock
from opsledger.events import Envelope, EventPayload, derived_event_id, new_event, registry
from opsledger.events.intake import AlertCorrelated, IncidentDetailsUpdated, IncidentLogged
from opsledger.stage import Decision, Stage
from opsledger.uow import UnitOfWork
from triage import decider, domain, store
from triage.decider import NotTriaged
from triage.domain import Policy, TriageState
from triage.handlers import Triage
from triage.policy_cache import PolicyCache
from triage.settings import Settings

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
POLICY = Policy(criticality={"payments": 1})


def logged(incident_id: uuid.UUID, **fields: Any) -> Envelope:
    body: dict[str, Any] = dict(
        source="alertmanager",
        occurred_at=T0,
        received_at=T0,
        title="Postgres replica lag above 300s",
        service="payments",
        environment="prod",
        severity="high",
        dedup_key=f"dk-{incident_id}",
        labels={"team": "dba"},
    )
    body.update(fields)
    return new_event(
        IncidentLogged.model_validate(body),
        producer="intake",
        actor="integration:am",
        incident_id=incident_id,
        correlation_id=f"alert-{incident_id}",
        occurred_at=T0,
    )


def correlated(incident_id: uuid.UUID, count: int, severity: str) -> Envelope:
    payload = AlertCorrelated(
        source="alertmanager",
        dedup_key=f"dk-{incident_id}",
        occurrence_count=count,
        first_seen=T0,
        last_seen=T0,
        severity=severity,  # type: ignore[arg-type]
    )
    # A repeat arrives under a request of its own: its correlation id is not the incident's.
    return new_event(
        payload, producer="intake", actor="integration:am", incident_id=incident_id, correlation_id="req-9"
    )


def details(incident_id: uuid.UUID, **fields: Any) -> Envelope:
    return new_event(
        IncidentDetailsUpdated.model_validate(fields), producer="intake", actor="user:alice", incident_id=incident_id
    )


def decide(state: TriageState | None, event: Envelope, policy: Policy = POLICY) -> Decision[TriageState]:
    return decider.decider.decide(state, event, registry.decode(event), policy)


def types(events: Any) -> list[str]:
    return [e.event_type for e in events]


def triaged(**fields: Any) -> TriageState:
    """An incident as IncidentLogged left it (shop, medium: P3)."""
    incident_id = uuid.uuid4()
    defaults: dict[str, Any] = {"title": "Checkout error rate above 5%", "service": "shop", "severity": "medium"}
    state = decide(None, logged(incident_id, **{**defaults, **fields})).state
    assert state is not None
    return state


# --------------------------------------------------------------------------- reactions


def test_the_consumer_subscribes_to_exactly_what_the_decider_reacts_to() -> None:
    expected = {"IncidentLogged", "AlertCorrelated", "IncidentDetailsUpdated"}
    assert decider.decider.event_types == expected
    settings = Settings()
    triage = Triage(settings, Outbox(settings), ManualClock(T0))
    spec = triage.consumer()
    assert spec.event_types == expected and spec.batch_handler is not None and spec.handler is None


def test_a_logged_incident_is_categorized_and_prioritized() -> None:
    incident_id = uuid.uuid4()
    cause = logged(incident_id)
    decision = decide(None, cause)
    assert types(decision.events) == ["IncidentCategorized", "IncidentPrioritized"]
    categorized, prioritized = (e.model_dump() for e in decision.events)
    assert (categorized["category"], categorized["subcategory"]) == ("Database", "Replication")
    assert categorized["rule_id"] == "database-replication" and categorized["overridden"] is False
    assert (prioritized["priority"], prioritized["inputs"]["impact"], prioritized["inputs"]["urgency"]) == ("P2", 1, 2)
    state = decision.state
    assert state is not None
    assert (state.category, state.subcategory, state.priority) == ("Database", "Replication", "P2")
    assert (state.title, state.logged_at, state.correlation_id) == (cause.payload["title"], T0, f"alert-{incident_id}")
    assert state.overrides == domain.Overrides() and state.decision.prioritization.priority == "P2"
    assert not decision.schedule and not decision.cancel


def test_a_logged_incident_already_triaged_changes_nothing() -> None:
    state = triaged()
    again = decide(state, logged(uuid.uuid4()))
    assert again.state is state and not again.events


def test_correlation_of_an_incident_triage_never_saw_changes_nothing() -> None:
    decision = decide(None, correlated(uuid.uuid4(), 2, "critical"))
    assert decision.state is None and not decision.events


def test_a_lower_severity_repeat_only_counts() -> None:
    state = triaged()
    decision = decide(state, correlated(uuid.uuid4(), 2, "low"))
    assert not decision.events
    assert decision.state is not None and decision.state is not state
    assert decision.state.facts.occurrence_count == 2 and decision.state.facts.severity == "medium"
    assert decision.state.priority == "P3"
    # Nothing new at all: the state is the same object, so nothing is written.
    again = decide(decision.state, correlated(uuid.uuid4(), 2, "low"))
    assert again.state is decision.state and not again.events


def test_a_higher_severity_repeat_reprioritizes_with_its_reason() -> None:
    state = triaged()
    decision = decide(state, correlated(uuid.uuid4(), 3, "critical"))
    assert types(decision.events) == ["IncidentReprioritized"]
    re = decision.events[0].model_dump()
    assert (re["priority"], re["previous_priority"], re["overridden"]) == ("P2", "P3", False)
    assert "raised severity from medium to critical" in re["reason"]
    assert decision.state is not None and decision.state.priority == "P2"
    assert decision.state.decision.prioritization.urgency == 1


def test_reaching_an_occurrence_threshold_raises_impact() -> None:
    state = triaged()
    decision = decide(state, correlated(uuid.uuid4(), 10, "medium"))
    assert types(decision.events) == ["IncidentReprioritized"]
    assert "reached 10 occurrences (threshold 10)" in decision.events[0].model_dump()["reason"]
    assert decision.state is not None and decision.state.priority == "P2"


def test_a_reporter_update_reprioritizes_and_a_repeat_of_it_does_not() -> None:
    state = triaged()
    update = details(uuid.uuid4(), business_impact={"level": "high"}, urgency_hint=1, reason="checkout down")
    decision = decide(state, update)
    assert types(decision.events) == ["IncidentReprioritized"]
    re = decision.events[0].model_dump()
    assert (re["priority"], re["previous_priority"], re["major"]) == ("P1", "P3", True)
    assert re["reason"] == (
        "reporter changed business impact from unstated to high urgency hint changed to 1 (checkout down)"
    )
    assert decision.state is not None
    again = decide(decision.state, update)
    assert again.state is decision.state and not again.events
    assert decide(None, update).state is None


def test_a_category_change_is_announced_with_the_priority_change() -> None:
    hardware = [{"id": "crit-hw", "when": {"severity": ["critical"]}, "set": {"category": "Hardware"}}]
    policy = Policy(rules=domain.build_rules(2, domain.parse_rules(hardware), domain.DEFAULT_TREE))
    state = decide(None, logged(uuid.uuid4(), title="odd", service="shop", severity="medium"), policy).state
    assert state is not None and (state.category, state.priority) == ("Other", "P3")
    decision = decide(state, correlated(uuid.uuid4(), 3, "critical"), policy)
    assert types(decision.events) == ["IncidentCategorized", "IncidentReprioritized"]
    cat = decision.events[0].model_dump()
    assert (cat["category"], cat["rule_id"], cat["rule_set_version"]) == ("Hardware", "crit-hw", 2)
    assert "raised severity from medium to critical" in cat["reason"]
    assert decision.state is not None and (decision.state.category, decision.state.priority) == ("Hardware", "P2")


# --------------------------------------------------------------------------- commands


def override(state: TriageState | None, **fields: Any) -> Decision[TriageState]:
    args: dict[str, Any] = {"category": None, "subcategory": None, "priority": None, "reason": "known flaky probe"}
    args.update(fields)
    return decider.override(**args, actor="user:manager")(state, POLICY)


def test_an_override_wins_over_automation_until_cleared() -> None:
    state = triaged()
    decision = override(state, priority="p4", category="Network")
    assert types(decision.events) == ["IncidentCategorized", "IncidentReprioritized"]
    cat, re = (e.model_dump() for e in decision.events)
    assert (cat["category"], cat["overridden"], cat["reason"]) == (
        "Network",
        True,
        "override by user:manager: known flaky probe",
    )
    assert (re["priority"], re["previous_priority"], re["overridden"]) == ("P4", "P3", True)
    overridden = decision.state
    assert overridden is not None and (overridden.priority, overridden.category) == ("P4", "Network")
    assert overridden.overrides.priority == domain.PriorityOverride("P4", "known flaky probe", "user:manager")

    # Automation now says P2, but the override stands and nothing is announced.
    later = decide(overridden, correlated(uuid.uuid4(), 2, "critical"))
    assert not later.events and later.state is not None
    assert later.state.priority == "P4" and later.state.decision.prioritization.priority == "P2"

    cleared = decider.clear_override({"priority"}, "probe fixed", "user:manager")(later.state, POLICY)
    assert types(cleared.events) == ["TriageOverrideCleared", "IncidentReprioritized"]
    assert cleared.events[0].model_dump() == {"field": "priority", "reason": "probe fixed"}
    back = cleared.events[1].model_dump()
    assert (back["priority"], back["previous_priority"], back["overridden"]) == ("P2", "P4", False)
    assert back["reason"] == "override of priority cleared by user:manager: probe fixed"
    assert cleared.state is not None and cleared.state.overrides.category is not None
    with pytest.raises(LookupError, match="no override of priority is in force"):
        decider.clear_override({"priority"}, None, "user:manager")(cleared.state, POLICY)


def test_an_override_confirming_the_value_is_still_announced() -> None:
    state = triaged()
    decision = override(state, priority="P3")
    assert types(decision.events) == ["IncidentReprioritized"]
    assert decision.events[0].model_dump()["overridden"] is True


def test_bad_overrides_are_refused_naming_the_fault() -> None:
    state = triaged()
    with pytest.raises(domain.ConfigError) as bad:
        override(state, priority="P9")
    assert bad.value.where == "priority"
    with pytest.raises(domain.ConfigError, match="unknown category 'Nope'"):
        override(state, category="Nope")
    with pytest.raises(NotTriaged):
        override(None, priority="P1")
    with pytest.raises(NotTriaged):
        decider.clear_override({"priority"}, None, "user:manager")(None, POLICY)


# --------------------------------------------------------------------------- the stage


class FakeStore:
    """The stage's load, save and context, counting calls (no database)."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, TriageState] = {}
        self.loads: list[set[uuid.UUID]] = []
        self.saves: list[dict[uuid.UUID, TriageState]] = []
        self.contexts = 0

    async def load(self, session: Any, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, TriageState]:
        self.loads.append(set(ids))
        return {i: self.rows[i] for i in ids if i in self.rows}

    async def save(self, session: Any, changed: dict[uuid.UUID, TriageState], loaded: Any) -> None:
        self.saves.append(dict(changed))
        self.rows.update(changed)

    async def context(self, session: Any) -> Policy:
        self.contexts += 1
        return POLICY


def stage_with(fake: FakeStore) -> Stage[TriageState, Policy]:
    return Stage(
        "triage",
        decider.decider,
        load=fake.load,
        save=fake.save,
        context=fake.context,
        system_actor="system:triage",
        correlation=lambda state: state.correlation_id,
    )


def unit() -> UnitOfWork:
    return UnitOfWork(session=None, outbox=None, now=T0)  # type: ignore[arg-type]


def delivery(envelope: Envelope) -> Delivery:
    return Delivery(record=None, envelope=envelope, payload=registry.decode(envelope))  # type: ignore[arg-type]


async def test_a_batch_is_decided_in_memory_with_one_load_and_one_save() -> None:
    fake = FakeStore()
    stage = stage_with(fake)
    a, b = uuid.uuid4(), uuid.uuid4()
    la = logged(a, title="Checkout error rate above 5%", service="shop", severity="medium")
    ca = correlated(a, 3, "critical")
    lb = logged(b)
    uow = unit()
    await stage.handle(uow, [delivery(e) for e in (la, ca, lb)])
    assert fake.loads == [{a, b}] and fake.contexts == 1
    assert len(fake.saves) == 1 and set(fake.saves[0]) == {a, b}
    assert fake.saves[0][a].priority == "P2"  # the correlation saw the state the logging left

    staged = uow.staged
    assert [(e.incident_id, e.event_type) for e in staged] == [
        (a, "IncidentCategorized"),
        (a, "IncidentPrioritized"),
        (a, "IncidentReprioritized"),
        (b, "IncidentCategorized"),
        (b, "IncidentPrioritized"),
    ]
    causes = [la, la, ca, lb, lb]
    # Ids derive from the cause, its type and an ordinal per type: a replay re-derives them.
    derived = [derived_event_id(c.event_id, e.event_type) for c, e in zip(causes, staged, strict=True)]
    assert [e.event_id for e in staged] == derived
    assert [e.causation_id for e in staged] == [c.event_id for c in causes]
    assert all(e.actor == "system:triage" and e.producer == "triage" and e.occurred_at == T0 for e in staged)
    # Every reaction carries the incident's correlation id, even the one to a repeat's request.
    assert [e.correlation_id for e in staged] == [f"alert-{a}"] * 3 + [f"alert-{b}"] * 2

    # Redelivered: the same ids again, and an incident already triaged announces nothing.
    again = unit()
    await stage.handle(again, [delivery(la), delivery(ca)])
    assert again.staged == [] and fake.saves[-1] == {}


async def test_a_reaction_keeps_its_cause_correlation_when_the_incident_has_none() -> None:
    fake = FakeStore()
    stage = stage_with(fake)
    a = uuid.uuid4()
    cause = logged(a).model_copy(update={"correlation_id": None})
    await stage.handle(unit(), [delivery(cause)])
    uow = unit()
    repeat = correlated(a, 3, "critical")
    await stage.handle(uow, [delivery(repeat)])
    assert [(e.event_type, e.correlation_id) for e in uow.staged] == [("IncidentReprioritized", "req-9")]


async def test_a_command_is_a_new_fact_of_the_person_under_the_incident_correlation() -> None:
    fake = FakeStore()
    stage = stage_with(fake)
    a = uuid.uuid4()
    await stage.handle(unit(), [delivery(logged(a))])
    uow = unit()
    command = decider.override(category=None, subcategory=None, priority="P1", reason="ceo", actor="user:boss")
    state, events = await stage.execute(uow, a, command, actor="user:boss", correlation_id=f"alert-{a}")
    assert state is not None and state.priority == "P1" and fake.rows[a] is state
    assert [(e.event_type, e.actor, e.correlation_id, e.causation_id) for e in events] == [
        ("IncidentReprioritized", "user:boss", f"alert-{a}", None)
    ]
    assert uow.staged == events


# --------------------------------------------------------------------------- policy cache and storage


def row(version: int, body: dict[str, Any]) -> Any:
    return SimpleNamespace(version=version, body=body)


def test_the_policy_is_compiled_once_per_version_in_force() -> None:
    cache = PolicyCache({"payments": 1}, (10, 50))
    bodies = domain.default_bodies()
    rows = {kind: row(1, body) for kind, body in bodies.items()}
    first = cache.of(rows)
    assert cache.of(dict(rows)) is first and cache.builds == 1
    assert first.criticality == {"payments": 1} and first.count_thresholds == (10, 50)
    matrix = {k: "P1" for k in bodies["matrix"]["matrix"]}
    changed = cache.of({**rows, "matrix": row(2, {"matrix": matrix})})
    assert changed is not first and cache.builds == 2 and changed.matrix.version == 2
    assert cache.of({**rows, "matrix": row(2, {"matrix": matrix})}) is changed and cache.builds == 2


def test_a_stored_decision_reads_back_as_it_was() -> None:
    state = decide(None, logged(uuid.uuid4())).state
    assert state is not None
    assert store.decision_from(store.decision_json(state.decision)) == state.decision
    raw = store.decision_json(state.decision)
    raw["categorization"]["dropped_by_a_newer_release"] = 1
    assert store.decision_from(raw) == state.decision


def test_payloads_are_event_payloads() -> None:
    # The decisions hold payloads, not envelopes: the stage wraps them (ids, actor, time).
    decision = decide(None, logged(uuid.uuid4()))
    assert all(isinstance(e, EventPayload) for e in decision.events)
