"""Clock arithmetic on the platform calendars, no infrastructure: due times on 24x7 and business
hours, pauses excluded exactly (hypothesis), thresholds, and the policies a clock is started under."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsledger.calendar import ALWAYS, business_hours
from opsledger.events.common import SlaTargetKind
from sla import policy
from sla.clocks import Clock, ClockState, read

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # a Monday
OFFICE = business_hours("Europe/Berlin")  # Mon-Fri 09:00-17:00 Berlin


def clock(seconds: int, calendar: str = ALWAYS.spec.as_json(), **kw: object) -> Clock:
    return Clock(
        target=SlaTargetKind.RESOLUTION,
        priority="P1",
        policy_version=1,
        rule=0,
        target_seconds=seconds,
        calendar=calendar,
        warning_percents=(50, 75),
        counted_from=T0,
        **kw,  # type: ignore[arg-type]
    )


@given(st.integers(min_value=1, max_value=10 * 365 * 86400))
@settings(deadline=None)  # robust on loaded machines: no timing assertions
def test_a_24x7_due_time_is_the_logged_time_plus_the_target(seconds: int) -> None:
    c = clock(seconds)
    assert c.due_at() == T0 + timedelta(seconds=seconds)
    assert c.threshold_at(50) == T0 + timedelta(microseconds=seconds * 500_000)


pause_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=40 * 3600), st.integers(min_value=0, max_value=10 * 3600)),
    max_size=6,
)


def pauses_from(gaps: list[tuple[int, int]]) -> tuple[tuple[datetime, datetime | None], ...]:
    """Closed pauses after T0: (gap before, length) in seconds, one after the other."""
    pauses, at = [], T0
    for gap, length in gaps:
        start = at + timedelta(seconds=gap)
        at = start + timedelta(seconds=length)
        pauses.append((start, at))
    return tuple(pauses)


@given(st.integers(min_value=1, max_value=20 * 3600), pause_lists)
@settings(max_examples=200, deadline=None)
def test_paused_time_is_subtracted_exactly_on_24x7(seconds: int, gaps: list[tuple[int, int]]) -> None:
    c = clock(seconds, pauses=pauses_from(gaps))
    due = c.due_at()
    assert due is not None
    # The due time is the target plus every pause that began before it.
    paused_before = sum(((e - s) for s, e in c.pauses if e is not None and s < due), timedelta(0))
    assert due == T0 + timedelta(seconds=seconds) + paused_before
    assert c.elapsed(due) == timedelta(seconds=seconds)
    assert c.paused_time(due) == paused_before


@given(st.integers(min_value=1, max_value=40 * 3600), pause_lists)
@settings(max_examples=100, deadline=None)
def test_paused_time_is_subtracted_exactly_in_business_hours(seconds: int, gaps: list[tuple[int, int]]) -> None:
    c = clock(seconds, calendar=OFFICE.spec.as_json(), pauses=pauses_from(gaps))
    due = c.due_at()
    assert due is not None
    # Elapsed business time at the due time is exactly the target, and adding the business time
    # of every pause back gives the business time since the logging.
    assert c.elapsed(due) == timedelta(seconds=seconds)
    assert c.elapsed(due) + c.paused_time(due) == OFFICE.business_time_between(T0, due)
    assert OFFICE.is_working(due - timedelta(microseconds=1))


def test_business_hours_due_time_skips_nights_and_weekends() -> None:
    # Logged Friday 16:00 Berlin (15:00 UTC) with 4 business hours: 1 h Friday, 3 h Monday -> 12:00 Berlin.
    friday = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
    c = Clock(SlaTargetKind.RESPONSE, "P3", 1, 2, 4 * 3600, OFFICE.spec.as_json(), (50,), counted_from=friday)
    assert c.due_at() == datetime(2026, 12, 7, 11, 0, tzinfo=UTC)
    assert c.threshold_at(50) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)  # 2 h: 1 Friday + 1 Monday


def test_an_open_pause_has_no_due_time_until_it_ends_and_reading_it_now_moves_it() -> None:
    c = clock(3600).pause(T0 + timedelta(minutes=10))
    assert c.paused and c.due_at() is None and c.state() is ClockState.PAUSED
    now = T0 + timedelta(minutes=40)
    r = read(c, now)
    assert r.due_at == T0 + timedelta(minutes=90)  # as if it resumed now
    assert r.elapsed == timedelta(minutes=10) and r.paused == timedelta(minutes=30)
    resumed = c.resume(now)
    assert resumed.due_at() == T0 + timedelta(minutes=90) and resumed.last_pause_time() == timedelta(minutes=30)


def test_a_stopped_clock_keeps_its_due_time_and_stops_counting() -> None:
    c = clock(3600, stopped_at=T0 + timedelta(minutes=20))
    r = read(c, T0 + timedelta(hours=5))
    assert r.state is ClockState.MET and r.due_at == T0 + timedelta(hours=1)
    assert r.elapsed == timedelta(minutes=20) and r.remaining == timedelta(minutes=40)


# --------------------------------------------------------------------------- policies


def test_the_defaults_give_every_priority_its_targets() -> None:
    p = policy.DEFAULT_POLICY
    expected = {
        "P1": (900, 4 * 3600, False),
        "P2": (1800, 8 * 3600, False),
        "P3": (4 * 3600, 3 * 8 * 3600, True),
        "P4": (8 * 3600, 5 * 8 * 3600, True),
        "P5": (2 * 8 * 3600, 10 * 8 * 3600, True),
    }
    for priority, (response, resolution, business) in expected.items():
        rule = p.rule_for(priority, None, None)
        assert rule is not None
        assert (rule.response_seconds, rule.resolution_seconds, rule.business_hours) == (response, resolution, business)
        assert rule.warning_percents == (50, 75)


def test_the_narrowest_rule_wins() -> None:
    body = policy.default_body()["rules"]
    body.append({**body[0], "category": "Database", "response_seconds": 60})
    body.append({**body[0], "category": "Database", "service": "payments", "response_seconds": 30})
    p = policy.build_policy(2, body)
    assert p.rule_for("P1", "Network", "payments").response_seconds == 900  # type: ignore[union-attr]
    assert p.rule_for("P1", "database", "shop").response_seconds == 60  # type: ignore[union-attr]
    assert p.rule_for("P1", "Database", "payments").response_seconds == 30  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"response_seconds": 0}, "rules.0.response_seconds"),
        ({"resolution_seconds": -5}, "rules.0.resolution_seconds"),
        ({"warning_percents": [50, 100]}, "rules.0.warning_percents.1"),
        ({"warning_percents": [0]}, "rules.0.warning_percents.0"),
        ({"calendar": {"twenty_four_seven": False, "time_zone": "Mars/Olympus"}}, "rules.0.calendar.time_zone"),
        ({"calendar": {"twenty_four_seven": False, "time_zone": "UTC"}}, "rules.0.calendar.working_hours"),
        ({"priority": "P2"}, "rules.1"),  # a duplicate, and P1 left without a target
    ],
)
def test_bad_policies_name_the_field(change: dict[str, object], field: str) -> None:
    body = policy.default_body()["rules"]
    body[0] = {**body[0], **change}
    with pytest.raises(policy.PolicyError) as caught:
        policy.build_policy(2, body)
    assert field in [f for f, _ in caught.value.errors], caught.value.errors


def test_a_priority_without_a_target_is_refused() -> None:
    body = [r for r in policy.default_body()["rules"] if r["priority"] != "P4"]
    with pytest.raises(policy.PolicyError, match="P4"):
        policy.build_policy(2, body)


def test_working_hours_to_midnight_and_holidays_convert_to_the_platform_calendar() -> None:
    body = policy.default_body()["rules"]
    body[4] = {
        **body[4],
        "calendar": {
            "twenty_four_seven": False,
            "time_zone": "Europe/London",
            "working_hours": [{"days": ["sat"], "start": "18:00", "end": "00:00"}],
            "holidays_country": "GB",
            "holidays_subdivision": "ENG",
        },
    }
    rule = policy.build_policy(2, body).rule_for("P5", None, None)
    assert rule is not None
    spec = policy.calendar_of(rule.calendar).spec
    assert spec.weekly.saturday[0].end == "24:00" and spec.holidays is not None and spec.holidays.country == "GB"
