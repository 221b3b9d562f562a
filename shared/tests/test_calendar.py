"""Unit tests: business-time arithmetic (working hours, holidays, DST) and the calendar spec."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from opsledger.calendar import (
    ALWAYS,
    WEEKDAYS,
    BusinessCalendar,
    CalendarSpec,
    CalendarSpecError,
    business_hours,
)

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
SANTIAGO = ZoneInfo("America/Santiago")
H = timedelta(hours=1)


def at(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def every_day(time_zone: str, *intervals: tuple[str, str]) -> BusinessCalendar:
    hours = [{"start": s, "end": e} for s, e in intervals]
    return CalendarSpec.parse({"time_zone": time_zone, "weekly": {d: hours for d in WEEKDAYS}}).build()


# --------------------------------------------------------------------------- plain weeks

UTC_9_TO_5 = business_hours()  # Mon-Fri 09:00-17:00 UTC


def test_plain_week_within_a_day_and_across_days() -> None:
    mon = utc(2026, 6, 1, 10)  # a Monday
    assert UTC_9_TO_5.add_business_time(mon, 2 * H) == utc(2026, 6, 1, 12)
    assert UTC_9_TO_5.add_business_time(mon, 8 * H) == utc(2026, 6, 2, 10)
    assert UTC_9_TO_5.business_time_between(mon, utc(2026, 6, 2, 10)) == 8 * H
    assert UTC_9_TO_5.business_time_between(utc(2026, 6, 1), utc(2026, 6, 8)) == 40 * H


def test_weekend_is_skipped() -> None:
    fri = utc(2026, 6, 5, 16)
    assert UTC_9_TO_5.add_business_time(fri, 2 * H) == utc(2026, 6, 8, 10)
    assert UTC_9_TO_5.business_time_between(fri, utc(2026, 6, 8, 10)) == 2 * H
    assert UTC_9_TO_5.business_time_between(utc(2026, 6, 6, 9), utc(2026, 6, 7, 17)) == timedelta(0)


def test_start_outside_hours_waits_for_the_next_working_interval() -> None:
    assert UTC_9_TO_5.add_business_time(utc(2026, 6, 1, 6), H) == utc(2026, 6, 1, 10)
    assert UTC_9_TO_5.add_business_time(utc(2026, 6, 1, 20), H) == utc(2026, 6, 2, 10)
    assert UTC_9_TO_5.add_business_time(utc(2026, 6, 6, 12), H) == utc(2026, 6, 8, 10)  # Saturday


def test_a_duration_that_ends_with_an_interval_stops_at_its_end() -> None:
    # The earliest instant: 17:00 that day, not 09:00 the next working day.
    assert UTC_9_TO_5.add_business_time(utc(2026, 6, 1, 9), 8 * H) == utc(2026, 6, 1, 17)
    assert UTC_9_TO_5.add_business_time(utc(2026, 6, 5, 9), 8 * H) == utc(2026, 6, 5, 17)


def test_zero_duration_returns_start_even_outside_working_time() -> None:
    sat = utc(2026, 6, 6, 3)
    assert UTC_9_TO_5.add_business_time(sat, timedelta(0)) == sat
    local = sat.astimezone(LONDON)
    result = UTC_9_TO_5.add_business_time(local, timedelta(0))
    assert result == sat and result.tzinfo is UTC


def test_between_is_zero_when_b_is_not_after_a() -> None:
    a = utc(2026, 6, 1, 10)
    assert UTC_9_TO_5.business_time_between(a, a) == timedelta(0)
    assert UTC_9_TO_5.business_time_between(a, a - H) == timedelta(0)


def test_results_are_utc_whatever_the_input_zone() -> None:
    cal = business_hours("America/New_York")
    start = at(NEW_YORK, 2026, 6, 1, 16)  # 16:00 EDT = 20:00 UTC
    result = cal.add_business_time(start, 2 * H)
    assert result.tzinfo is UTC and result == utc(2026, 6, 2, 14)  # 10:00 EDT next day
    offset = timezone(timedelta(hours=5, minutes=30))
    assert cal.business_time_between(start.astimezone(offset), result.astimezone(offset)) == 2 * H


def test_microseconds_are_exact() -> None:
    start = utc(2026, 6, 1, 16, 59, 59, 999_999)
    assert UTC_9_TO_5.add_business_time(start, timedelta(microseconds=2)) == utc(2026, 6, 2, 9, 0, 0, 1)


def test_naive_datetimes_and_negative_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="start must be a timezone-aware datetime"):
        UTC_9_TO_5.add_business_time(datetime(2026, 6, 1, 10), H)
    with pytest.raises(ValueError, match="b must be a timezone-aware datetime"):
        UTC_9_TO_5.business_time_between(utc(2026, 6, 1), datetime(2026, 6, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        UTC_9_TO_5.is_working(datetime(2026, 6, 1, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        ALWAYS.add_business_time(datetime(2026, 6, 1, 10), H)
    with pytest.raises(ValueError, match="must not be negative"):
        UTC_9_TO_5.add_business_time(utc(2026, 6, 1, 10), -H)


def test_is_working_next_working_instant_and_working_intervals() -> None:
    cal = CalendarSpec.parse(
        {"weekly": {"monday": [{"start": "09:00", "end": "12:00"}, {"start": "13:00", "end": "17:00"}]}}
    ).build()
    assert cal.is_working(utc(2026, 6, 1, 9))  # an interval's start is working
    assert not cal.is_working(utc(2026, 6, 1, 12))  # its end is not
    assert cal.next_working_instant(utc(2026, 6, 1, 10)) == utc(2026, 6, 1, 10)
    assert cal.next_working_instant(utc(2026, 6, 1, 12, 30)) == utc(2026, 6, 1, 13)
    assert cal.next_working_instant(utc(2026, 6, 1, 17)) == utc(2026, 6, 8, 9)
    assert cal.working_intervals(utc(2026, 6, 1, 10), utc(2026, 6, 8, 10)) == [
        (utc(2026, 6, 1, 10), utc(2026, 6, 1, 12)),
        (utc(2026, 6, 1, 13), utc(2026, 6, 1, 17)),
        (utc(2026, 6, 8, 9), utc(2026, 6, 8, 10)),
    ]
    assert cal.working_intervals(utc(2026, 6, 2), utc(2026, 6, 1)) == []


def test_touching_intervals_join_up() -> None:
    cal = CalendarSpec.parse(
        {"weekly": {"monday": [{"start": "12:00", "end": "17:00"}, {"start": "09:00", "end": "12:00"}]}}
    ).build()
    assert cal.working_intervals(utc(2026, 6, 1), utc(2026, 6, 2)) == [(utc(2026, 6, 1, 9), utc(2026, 6, 1, 17))]
    assert cal.spec.weekly.monday[0].start == "09:00"  # stored in order


def test_a_24_hour_weekday_runs_into_the_next() -> None:
    cal = CalendarSpec.parse({"weekly": {"monday": [{"start": "00:00", "end": "24:00"}]}}).build()
    assert cal.business_time_between(utc(2026, 5, 31), utc(2026, 6, 3)) == 24 * H
    assert cal.add_business_time(utc(2026, 6, 1, 23), H) == utc(2026, 6, 2)
    assert cal.add_business_time(utc(2026, 6, 1, 23), 2 * H) == utc(2026, 6, 8, 1)


# --------------------------------------------------------------------------- holidays


def test_gb_christmas_and_boxing_day_2026() -> None:
    cal = business_hours("Europe/London", country="GB", subdivision="ENG")
    # Fri 25 Christmas, Sat 26 Boxing Day, so Mon 28 is the substitute day: back on Tue 29.
    assert cal.is_holiday(date(2026, 12, 25)) and cal.is_holiday(date(2026, 12, 28))
    assert cal.add_business_time(at(LONDON, 2026, 12, 24, 16), 2 * H) == utc(2026, 12, 29, 10)
    assert cal.business_time_between(at(LONDON, 2026, 12, 24), at(LONDON, 2026, 12, 30)) == 16 * H
    without = business_hours("Europe/London")
    assert without.add_business_time(at(LONDON, 2026, 12, 24, 16), 2 * H) == utc(2026, 12, 25, 10)


def test_a_us_subdivision_holiday() -> None:
    # Patriots' Day (third Monday of April) is a holiday in Massachusetts, not in the US at large.
    ma = business_hours("America/New_York", country="US", subdivision="MA")
    us = business_hours("America/New_York", country="US")
    fri = at(NEW_YORK, 2026, 4, 17, 16)
    assert ma.add_business_time(fri, 2 * H) == at(NEW_YORK, 2026, 4, 21, 10)
    assert us.add_business_time(fri, 2 * H) == at(NEW_YORK, 2026, 4, 20, 10)
    assert not ma.is_working(at(NEW_YORK, 2026, 4, 20, 12)) and us.is_working(at(NEW_YORK, 2026, 4, 20, 12))


def test_extra_holidays_are_whole_local_days_off() -> None:
    cal = business_hours("America/New_York", extra_holidays=[date(2026, 6, 2)])
    assert cal.add_business_time(at(NEW_YORK, 2026, 6, 1, 16), 2 * H) == at(NEW_YORK, 2026, 6, 3, 10)
    assert cal.business_time_between(at(NEW_YORK, 2026, 6, 1), at(NEW_YORK, 2026, 6, 6)) == 32 * H
    assert cal.is_holiday(date(2026, 6, 2)) and not cal.is_holiday(date(2026, 6, 3))


# --------------------------------------------------------------------------- DST


@pytest.mark.parametrize(
    ("zone", "spring", "fall", "spring_starts_at"),
    [
        ("Europe/London", date(2026, 3, 29), date(2026, 10, 25), utc(2026, 3, 29, 0)),
        ("America/New_York", date(2026, 3, 8), date(2026, 11, 1), utc(2026, 3, 8, 5)),
        # Santiago moves its clocks at midnight: 6 Sep 2026 starts at 01:00 (-03), the jump itself.
        ("America/Santiago", date(2026, 9, 6), date(2026, 4, 4), utc(2026, 9, 6, 4)),
    ],
)
def test_whole_day_on_dst_transition_days_is_23_and_25_hours(
    zone: str, spring: date, fall: date, spring_starts_at: datetime
) -> None:
    cal = every_day(zone, ("00:00", "24:00"))
    tz = ZoneInfo(zone)
    for day, hours in ((spring, 23), (fall, 25), (spring + timedelta(days=2), 24)):
        # The local day as the clock reads it, found without the calendar: midnight to midnight.
        day_start = datetime.combine(day, time(0), tz).astimezone(UTC)
        if day == spring:
            day_start = spring_starts_at
        day_end = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
        assert day_end - day_start == hours * H
        assert cal.add_business_time(day_start, hours * H) == day_end
        assert cal.business_time_between(day_start - 24 * H, day_end + 24 * H) == (hours + 48) * H
        assert cal.working_intervals(day_start - H, day_end + H) == [(day_start - H, day_end + H)]
    only_that_day = CalendarSpec.parse(
        {"time_zone": zone, "weekly": {WEEKDAYS[spring.weekday()]: [{"start": "00:00", "end": "24:00"}]}}
    ).build()
    week = (spring_starts_at - 72 * H, spring_starts_at + 72 * H)
    assert only_that_day.business_time_between(*week) == 23 * H
    assert only_that_day.working_intervals(*week)[0][0] == spring_starts_at


def test_single_transition_day_counts_its_own_hours() -> None:
    # Only Sundays work, so each day's length is measured on its own.
    sundays = CalendarSpec.parse(
        {"time_zone": "Europe/London", "weekly": {"sunday": [{"start": "00:00", "end": "24:00"}]}}
    ).build()
    week = (at(LONDON, 2026, 3, 23), at(LONDON, 2026, 3, 30))
    assert sundays.business_time_between(*week) == 23 * H
    assert sundays.business_time_between(at(LONDON, 2026, 10, 19), at(LONDON, 2026, 10, 26)) == 25 * H
    ny_sundays = CalendarSpec.parse(
        {"time_zone": "America/New_York", "weekly": {"sunday": [{"start": "00:00", "end": "24:00"}]}}
    ).build()
    assert ny_sundays.business_time_between(at(NEW_YORK, 2026, 3, 2), at(NEW_YORK, 2026, 3, 9)) == 23 * H
    assert ny_sundays.business_time_between(at(NEW_YORK, 2026, 10, 26), at(NEW_YORK, 2026, 11, 2)) == 25 * H


def test_office_hours_are_unaffected_by_a_night_transition() -> None:
    cal = every_day("Europe/London", ("09:00", "17:00"))
    assert cal.business_time_between(at(LONDON, 2026, 3, 29), at(LONDON, 2026, 3, 30)) == 8 * H
    assert cal.business_time_between(at(LONDON, 2026, 10, 25), at(LONDON, 2026, 10, 26)) == 8 * H
    # Sat 16:00 GMT + 2h = Sun 10:00 BST (09:00 UTC): the clocks moved in between.
    assert cal.add_business_time(at(LONDON, 2026, 3, 28, 16), 2 * H) == utc(2026, 3, 29, 9)


def test_boundaries_inside_skipped_and_repeated_hours() -> None:
    # London: 29 Mar 2026 01:00 GMT jumps to 02:00 BST; 25 Oct 2026 02:00 BST falls back to 01:00 GMT.
    cal = every_day("Europe/London", ("00:30", "03:00"))
    assert cal.business_time_between(at(LONDON, 2026, 3, 29), at(LONDON, 2026, 3, 30)) == timedelta(hours=1.5)
    # A start in the skipped hour is the jump itself.
    late = every_day("Europe/London", ("01:30", "05:00"))
    assert late.next_working_instant(at(LONDON, 2026, 3, 29)) == utc(2026, 3, 29, 1)
    assert late.business_time_between(at(LONDON, 2026, 3, 29), at(LONDON, 2026, 3, 30)) == 3 * H
    # An interval wholly inside the skipped hour is empty that day.
    gap = every_day("Europe/London", ("01:15", "01:45"), ("09:00", "10:00"))
    assert gap.business_time_between(at(LONDON, 2026, 3, 29), at(LONDON, 2026, 3, 30)) == H
    # A boundary in the repeated hour is its first occurrence; adjacent intervals still tile the day.
    split = every_day("Europe/London", ("00:00", "01:30"), ("01:30", "03:00"))
    first, second = every_day("Europe/London", ("00:00", "01:30")), every_day("Europe/London", ("01:30", "03:00"))
    day = (at(LONDON, 2026, 10, 25), at(LONDON, 2026, 10, 26))
    assert first.business_time_between(*day) == timedelta(hours=1.5)
    assert second.business_time_between(*day) == timedelta(hours=2.5)
    assert split.business_time_between(*day) == 4 * H


def test_always_is_wall_time_across_dst() -> None:
    assert ALWAYS.is_24x7 and BusinessCalendar.always() == ALWAYS
    a, b = at(LONDON, 2026, 3, 29), at(LONDON, 2026, 3, 30)
    assert ALWAYS.business_time_between(a, b) == 23 * H
    assert ALWAYS.add_business_time(a, 24 * H) == utc(2026, 3, 30)  # 01:00 BST, not local midnight
    assert ALWAYS.business_time_between(at(NEW_YORK, 2026, 11, 1), at(NEW_YORK, 2026, 11, 2)) == 25 * H
    assert ALWAYS.is_working(a) and ALWAYS.next_working_instant(a) == a and not ALWAYS.is_holiday(date(2026, 12, 25))


def test_local_datetimes_of_one_zone_are_compared_as_instants() -> None:
    # Python subtracts and compares two datetimes sharing a tzinfo by wall clock; the calendar must not.
    first = datetime(2026, 10, 25, 1, 30, tzinfo=LONDON)  # 00:30 UTC (BST)
    second = datetime(2026, 10, 25, 1, 0, tzinfo=LONDON, fold=1)  # 01:00 UTC (GMT), reads earlier
    assert ALWAYS.business_time_between(first, second) == timedelta(minutes=30)
    assert ALWAYS.business_time_between(second, first) == timedelta(0)
    assert ALWAYS.working_intervals(first, second) == [(utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1))]
    night = every_day("Europe/London", ("00:00", "03:00"))
    assert night.business_time_between(first, second) == timedelta(minutes=30)


# --------------------------------------------------------------------------- spec


def test_spec_json_round_trip() -> None:
    spec = CalendarSpec.parse(
        {
            "time_zone": "Europe/London",
            "weekly": {"monday": [{"start": "13:00", "end": "24:00"}, {"start": "08:00", "end": "12:00"}]},
            "holidays": {"country": "gb", "subdivision": "SCT"},
            "extra_holidays": ["2026-12-31", "2026-12-24", "2026-12-24"],
        }
    )
    assert spec.holidays is not None and spec.holidays.country == "GB"
    assert spec.extra_holidays == [date(2026, 12, 24), date(2026, 12, 31)]
    back = CalendarSpec.from_json(spec.as_json())
    assert back == spec and back.as_json() == spec.as_json()
    assert back.build() == spec.build() and hash(back.build()) == hash(spec.build())
    assert CalendarSpec.from_json(ALWAYS.spec.as_json()).build() == ALWAYS
    assert CalendarSpec.parse({"kind": "24x7", "time_zone": "Asia/Tokyo"}).build().is_24x7


def test_business_hours_defaults() -> None:
    spec = business_hours().spec
    assert spec.kind == "business_hours" and spec.time_zone == "UTC" and spec.holidays is None
    assert [bool(spec.weekly.day(i)) for i in range(7)] == [True] * 5 + [False] * 2
    weekend = business_hours("Asia/Tokyo", days=["saturday", "sunday"], start="10:00", end="14:00", country="JP")
    assert weekend.business_time_between(utc(2026, 6, 1), utc(2026, 6, 8)) == 8 * H


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"time_zone": "Mars/Base"}, "field 'time_zone': unknown IANA time zone 'Mars/Base'"),
        ({"time_zone": "../etc/passwd"}, "field 'time_zone': unknown IANA time zone"),
        ({"holidays": {"country": "XX"}}, "field 'holidays.country': unknown country 'XX'"),
        (
            {"holidays": {"country": "US", "subdivision": "ZZ"}},
            "field 'holidays.subdivision': unknown subdivision 'ZZ' of US: expected one of AK, AL",
        ),
        ({"holidays": {"country": "FR", "subdivision": "XYZ"}}, "field 'holidays.subdivision': unknown subdivision"),
        (
            {"weekly": {"monday": [{"start": "17:00", "end": "09:00"}]}},
            "field 'weekly.monday.0': start 17:00 must be before end 09:00",
        ),
        (
            {"weekly": {"friday": [{"start": "09:00", "end": "09:00"}]}},
            "field 'weekly.friday.0': start 09:00 must be before end 09:00",
        ),
        (
            {"weekly": {"tuesday": [{"start": "09:00", "end": "12:00"}, {"start": "11:00", "end": "13:00"}]}},
            "field 'weekly.tuesday': intervals 09:00-12:00 and 11:00-13:00 overlap",
        ),
        ({"weekly": {"monday": [{"start": "9:00", "end": "12:00"}]}}, "field 'weekly.monday.0.start': expected"),
        ({"weekly": {"monday": [{"start": "24:00", "end": "24:00"}]}}, "field 'weekly.monday.0.start': expected"),
        ({"weekly": {"monday": [{"start": "09:00", "end": "24:30"}]}}, "field 'weekly.monday.0.end': expected"),
        ({"weekly": {"mon": [{"start": "09:00", "end": "12:00"}]}}, "field 'weekly': unknown day 'mon'"),
        ({}, "field 'weekly': no working time: every day of the week is empty"),
        ({"weekly": {d: [] for d in WEEKDAYS}}, "field 'weekly': no working time"),
        ({"kind": "24x7", "holidays": {"country": "GB"}}, "field 'holidays': a 24x7 calendar has no holidays"),
        ({"kind": "24x7", "extra_holidays": ["2026-12-25"]}, "field 'extra_holidays': a 24x7 calendar has no"),
        ({"kind": "24x7", "weekly": {"monday": [{"start": "09:00", "end": "12:00"}]}}, "field 'weekly': a 24x7"),
        ({"kind": "8x5"}, "field 'kind': "),
        ({"time_zone": "UTC", "colour": "red", "weekly": {"monday": []}}, "field 'colour': "),
    ],
)
def test_spec_errors_name_the_field_and_say_what_was_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(CalendarSpecError) as caught:
        CalendarSpec.parse(data)
    assert message in str(caught.value)
    # The plain pydantic error carries the same location, for problem-details bodies at the edge.
    with pytest.raises(ValidationError):
        CalendarSpec.model_validate(data)


def test_several_errors_are_all_reported_and_constructors_raise_spec_errors() -> None:
    with pytest.raises(CalendarSpecError) as caught:
        CalendarSpec.parse({"time_zone": "Mars/Base", "holidays": {"country": "XX"}})
    fields = [where for where, _ in caught.value.errors]
    assert fields == ["time_zone", "weekly", "holidays.country"]
    with pytest.raises(CalendarSpecError, match="field 'time_zone': unknown IANA time zone 'Nowhere'"):
        business_hours("Nowhere")
    with pytest.raises(CalendarSpecError, match="field 'weekly': no working time"):
        business_hours(days=[])
    with pytest.raises(CalendarSpecError, match="field 'calendar': Invalid JSON"):
        CalendarSpec.from_json("{")


# --------------------------------------------------------------------------- across holidays


def test_ten_business_days_over_christmas_skip_every_holiday() -> None:
    cal = business_hours("Europe/London", country="GB", subdivision="ENG")
    start = at(LONDON, 2026, 12, 18, 15)
    due = cal.add_business_time(start, 80 * H)
    assert due == at(LONDON, 2027, 1, 6, 15)  # Christmas, Boxing Day (observed) and New Year skipped
    assert cal.business_time_between(start, due) == 80 * H


# --------------------------------------------------------------------------- properties

ZONES = ["Europe/London", "America/New_York", "America/Santiago", "Australia/Sydney", "Australia/Lord_Howe"]
HOLIDAY_SOURCES: list[dict[str, str] | None] = [
    None,
    {"country": "GB", "subdivision": "ENG"},
    {"country": "US", "subdivision": "NY"},
    {"country": "AU", "subdivision": "NSW"},
]
LOW, HIGH = datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 12, 31, tzinfo=UTC)


def _transitions() -> list[datetime]:
    found: list[datetime] = []
    for name in ZONES:
        tz, t, previous = ZoneInfo(name), LOW, None
        while t < HIGH:
            offset = t.astimezone(tz).utcoffset()
            if previous is not None and offset != previous:
                found.append(t)
            previous, t = offset, t + timedelta(minutes=30)
    return found


TRANSITIONS = _transitions()


def _hhmm(quarter: int) -> str:
    return f"{quarter // 4:02d}:{quarter % 4 * 15:02d}"


@st.composite
def calendars(draw: st.DrawFn, grid: list[int] | None = None) -> BusinessCalendar:
    """Random weekly hours on a quarter-hour grid (or the given one), zones with DST, holidays."""
    points = st.sampled_from(grid) if grid else st.integers(0, 96)
    weekly: dict[str, list[dict[str, str]]] = {}
    for day in WEEKDAYS:
        cuts = sorted(draw(st.lists(points, max_size=6, unique=True)))
        weekly[day] = [{"start": _hhmm(s), "end": _hhmm(e)} for s, e in zip(cuts[::2], cuts[1::2], strict=False)]
    assume(any(weekly.values()))
    extra = draw(st.lists(st.dates(date(2025, 1, 1), date(2027, 12, 31)), max_size=4))
    return CalendarSpec.parse(
        {
            "time_zone": draw(st.sampled_from(ZONES)),
            "weekly": weekly,
            "holidays": draw(st.sampled_from(HOLIDAY_SOURCES)),
            "extra_holidays": extra,
        }
    ).build()


plain_instants = st.datetimes(LOW.replace(tzinfo=None), HIGH.replace(tzinfo=None), timezones=st.just(UTC))
near_transitions = st.builds(
    lambda t, minutes: t + timedelta(minutes=minutes), st.sampled_from(TRANSITIONS), st.integers(-4320, 4320)
)
instants = st.one_of(plain_instants, near_transitions)
durations = st.one_of(
    st.just(timedelta(0)),
    st.timedeltas(timedelta(0), timedelta(days=15)),
    st.integers(1, 60).map(lambda m: timedelta(minutes=15 * m)),
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(calendars(), instants, instants, instants)
def test_elapsed_is_never_negative_monotone_and_additive(
    cal: BusinessCalendar, a: datetime, b: datetime, c: datetime
) -> None:
    a, b, c = sorted((a, b, c))
    ab, bc, ac = cal.business_time_between(a, b), cal.business_time_between(b, c), cal.business_time_between(a, c)
    assert timedelta(0) <= ab <= ac and bc >= timedelta(0)
    assert ab + bc == ac
    assert ac <= c - a
    assert cal.business_time_between(c, a) == timedelta(0)


@FAST
@given(calendars(), instants, durations)
def test_add_then_between_gives_the_duration_back(cal: BusinessCalendar, start: datetime, duration: timedelta) -> None:
    end = cal.add_business_time(start, duration)
    assert end.tzinfo is UTC and end >= start
    assert cal.business_time_between(start, end) == duration
    if duration:
        # The earliest such instant: any earlier one falls short.
        assert cal.business_time_between(start, end - timedelta(microseconds=1)) < duration
    else:
        assert end == start


@FAST
@given(calendars(), instants, instants)
def test_between_then_add_reaches_b_or_the_last_working_moment_before_it(
    cal: BusinessCalendar, a: datetime, b: datetime
) -> None:
    a, b = sorted((a, b))
    reached = cal.add_business_time(a, cal.business_time_between(a, b))
    assert a <= reached <= b
    assert cal.business_time_between(reached, b) == timedelta(0)
    if cal.is_working(b - timedelta(microseconds=1)):  # b is inside, or ends, a working interval
        assert reached == b


@FAST
@given(calendars(), instants)
def test_next_working_instant_is_working_and_nothing_works_before_it(cal: BusinessCalendar, t: datetime) -> None:
    nxt = cal.next_working_instant(t)
    assert nxt >= t and cal.is_working(nxt)
    assert cal.business_time_between(t, nxt) == timedelta(0)
    assert (nxt == t) == cal.is_working(t)
    assert cal.add_business_time(t, timedelta(microseconds=1)) == nxt + timedelta(microseconds=1)


@FAST
@given(instants, instants, durations, st.sampled_from(ZONES))
def test_always_is_wall_time(a: datetime, b: datetime, duration: timedelta, zone: str) -> None:
    local = a.astimezone(ZoneInfo(zone))
    assert ALWAYS.business_time_between(local, b) == max(b - a, timedelta(0))
    assert ALWAYS.add_business_time(local, duration) == a + duration
    assert ALWAYS.is_working(local)


# Boundaries of whole hours and half hours, some of which fall in skipped or repeated hours.
ORACLE_GRID = [0, 2, 4, 6, 8, 10, 12, 36, 68, 80, 88, 92, 96]


def _ambiguous(tz: ZoneInfo, day: date, quarter: int) -> bool:
    if quarter == 96:
        day, quarter = day + timedelta(days=1), 0
    wall = datetime.combine(day, time(quarter // 4, quarter % 4 * 15))
    first, second = wall.replace(tzinfo=tz), wall.replace(tzinfo=tz, fold=1)
    # Two offsets, and the first one round-trips (a skipped time would not): a repeated time.
    return first.utcoffset() != second.utcoffset() and first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calendars(ORACLE_GRID),
    st.sampled_from(TRANSITIONS),
    st.integers(-1800, 600),
    st.integers(0, 2880),
)
def test_matches_a_minute_by_minute_count_of_local_wall_time(
    cal: BusinessCalendar, transition: datetime, offset: int, length: int
) -> None:
    """Where no boundary is a repeated wall time, working time is 'the local clock shows a working time'."""
    tz = ZoneInfo(cal.time_zone)
    a = transition + timedelta(minutes=offset)
    b = a + timedelta(minutes=length)
    first = a.astimezone(tz).date()
    days = [first + timedelta(days=k) for k in range(-1, 4)]
    spans = {d: [(i.start, i.end) for i in cal.spec.weekly.day(d.weekday())] for d in days}
    assume(
        not any(
            _ambiguous(tz, d, q)
            for d in days
            for s, e in spans[d]
            for q in (int(s[:2]) * 4 + int(s[3:]) // 15, int(e[:2]) * 4 + int(e[3:]) // 15)
        )
    )
    minutes = 0
    for k in range(length):
        local = (a + timedelta(minutes=k)).astimezone(tz)
        wall = local.strftime("%H:%M")
        if not cal.is_holiday(local.date()) and any(s <= wall < e for s, e in spans[local.date()]):
            minutes += 1
    assert cal.business_time_between(a, b) == timedelta(minutes=minutes)


@settings(max_examples=60, deadline=None)
@given(calendars())
def test_spec_json_round_trips(cal: BusinessCalendar) -> None:
    back = CalendarSpec.from_json(cal.spec.as_json())
    assert back == cal.spec and back.build() == cal
