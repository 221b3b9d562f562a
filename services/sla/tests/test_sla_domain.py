"""The SLA stage's pure reactions, no infrastructure: clocks started from the logging, pauses that
move due times and timers, met and breached targets, warnings once per threshold, re-targeting that
keeps a breach in the record, reopening, and replays (the what-if engine)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from opsledger.events import Envelope, registry
from opsledger.stage import Decision
from opsledger.timers import FiredTimer, Timer
from sla import domain, policy
from sla.domain import Incident

from .sla_events import acknowledged, logged, on_hold, prioritized, reopened, reprioritized, resolved, resumed

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # a Monday
POLICY = policy.DEFAULT_POLICY
ID = uuid.UUID("00000000-0000-4000-8000-000000000011")
MIN = timedelta(minutes=1)


def decide(state: Incident | None, event: Envelope) -> Decision[Incident]:
    return domain.decider.decide(state, event, registry.decode(event), POLICY)


def run(*events: Envelope) -> tuple[Incident, list[Decision[Incident]]]:
    state: Incident | None = None
    decisions = []
    for e in events:
        d = decide(state, e)
        decisions.append(d)
        state = d.state if d.state is not None else state
    assert state is not None
    return state, decisions


def types(d: Decision[Incident]) -> list[str]:
    return [e.event_type for e in d.events]


def scheduled(d: Decision[Incident]) -> dict[str, datetime]:
    return {t.key: t.due_at for t in d.schedule}


def fire(state: Incident, timer: Timer, at: datetime) -> Decision[Incident]:
    return domain.decider.decide_timer(state, FiredTimer(timer.key, timer.due_at, timer.data, at), POLICY)


def key(target: str, threshold: int | None) -> str:
    return domain.timer_key(ID, domain.SlaTargetKind(target), threshold)


def test_prioritizing_starts_both_clocks_counted_from_the_logging() -> None:
    _, (_, d) = run(logged(ID, T0), prioritized(ID, T0 + 5 * MIN, "P1"))
    assert types(d) == ["SlaClockStarted", "SlaClockStarted"]
    response, resolution = (e.model_dump() for e in d.events)
    assert response["target"] == "response" and response["due_at"] == T0 + 15 * MIN
    assert response["counted_from"] == T0 and response["policy_version"] == 1 and response["priority"] == "P1"
    assert resolution["due_at"] == T0 + 4 * 60 * MIN and resolution["business_hours"] is False
    assert scheduled(d) == {
        key("response", 50): T0 + timedelta(minutes=7, seconds=30),
        key("response", 75): T0 + timedelta(minutes=11, seconds=15),
        key("response", None): T0 + 15 * MIN,
        key("resolution", 50): T0 + 120 * MIN,
        key("resolution", 75): T0 + 180 * MIN,
        key("resolution", None): T0 + 240 * MIN,
    }
    assert all(t.data["incident_id"] == str(ID) for t in d.schedule)


def test_a_hold_pauses_and_moves_the_due_times() -> None:
    state, (*_, paused, back) = run(
        logged(ID, T0), prioritized(ID, T0, "P1"), on_hold(ID, T0 + 5 * MIN), resumed(ID, T0 + 25 * MIN)
    )
    assert types(paused) == ["SlaClockPaused", "SlaClockPaused"]
    assert paused.events[0].model_dump()["elapsed_seconds"] == 300 and paused.schedule == []
    assert key("response", None) in paused.cancel
    assert types(back) == ["SlaClockResumed", "SlaClockResumed"]
    assert back.events[0].model_dump()["paused_seconds"] == 1200
    assert back.events[0].model_dump()["due_at"] == T0 + 35 * MIN
    assert scheduled(back)[key("response", None)] == T0 + 35 * MIN
    assert state.clock(domain.SlaTargetKind.RESPONSE).paused_time(T0 + 60 * MIN) == 20 * MIN  # type: ignore[union-attr]


def test_warnings_fire_once_then_acknowledgement_meets_the_target() -> None:
    state, (_, started) = run(logged(ID, T0), prioritized(ID, T0, "P1"))
    timer = next(t for t in started.schedule if t.key == key("response", 50))
    warned = fire(state, timer, T0 + timedelta(minutes=7, seconds=31))
    assert types(warned) == ["SlaWarning"]
    w = warned.events[0].model_dump()
    assert (w["threshold_percent"], w["threshold_at"], w["due_at"]) == (50, timer.due_at, T0 + 15 * MIN)
    assert w["fired_at"] == T0 + timedelta(minutes=7, seconds=31)
    assert warned.state is not None
    assert list(fire(warned.state, timer, T0 + 8 * MIN).events) == []  # exactly once
    met = decide(warned.state, acknowledged(ID, T0 + 10 * MIN))
    assert types(met) == ["SlaMet"]
    assert met.events[0].model_dump()["elapsed_seconds"] == 600
    assert {key("response", 50), key("response", 75), key("response", None)} <= set(met.cancel)


def test_a_breach_is_announced_once_and_a_late_acknowledgement_is_not_met() -> None:
    state, (_, started) = run(logged(ID, T0), prioritized(ID, T0, "P1"))
    timer = next(t for t in started.schedule if t.key == key("response", None))
    breached = fire(state, timer, T0 + 15 * MIN)
    assert types(breached) == ["SlaBreached"]
    assert breached.state is not None
    assert list(decide(breached.state, acknowledged(ID, T0 + 20 * MIN)).events) == []
    # An acknowledgement after the due time whose breach timer had not fired yet announces it.
    late = decide(state, acknowledged(ID, T0 + 16 * MIN))
    assert types(late) == ["SlaBreached"]


def test_a_warning_claimed_after_the_breach_by_another_replica_is_still_announced_once() -> None:
    state, (_, started) = run(logged(ID, T0), prioritized(ID, T0, "P1"))
    by_key = {t.key: t for t in started.schedule}
    breached = fire(state, by_key[key("response", None)], T0 + 20 * MIN).state
    assert breached is not None
    late = fire(breached, by_key[key("response", 50)], T0 + 20 * MIN)
    assert types(late) == ["SlaWarning"] and late.state is not None
    assert late.events[0].model_dump()["threshold_at"] == T0 + timedelta(minutes=7, seconds=30)
    assert list(fire(late.state, by_key[key("response", 50)], T0 + 21 * MIN).events) == []
    assert list(fire(late.state, by_key[key("response", None)], T0 + 21 * MIN).events) == []


def test_a_timer_the_clock_no_longer_agrees_with_is_moved_not_fired() -> None:
    state, (_, started, _, _) = run(
        logged(ID, T0), prioritized(ID, T0, "P1"), on_hold(ID, T0 + MIN), resumed(ID, T0 + 11 * MIN)
    )
    stale = next(t for t in started.schedule if t.key == key("response", None))
    d = fire(state, stale, T0 + 15 * MIN)
    assert list(d.events) == [] and scheduled(d) == {key("response", None): T0 + 25 * MIN}


def test_reprioritizing_retargets_running_clocks_and_keeps_a_breach() -> None:
    state, (_, started) = run(logged(ID, T0), prioritized(ID, T0, "P1"))
    breach = next(t for t in started.schedule if t.key == key("response", None))
    after_breach = fire(state, breach, T0 + 15 * MIN).state
    assert after_breach is not None
    d = decide(after_breach, reprioritized(ID, T0 + 20 * MIN, "P3", "P1"))
    assert types(d) == ["SlaCancelled", "SlaClockStarted", "SlaCancelled", "SlaClockStarted"]
    cancelled, started_again = d.events[0].model_dump(), d.events[1].model_dump()
    assert cancelled["was_breached"] is True and cancelled["reason"] == "retargeted"
    assert started_again["retargeted"] is True and started_again["priority"] == "P3"
    assert started_again["business_hours"] is True and started_again["counted_from"] == T0
    assert d.state is not None
    response = d.state.clock(domain.SlaTargetKind.RESPONSE)
    assert response is not None and response.breached and response.priority == "P3"
    # The breached response clock has no timers any more; the resolution clock runs under P3.
    assert not any(k.startswith(key("response", None)[:-6]) for k in scheduled(d))
    assert scheduled(d)[key("resolution", None)] == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)  # 3 x 8 business h
    assert len(d.state.previous) == 2


def test_resolution_stops_the_clock_and_a_reopen_resumes_it_where_it_stopped() -> None:
    state, (*_, met, back) = run(
        logged(ID, T0),
        prioritized(ID, T0, "P2"),
        acknowledged(ID, T0 + 10 * MIN),
        resolved(ID, T0 + 60 * MIN),
        reopened(ID, T0 + 180 * MIN),
    )
    assert types(met) == ["SlaMet"] and met.events[0].model_dump()["target"] == "resolution"
    assert types(back) == ["SlaClockResumed"]
    r = back.events[0].model_dump()
    assert r["reopened"] is True and r["paused_seconds"] == 2 * 3600
    assert r["due_at"] == T0 + 10 * 60 * MIN  # 8 h + the 2 h it was resolved
    clock = state.clock(domain.SlaTargetKind.RESOLUTION)
    assert clock is not None and clock.elapsed(T0 + 240 * MIN) == 120 * MIN


def test_replay_fires_timers_between_events_as_the_service_would() -> None:
    events = [logged(ID, T0), prioritized(ID, T0, "P1"), acknowledged(ID, T0 + 12 * MIN)]
    decoded: list[tuple[Envelope, Any]] = [(e, registry.decode(e)) for e in events]
    state, announced = domain.replay(decoded, POLICY, T0 + 5 * 60 * MIN)
    assert [e.event_type for e in announced] == [
        "SlaClockStarted",
        "SlaClockStarted",
        "SlaWarning",  # response 50 %
        "SlaWarning",  # response 75 %
        "SlaMet",  # acknowledged at 12 min
        "SlaWarning",  # resolution 50 %
        "SlaWarning",
        "SlaBreached",  # resolution at 4 h: never resolved
    ]
    assert state is not None and state.clock(domain.SlaTargetKind.RESOLUTION).breached  # type: ignore[union-attr]


def test_clocks_started_on_hold_start_paused_and_an_earlier_acknowledgement_meets_at_once() -> None:
    state, (*_, started, back) = run(
        logged(ID, T0),
        on_hold(ID, T0 + MIN),
        acknowledged(ID, T0 + 2 * MIN),
        prioritized(ID, T0 + 3 * MIN, "P1"),
        resumed(ID, T0 + 30 * MIN),
    )
    assert types(started) == ["SlaClockStarted", "SlaClockStarted", "SlaMet"]
    assert started.schedule == [] and started.events[2].model_dump()["elapsed_seconds"] == 60
    assert types(back) == ["SlaClockResumed"]  # the resolution clock; the response target was met
    assert back.events[0].model_dump()["due_at"] == T0 + 4 * 60 * MIN + 29 * MIN
    assert scheduled(back)[key("resolution", None)] == T0 + 4 * 60 * MIN + 29 * MIN
    response = state.clock(domain.SlaTargetKind.RESPONSE)
    assert response is not None and response.state() == "met"
