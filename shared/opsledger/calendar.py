"""Business time, pure (no I/O): weekly working hours in an IANA time zone, public holidays by
country and subdivision, explicit days off, and the 24x7 calendar. SLA clocks and on-call
schedules stand on `add_business_time`, `business_time_between`, `is_working` and
`next_working_instant`.

Semantics, in one place:

- Working hours are local wall-clock times. An interval `[start, end)` of a working day runs from
  the first instant the local clock shows that day at `start` or later, to the first instant it
  shows `end` or later (`24:00` is the next midnight). So a boundary in a skipped hour
  (spring-forward) is the moment the clock jumps, and a boundary in a repeated hour (fall-back)
  is its first occurrence: a 00:00-24:00 day is 23 h or 25 h long on a transition day, and a day
  of 09:00-17:00 is 8 h whatever the transition.
- A holiday (country/subdivision from the `holidays` package, observed days included, or an
  explicit extra date) is a whole local day off.
- Instants are compared in UTC and exact to the microsecond; every result is a UTC datetime.
  Intervals are half-open: an interval's end is not working time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holiday_data
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
# Index = date.weekday().
WEEKDAYS: tuple[Weekday, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONDAY_TO_FRIDAY: tuple[Weekday, ...] = WEEKDAYS[:5]

# Bounds that keep validation and the per-day arithmetic cheap.
MAX_INTERVALS_PER_DAY = 48
MAX_EXTRA_HOLIDAYS = 2000

_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")
_DAY_SECONDS = 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# A calendar without a single working moment in ten years is broken, not busy: stop searching.
_MAX_IDLE_DAYS = 3_660
# Per-calendar cache of converted working days; ~55 years of days before it is reset.
_DAY_CACHE_MAX = 20_000


class CalendarSpecError(ValueError):
    """An invalid calendar configuration; `errors` lists (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"field '{where}': {message}" for where, message in errors))

    @classmethod
    def from_validation(cls, exc: ValidationError) -> CalendarSpecError:
        """The pydantic error, with dotted field paths and plain messages (never the input)."""
        errors = [
            (".".join(str(part) for part in e["loc"]) or "calendar", e["msg"].removeprefix("Value error, "))
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return cls(errors)


def _seconds(hhmm: str) -> int:
    return _DAY_SECONDS if hhmm == "24:00" else int(hhmm[:2]) * 3600 + int(hhmm[3:]) * 60


@functools.cache
def _supported_countries() -> dict[str, list[str]]:
    """ISO code -> subdivision codes, as the pinned holidays package knows them (fixed per release)."""
    return holiday_data.list_supported_countries(include_aliases=False)


class WorkingInterval(BaseModel):
    """Working hours within one day: local wall-clock `start` (HH:MM) to `end` (HH:MM, or 24:00)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: str
    end: str

    @field_validator("start")
    @classmethod
    def _check_start(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"expected a wall-clock time HH:MM from 00:00 to 23:59, got {v[:16]!r}")
        return v

    @field_validator("end")
    @classmethod
    def _check_end(cls, v: str) -> str:
        if v != "24:00" and not _HHMM.match(v):
            raise ValueError(f"expected a wall-clock time HH:MM from 00:01 to 24:00, got {v[:16]!r}")
        return v

    @model_validator(mode="after")
    def _start_before_end(self) -> Self:
        if _seconds(self.start) >= _seconds(self.end):
            raise ValueError(f"start {self.start} must be before end {self.end} (intervals stay within one day)")
        return self


class WeeklyHours(BaseModel):
    """Working intervals per weekday; a day left out (or empty) has no working time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    monday: list[WorkingInterval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)
    tuesday: list[WorkingInterval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)
    wednesday: list[WorkingInterval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)
    thursday: list[WorkingInterval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)
    friday: list[WorkingInterval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)
    saturday: list[WorkingInterval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)
    sunday: list[WorkingInterval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)

    @model_validator(mode="before")
    @classmethod
    def _known_days(cls, data: Any) -> Any:
        # A misspelt day would otherwise read as "no work that day" or a bare "extra input".
        if isinstance(data, Mapping):
            for key in data:
                if key not in WEEKDAYS:
                    raise ValueError(f"unknown day {str(key)[:20]!r}: expected one of {', '.join(WEEKDAYS)}")
        return data

    @field_validator(*WEEKDAYS)
    @classmethod
    def _no_overlap(cls, v: list[WorkingInterval]) -> list[WorkingInterval]:
        ordered = sorted(v, key=lambda i: _seconds(i.start))
        for before, after in pairwise(ordered):
            # Touching intervals (12:00 end, 12:00 start) are fine: they just join up.
            if _seconds(after.start) < _seconds(before.end):
                raise ValueError(f"intervals {before.start}-{before.end} and {after.start}-{after.end} overlap")
        return ordered

    def day(self, weekday: int) -> list[WorkingInterval]:
        """The intervals of `weekday` (0 = Monday, as `date.weekday()`)."""
        intervals: list[WorkingInterval] = getattr(self, WEEKDAYS[weekday])
        return intervals

    def is_empty(self) -> bool:
        """True when no day has any working interval."""
        return not any(self.day(i) for i in range(7))


class HolidaySource(BaseModel):
    """Public holidays from the `holidays` package: an ISO 3166-1 country and optional subdivision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    country: str = Field(max_length=8)
    subdivision: str | None = Field(default=None, max_length=64)

    @field_validator("country")
    @classmethod
    def _known_country(cls, v: str) -> str:
        code = v.strip().upper()
        if code not in _supported_countries():
            raise ValueError(f"unknown country {v!r}: expected an ISO 3166-1 code the holidays package supports")
        return code

    @field_validator("subdivision")
    @classmethod
    def _known_subdivision(cls, v: str | None, info: ValidationInfo) -> str | None:
        country = info.data.get("country")
        if v is None or country is None:  # no country: its own error says so
            return v
        try:
            holiday_data.country_holidays(country, subdiv=v)
        except NotImplementedError:
            known = _supported_countries().get(country, [])
            shown = ", ".join(known[:40]) + (", …" if len(known) > 40 else "")
            hint = f"expected one of {shown}" if known else f"{country} has no subdivisions"
            raise ValueError(f"unknown subdivision {v!r} of {country}: {hint}") from None
        return v


class CalendarSpec(BaseModel):
    """A calendar as configured and stored (policies, events); `build()` makes it usable.

    JSON shape: `{"kind": "business_hours", "time_zone": "Europe/London",
    "weekly": {"monday": [{"start": "09:00", "end": "17:30"}], ...},
    "holidays": {"country": "GB", "subdivision": "ENG"}, "extra_holidays": ["2026-12-24"]}`;
    `{"kind": "24x7"}` is elapsed UTC time with no holidays.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Declared first: the checks of the fields below depend on it.
    kind: Literal["business_hours", "24x7"] = "business_hours"
    time_zone: str = Field(default="UTC", max_length=64)
    weekly: WeeklyHours = Field(default_factory=WeeklyHours, validate_default=True)
    holidays: HolidaySource | None = None
    extra_holidays: list[date] = Field(default_factory=list, max_length=MAX_EXTRA_HOLIDAYS)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):  # ValueError: a malformed key such as "../x"
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v

    @field_validator("weekly")
    @classmethod
    def _some_working_time(cls, v: WeeklyHours, info: ValidationInfo) -> WeeklyHours:
        kind = info.data.get("kind")
        if kind == "business_hours" and v.is_empty():
            raise ValueError("no working time: every day of the week is empty")
        if kind == "24x7" and not v.is_empty():
            raise ValueError("a 24x7 calendar has no weekly hours (every moment is working time)")
        return v

    @field_validator("holidays")
    @classmethod
    def _holidays_fit_kind(cls, v: HolidaySource | None, info: ValidationInfo) -> HolidaySource | None:
        if v is not None and info.data.get("kind") == "24x7":
            raise ValueError("a 24x7 calendar has no holidays")
        return v

    @field_validator("extra_holidays")
    @classmethod
    def _extra_fit_kind(cls, v: list[date], info: ValidationInfo) -> list[date]:
        if v and info.data.get("kind") == "24x7":
            raise ValueError("a 24x7 calendar has no holidays")
        return sorted(set(v))  # one canonical form, so equal calendars serialize equally

    @classmethod
    def parse(cls, data: Mapping[str, Any] | CalendarSpec) -> CalendarSpec:
        """Validate configuration input; raises CalendarSpecError naming each field at fault."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CalendarSpecError.from_validation(exc) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> CalendarSpec:
        """The inverse of `as_json()`; raises CalendarSpecError naming each field at fault."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise CalendarSpecError.from_validation(exc) from None

    def as_json(self) -> str:
        """Canonical JSON, for policies to store and events to carry."""
        return self.model_dump_json()

    def build(self) -> BusinessCalendar:
        """The calendar this spec describes."""
        return BusinessCalendar(self)


