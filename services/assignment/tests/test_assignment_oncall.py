"""Who is on call when: rotations across handoffs and DST changes, layers, restrictions, overrides,
and the rendered timeline (pure; time is an argument)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from assignment import oncall
from opsledger.events.assignment import OnCallScheduleChanged, ScheduleLayer
from opsledger.events.common import PersonRef

A, B, C = (PersonRef(sub=s, name=s.upper()) for s in ("alice", "bob", "carol"))
BERLIN = ZoneInfo("Europe/Berlin")


def layer(members: list[PersonRef], rotation: str, starts_at: datetime, **fields: Any) -> ScheduleLayer:
    return ScheduleLayer.model_validate(
        {"name": fields.pop("name", "primary"), "members": members, "rotation": rotation, "starts_at": starts_at}
        | fields
    )


def schedule(*layers: ScheduleLayer, zone: str = "UTC", overrides: list[dict[str, Any]] | None = None) -> Any:
    return OnCallScheduleChanged(
        schedule_id="s",
        version=1,
        name="Platform primary",
        time_zone=zone,
        layers=list(layers),
        overrides=overrides or [],  # type: ignore[arg-type]
    )


def who(s: OnCallScheduleChanged, at: datetime) -> str | None:
    found = oncall.who(s, at)
    return found.person.sub if found else None


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_weekly_rotation_hands_off_at_the_handoff_time() -> None:
    s = schedule(layer([A, B], "weekly", utc(2026, 11, 30, 9), handoff_time=time(9)))
    assert who(s, utc(2026, 11, 30, 8, 59)) is None  # before the rotation starts
    assert who(s, utc(2026, 11, 30, 9)) == "alice"
    assert who(s, utc(2026, 12, 7, 8, 59)) == "alice"
    assert who(s, utc(2026, 12, 7, 9)) == "bob"
    assert who(s, utc(2026, 12, 14, 9)) == "alice"
    now = oncall.on_call(s, utc(2026, 12, 1, 12))
    assert now is not None and now.until == utc(2026, 12, 7, 9) and now.source == "layer 'primary'"
    assert oncall.describe_until(now.until) == "until 2026-12-07 09:00 UTC"


def test_a_rotation_started_between_handoffs_hands_off_at_the_next_one() -> None:
    s = schedule(layer([A, B], "daily", utc(2026, 11, 30, 15), handoff_time=time(9)))
    assert who(s, utc(2026, 11, 30, 15)) == "alice"
    assert who(s, utc(2026, 12, 1, 8, 59)) == "alice"
    assert who(s, utc(2026, 12, 1, 9)) == "bob"


def test_daily_handoff_stays_at_local_nine_across_the_autumn_dst_change() -> None:
    # Berlin leaves CEST (UTC+2) for CET (UTC+1) on 2026-10-25: 09:00 local is 07:00Z before, 08:00Z after.
    start = datetime(2026, 10, 23, 9, tzinfo=BERLIN)
    s = schedule(layer([A, B], "daily", start, handoff_time=time(9)), zone="Europe/Berlin")
    assert who(s, utc(2026, 10, 23, 7)) == "alice"
    assert who(s, utc(2026, 10, 24, 7)) == "bob"
    assert who(s, utc(2026, 10, 25, 7, 30)) == "bob"  # 08:30 CET: still bob
    assert who(s, utc(2026, 10, 25, 8)) == "alice"
    shifts = oncall.shifts(s, utc(2026, 10, 23, 7), utc(2026, 10, 27, 8))
    assert [(x.person.sub, x.end - x.start) for x in shifts] == [
        ("alice", timedelta(hours=24)),
        ("bob", timedelta(hours=25)),  # the day the clocks go back
        ("alice", timedelta(hours=24)),
        ("bob", timedelta(hours=24)),
    ]


def test_weekly_handoff_across_the_spring_dst_change() -> None:
    # New York springs forward on 2026-03-08: 09:00 local is 14:00Z before, 13:00Z after.
    ny = ZoneInfo("America/New_York")
    s = schedule(layer([A, B], "weekly", datetime(2026, 3, 2, 9, tzinfo=ny)), zone="America/New_York")
    assert who(s, utc(2026, 3, 9, 12, 59)) == "alice"  # Monday 08:59 EDT
    assert who(s, utc(2026, 3, 9, 13)) == "bob"
    [first, second] = oncall.shifts(s, utc(2026, 3, 2, 14), utc(2026, 3, 16, 13))
    assert first.end - first.start == timedelta(days=7, hours=-1)
    assert second.start == utc(2026, 3, 9, 13)


def test_a_handoff_inside_the_skipped_hour_is_the_jump() -> None:
    ny = ZoneInfo("America/New_York")
    s = schedule(layer([A, B], "daily", datetime(2026, 3, 6, 2, 30, tzinfo=ny), handoff_time=time(2, 30)), zone=ny.key)
    # 2026-03-08 02:30 does not exist in New York; the handoff happens at 03:30 EDT (07:30Z).
    assert who(s, utc(2026, 3, 8, 7, 29)) == "bob"
    assert who(s, utc(2026, 3, 8, 7, 30)) == "alice"


def test_hourly_rotation_every_eight_hours() -> None:
    s = schedule(layer([A, B, C], "hourly", utc(2026, 11, 30), every_hours=8))
    assert [who(s, utc(2026, 11, 30) + timedelta(hours=h)) for h in (0, 7, 8, 16, 24, 31)] == [
        "alice",
        "alice",
        "bob",
        "carol",
        "alice",
        "alice",
    ]


def test_a_later_restricted_layer_wins_only_inside_its_hours() -> None:
    base = layer([A], "weekly", utc(2026, 11, 2), name="24x7")
    office = layer(
        [B],
        "weekly",
        utc(2026, 11, 2),
        name="office hours",
        restrictions=[{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}],
    )
    s = schedule(base, office, zone="Europe/Berlin")
    assert who(s, datetime(2026, 12, 1, 10, tzinfo=BERLIN)) == "bob"  # Tuesday 10:00
    assert who(s, datetime(2026, 12, 1, 17, tzinfo=BERLIN)) == "alice"
    assert who(s, datetime(2026, 12, 5, 10, tzinfo=BERLIN)) == "alice"  # Saturday
    shifts = oncall.shifts(s, datetime(2026, 12, 1, 0, tzinfo=BERLIN), datetime(2026, 12, 2, 0, tzinfo=BERLIN))
    assert [(x.person.sub, x.start.astimezone(BERLIN).hour) for x in shifts] == [
        ("alice", 0),
        ("bob", 9),
        ("alice", 17),
    ]


def test_each_layer_keeps_its_own_time_zone_follow_the_sun() -> None:
    """Tokyo covers its office hours, Berlin its own, in a schedule kept in UTC: each layer's
    restrictions and handoffs are read in that layer's zone."""
    tokyo = layer(
        [C],
        "weekly",
        utc(2026, 11, 2),
        name="tokyo",
        time_zone="Asia/Tokyo",
        restrictions=[{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}],
    )
    berlin = layer(
        [B],
        "weekly",
        utc(2026, 11, 2),
        name="berlin",
        time_zone="Europe/Berlin",
        restrictions=[{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}],
    )
    s = schedule(layer([A], "weekly", utc(2026, 11, 2), name="24x7"), tokyo, berlin, zone="UTC")
    assert who(s, utc(2026, 12, 1, 1)) == "carol"  # 10:00 in Tokyo, 02:00 in Berlin
    assert who(s, utc(2026, 12, 1, 9)) == "bob"  # 18:00 in Tokyo, 10:00 in Berlin
    assert who(s, utc(2026, 12, 1, 17)) == "alice"  # 02:00 in Tokyo, 18:00 in Berlin
    hours = [(x.person.sub, x.start.hour) for x in oncall.shifts(s, utc(2026, 12, 1), utc(2026, 12, 2))]
    assert hours == [("carol", 0), ("bob", 8), ("alice", 16)]  # Tokyo 09-17 JST, Berlin 09-17 CET


def test_a_restriction_ending_before_it_starts_wraps_past_midnight() -> None:
    night = layer([B], "weekly", utc(2026, 11, 2), restrictions=[{"days": ["fri"], "start": "22:00", "end": "06:00"}])
    s = schedule(layer([A], "weekly", utc(2026, 11, 2)), night)
    assert who(s, utc(2026, 12, 4, 23)) == "bob"  # Friday night
    assert who(s, utc(2026, 12, 5, 5, 59)) == "bob"  # Saturday morning
    assert who(s, utc(2026, 12, 5, 6)) == "alice"
    assert who(s, utc(2026, 12, 3, 23)) == "alice"  # Thursday night


def test_overrides_win_over_every_layer() -> None:
    s = schedule(
        layer([A], "weekly", utc(2026, 11, 2)),
        overrides=[{"person": C.model_dump(), "starts_at": utc(2026, 12, 1, 12), "ends_at": utc(2026, 12, 1, 18)}],
    )
    assert who(s, utc(2026, 12, 1, 11)) == "alice"
    now = oncall.on_call(s, utc(2026, 12, 1, 12))
    assert now is not None and (now.person.sub, now.source, now.until) == ("carol", "override", utc(2026, 12, 1, 18))
    assert who(s, utc(2026, 12, 1, 18)) == "alice"


def test_nobody_when_no_layer_covers_the_instant() -> None:
    s = schedule(
        layer([A], "weekly", utc(2026, 11, 2), restrictions=[{"days": ["mon"], "start": "09:00", "end": "10:00"}])
    )
    assert oncall.on_call(s, utc(2026, 12, 1, 9, 30)) is None
    assert who(s, utc(2026, 11, 30, 9, 30)) == "alice"


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