def _us(t: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact, unlike timestamp())."""
    return (t - _EPOCH) // _US


def _utc(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _require_aware(t: datetime, name: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {t.isoformat()}")


class BusinessCalendar:
    """Business-time arithmetic over one CalendarSpec. Immutable; safe to share and reuse.

    Working days are converted to UTC intervals once and cached, holidays once per year, so the
    hot paths do a dict lookup and a few integer comparisons per day they cross.
    """

    __slots__ = ("_always", "_day_cache", "_extra", "_holiday_years", "_json", "_tz", "_weekly", "spec")

    def __init__(self, spec: CalendarSpec) -> None:
        self.spec = spec
        self._json = spec.as_json()
        self._always = spec.kind == "24x7"
        self._tz = ZoneInfo(spec.time_zone)
        self._weekly: tuple[tuple[tuple[int, int], ...], ...] = tuple(
            tuple((_seconds(i.start), _seconds(i.end)) for i in spec.weekly.day(wd)) for wd in range(7)
        )
        self._extra = frozenset(spec.extra_holidays)
        self._holiday_years: dict[int, frozenset[date]] = {}
        self._day_cache: dict[int, tuple[tuple[int, int], ...]] = {}

    @classmethod
    def always(cls) -> BusinessCalendar:
        """The 24x7 calendar: business time is elapsed time, no holidays."""
        return cls(CalendarSpec(kind="24x7"))

    @property
    def time_zone(self) -> str:
        return self.spec.time_zone

    @property
    def is_24x7(self) -> bool:
        return self._always

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BusinessCalendar) and self._json == other._json

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        return f"BusinessCalendar({self._json})"

    # ------------------------------------------------------------------ queries

    def is_holiday(self, day: date) -> bool:
        """True when `day` (a local date) is a public holiday or an extra day off."""
        if self._always:
            return False
        if day in self._extra:
            return True
        source = self.spec.holidays
        if source is None:
            return False
        year = self._holiday_years.get(day.year)
        if year is None:
            found = holiday_data.country_holidays(source.country, subdiv=source.subdivision, years=day.year)
            year = self._holiday_years[day.year] = frozenset(found)
        return day in year

    def is_working(self, t: datetime) -> bool:
        """True when `t` is business time (a working interval's start is, its end is not)."""
        _require_aware(t, "t")
        if self._always:
            return True
        u = _us(t)
        first = t.astimezone(self._tz).toordinal()
        # Day L+1 too: after a fall-back across midnight, an instant can read as the day before.
        return any(s <= u < e for ordinal in (first, first + 1) for s, e in self._day(ordinal))

    def next_working_instant(self, t: datetime) -> datetime:
        """The earliest business instant at or after `t` (`t` itself when it is working), in UTC."""
        _require_aware(t, "t")
        if self._always:
            return t.astimezone(UTC)
        u = _us(t)
        for s, e in self._intervals_from(t):
            if e > u:
                return _utc(max(s, u))
        raise AssertionError("unreachable: _intervals_from never ends")  # pragma: no cover

    def working_intervals(self, a: datetime, b: datetime) -> list[tuple[datetime, datetime]]:
        """The business time in [a, b) as UTC (start, end) pairs, in order, clipped to [a, b).

        Working time that runs on without a break (over midnight, say) is one pair.
        """
        _require_aware(a, "a")
        _require_aware(b, "b")
        ua, ub = _us(a), _us(b)
        if ub <= ua:
            return []
        if self._always:
            return [(_utc(ua), _utc(ub))]
        spans: list[tuple[int, int]] = []
        for s, e in self._intervals_from(a):
            if s >= ub:
                break
            if e <= ua:
                continue
            s, e = max(s, ua), min(e, ub)
            if spans and spans[-1][1] == s:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
        return [(_utc(s), _utc(e)) for s, e in spans]

    def add_business_time(self, start: datetime, duration: timedelta) -> datetime:
        """The earliest instant by which `duration` of business time has elapsed since `start`, in UTC.

        A zero duration returns `start` (even outside working time); otherwise the result is
        working time or the end of a working interval. A negative duration is a ValueError.
        """
        _require_aware(start, "start")
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        if self._always:
            return start.astimezone(UTC) + duration  # in UTC: aware local arithmetic is wall-clock
        t = _us(start)
        remaining = duration // _US
        if remaining == 0:
            return start.astimezone(UTC)
        for s, e in self._intervals_from(start):
            if e <= t:
                continue
            begin = s if s > t else t
            if remaining <= e - begin:
                return _utc(begin + remaining)
            remaining -= e - begin
        raise AssertionError("unreachable: _intervals_from never ends")  # pragma: no cover

    def business_time_between(self, a: datetime, b: datetime) -> timedelta:
        """The business time in [a, b); timedelta(0) when b <= a."""
        _require_aware(a, "a")
        _require_aware(b, "b")
        # In integers: Python compares and subtracts two datetimes of one tzinfo by wall clock.
        ua, ub = _us(a), _us(b)
        if ub <= ua:
            return timedelta(0)
        if self._always:
            return timedelta(microseconds=ub - ua)
        total = 0
        for s, e in self._intervals_from(a):
            if s >= ub:
                break
            if e > ua:
                total += min(e, ub) - max(s, ua)
        return timedelta(microseconds=total)

    # ------------------------------------------------------------------ internals

    def _intervals_from(self, t: datetime) -> Iterable[tuple[int, int]]:
        """Working intervals (UTC microseconds) in order, from the local day of `t` on, forever.

        Intervals of earlier days all end before `t`; callers skip the few of this day that do.
        """
        ordinal = t.astimezone(self._tz).toordinal()
        idle = 0
        while True:
            day = self._day(ordinal)
            if day:
                idle = 0
                yield from day
            else:
                idle += 1
                if idle > _MAX_IDLE_DAYS:
                    raise ValueError(f"calendar has no working time in the {_MAX_IDLE_DAYS} days after {t}")
            ordinal += 1

    def _day(self, ordinal: int) -> tuple[tuple[int, int], ...]:
        got = self._day_cache.get(ordinal)
        if got is None:
            got = self._compute_day(date.fromordinal(ordinal))
            if len(self._day_cache) >= _DAY_CACHE_MAX:
                self._day_cache.clear()
            self._day_cache[ordinal] = got
        return got

    def _compute_day(self, day: date) -> tuple[tuple[int, int], ...]:
        spans = self._weekly[day.weekday()]
        if not spans or self.is_holiday(day):
            return ()
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            s, e = self._wall_to_us(day, start), self._wall_to_us(day, end)
            if s >= e:  # wholly inside a skipped hour
                continue
            if merged and s <= merged[-1][1]:  # touching in wall time, or joined by a transition
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        return tuple(merged)

    def _wall_to_us(self, day: date, seconds: int) -> int:
        """The first instant at which the local clock shows `day` at `seconds` or later."""
        if seconds == _DAY_SECONDS:
            day, seconds = day + timedelta(days=1), 0
        naive = datetime.combine(day, time(seconds // 3600, seconds // 60 % 60, seconds % 60))
        u0 = _us(naive.replace(tzinfo=self._tz))
        u1 = _us(naive.replace(tzinfo=self._tz, fold=1))
        if u0 == u1:
            return u0
        lo, hi = min(u0, u1), max(u0, u1)
        if self._local(lo) == naive:  # a repeated time: its first occurrence
            return lo
        # A skipped time: the transition, i.e. the first instant whose local time is past it.
        # The local clock rises over [lo, hi] except for the jump, so a bisection finds it.
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._local(mid) >= naive:
                hi = mid
            else:
                lo = mid
        return hi

    def _local(self, us: int) -> datetime:
        return _utc(us).astimezone(self._tz).replace(tzinfo=None)


ALWAYS = BusinessCalendar.always()
"""The 24x7 calendar (elapsed UTC time)."""


def business_hours(
    time_zone: str = "UTC",
    *,
    days: Iterable[Weekday] = MONDAY_TO_FRIDAY,
    start: str = "09:00",
    end: str = "17:00",
    country: str | None = None,
    subdivision: str | None = None,
    extra_holidays: Iterable[date] = (),
) -> BusinessCalendar:
    """The same hours on each of `days`, with a country's holidays when given; raises CalendarSpecError."""
    interval = {"start": start, "end": end}
    return CalendarSpec.parse(
        {
            "kind": "business_hours",
            "time_zone": time_zone,
            "weekly": {day: [interval] for day in days},
            "holidays": None if country is None else {"country": country, "subdivision": subdivision},
            "extra_holidays": list(extra_holidays),
        }
    ).build()