@settings(max_examples=150, deadline=None)
@given(
    rotation=st.sampled_from(["daily", "weekly", "hourly"]),
    members=st.integers(min_value=1, max_value=5),
    every_hours=st.integers(min_value=1, max_value=72),
    handoff=st.times(),
    zone=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31)),
    offset=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)),
    window=st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=20)),
)
def test_exactly_one_member_is_on_call_at_every_instant_of_a_layer(
    rotation: str,
    members: int,
    every_hours: int,
    handoff: time,
    zone: str,
    start: datetime,
    offset: timedelta,
    window: timedelta,
) -> None:
    people = [PersonRef(sub=f"p{i}") for i in range(members)]
    starts_at = start.replace(tzinfo=UTC)
    s = schedule(
        layer(people, rotation, starts_at, every_hours=every_hours, handoff_time=handoff.replace(microsecond=0)),
        zone=zone,
    )
    t = starts_at + offset
    now = oncall.who(s, t)
    assert now is not None and now.person in people
    # The timeline from t covers the window without a gap or an overlap, one member at a time.
    shifts = oncall.shifts(s, t, t + window)
    assert shifts[0].start == t and shifts[-1].end == t + window
    for before, after in itertools.pairwise(shifts):
        assert before.end == after.start
        assert before.person != after.person  # one member's consecutive turns are one stretch
    for shift in shifts:
        assert shift.start < shift.end
        assert who(s, shift.start) == shift.person.sub
        assert who(s, shift.end - timedelta(microseconds=1)) == shift.person.sub


restrictions = st.lists(
    st.fixed_dictionaries(
        {
            "days": st.lists(st.sampled_from(list(oncall.WEEKDAYS)), min_size=1, max_size=7, unique=True),
            "start": st.times().map(lambda t: t.replace(second=0, microsecond=0)),
            "end": st.times().map(lambda t: t.replace(second=0, microsecond=0)),
        }
    ),
    max_size=2,
)
layers = st.lists(
    st.fixed_dictionaries(
        {
            "rotation": st.sampled_from(["daily", "weekly", "hourly"]),
            "members": st.integers(min_value=1, max_value=3),
            "every_hours": st.integers(min_value=1, max_value=30),
            "offset": st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
            "restrictions": restrictions,
        }
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=100, deadline=None)
@given(
    specs=layers,
    zone=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)),
    overrides=st.lists(
        st.tuples(
            st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=6)),
            st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=1)),
        ),
        max_size=2,
    ),
    probes=st.lists(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=7)), min_size=1, max_size=20),
)
def test_the_timeline_agrees_with_who_is_on_call_at_every_instant(
    specs: list[dict[str, Any]],
    zone: str,
    start: datetime,
    overrides: list[tuple[timedelta, timedelta]],
    probes: list[timedelta],
) -> None:
    t0 = start.replace(tzinfo=UTC)
    s = schedule(
        *(
            layer(
                [PersonRef(sub=f"l{i}p{j}") for j in range(spec["members"])],
                spec["rotation"],
                t0 + spec["offset"],
                name=f"layer {i}",
                every_hours=spec["every_hours"],
                restrictions=spec["restrictions"],
            )
            for i, spec in enumerate(specs)
        ),
        zone=zone,
        overrides=[
            {"person": {"sub": f"o{k}"}, "starts_at": t0 + at, "ends_at": t0 + at + length}
            for k, (at, length) in enumerate(overrides)
        ],
    )
    end = t0 + timedelta(days=7)
    shifts = oncall.shifts(s, t0, end)
    for before, after in itertools.pairwise(shifts):
        assert before.end <= after.start
    for shift in shifts:
        assert who(s, shift.start) == shift.person.sub
        assert who(s, shift.end - timedelta(microseconds=1)) == shift.person.sub
    for probe in probes:
        t = t0 + probe
        if t >= end:
            continue
        covering = [x for x in shifts if x.start <= t < x.end]
        assert len(covering) <= 1
        expected = oncall.who(s, t)
        assert (covering[0].person.sub if covering else None) == (expected.person.sub if expected else None)


def test_answers_kept_from_earlier_instants_are_the_answers_computed_afresh() -> None:
    """on_call keeps its last answer per schedule for the instants before its `until`: asked in
    order, out of order and again, it says what a fresh computation says (a copy of the schedule
    is another object, so nothing is kept for it)."""
    s = schedule(
        layer([A, B], "daily", utc(2026, 11, 30, 8), handoff_time=time(9)),
        layer(
            [C],
            "weekly",
            utc(2026, 11, 30, 8),
            name="nights",
            restrictions=[{"days": ["mon", "tue", "wed", "thu", "fri"], "start": time(22), "end": time(6)}],
        ),
        zone="Europe/Berlin",
        overrides=[{"person": B, "starts_at": utc(2026, 12, 2, 12), "ends_at": utc(2026, 12, 2, 15)}],
    )
    instants = [utc(2026, 11, 30, 8) + timedelta(minutes=37 * n) for n in range(400)]
    for at in [*instants, *reversed(instants), *instants[::7]]:
        assert oncall.on_call(s, at) == oncall.on_call(s.model_copy(), at), at
