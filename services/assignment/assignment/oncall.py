"""Who is on call when, in an on-call schedule (pure: no I/O, time is an argument).

A layer's members take turns from its `starts_at` on. Daily and weekly rotations hand off at the
layer's local `handoff_time` in the schedule's IANA zone (weekly: on the weekday of `starts_at`),
so a handoff stays at 09:00 local across DST changes (a day is then 23 h or 25 h); an hourly
rotation hands off every `every_hours` hours of absolute time. A handoff time inside a skipped
hour is the jump, one inside a repeated hour its first occurrence (zoneinfo's fold=0), as in
opsledger.calendar. Restrictions limit a layer to local times; later layers win over earlier
ones where they have someone; overrides win over every layer (the last listed first)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from opsledger.events.assignment import (
    OnCallScheduleChanged,
    RotationKind,
    ScheduleLayer,
    ScheduleOverride,
    TimeRestriction,
)
from opsledger.events.common import PersonRef, Weekday

WEEKDAYS = (
    Weekday.MONDAY,
    Weekday.TUESDAY,
    Weekday.WEDNESDAY,
    Weekday.THURSDAY,
    Weekday.FRIDAY,
    Weekday.SATURDAY,
    Weekday.SUNDAY,
)  # index = date.weekday()
# How far ahead "until when" is looked for; a stretch longer than this reads "until further notice".
HORIZON = timedelta(days=35)
# The longest timeline rendered at once.
MAX_RANGE = timedelta(days=93)


@dataclass(frozen=True)
class OnCall:
    """The person on call at an instant, why (layer or override), and until when (None: beyond
    the horizon looked at)."""

    person: PersonRef
    source: str  # "layer '<name>'" or "override"
    layer: int | None  # index of the layer; None for an override
    until: datetime | None = None


@dataclass(frozen=True)
class Shift:
    """One stretch of the rendered timeline: this person over [start, end)."""

    person: PersonRef
    start: datetime
    end: datetime
    source: str
    layer: int | None


def zone_of(schedule: OnCallScheduleChanged) -> ZoneInfo:
    return ZoneInfo(schedule.time_zone)


def _boundary(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time (fold=0: first occurrence; in a gap, the jump)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _last_handoff_day(layer: ScheduleLayer, zone: ZoneInfo, t: datetime) -> date:
    """The local day of the last handoff at or before `t` (daily and weekly rotations)."""
    day = t.astimezone(zone).date()
    step = 1
    if layer.rotation == RotationKind.WEEKLY:
        step = 7
        weekday = layer.starts_at.astimezone(zone).weekday()
        day -= timedelta(days=(day.weekday() - weekday) % 7)
    if _boundary(day, layer.handoff_time, zone) > t:
        day -= timedelta(days=step)
    return day


def _hours(layer: ScheduleLayer) -> timedelta:
    return timedelta(hours=layer.every_hours or 24)


def turn(layer: ScheduleLayer, zone: ZoneInfo, t: datetime) -> tuple[int, datetime]:
    """The rotation's turn number at `t` (>= starts_at) and when that turn ends."""
    if layer.rotation == RotationKind.HOURLY:
        period = _hours(layer)
        n = (t - layer.starts_at) // period
        return n, layer.starts_at + (n + 1) * period
    step = 7 if layer.rotation == RotationKind.WEEKLY else 1
    now_day = _last_handoff_day(layer, zone, t)
    first_day = _last_handoff_day(layer, zone, layer.starts_at)
    n = (now_day - first_day).days // step
    return n, _boundary(now_day + timedelta(days=step), layer.handoff_time, zone)


def _within(restrictions: Sequence[TimeRestriction], zone: ZoneInfo, t: datetime) -> bool:
    local = t.astimezone(zone)
    today, yesterday = WEEKDAYS[local.weekday()], WEEKDAYS[(local.weekday() - 1) % 7]
    clock = local.time().replace(tzinfo=None)
    for r in restrictions:
        if r.start < r.end:
            if today in r.days and r.start <= clock < r.end:
                return True
        # end <= start wraps past midnight (start == end: a whole day from start).
        elif (today in r.days and clock >= r.start) or (yesterday in r.days and clock < r.end):
            return True
    return False


def layer_zone(layer: ScheduleLayer, schedule_zone: ZoneInfo) -> ZoneInfo:
    """The zone of a layer's handoffs and restrictions: its own, or the schedule's."""
    return ZoneInfo(layer.time_zone) if layer.time_zone else schedule_zone


def who(schedule: OnCallScheduleChanged, t: datetime, zone: ZoneInfo | None = None) -> OnCall | None:
    """Who is on call at `t` (no `until`); None when nobody is."""
    zone = zone or zone_of(schedule)
    for override in reversed(schedule.overrides):
        if override.starts_at <= t < override.ends_at:
            return OnCall(override.person, "override", None)
    for index in range(len(schedule.layers) - 1, -1, -1):
        layer = schedule.layers[index]
        here = layer_zone(layer, zone)
        if t < layer.starts_at or (layer.restrictions and not _within(layer.restrictions, here, t)):
            continue
        n, _ = turn(layer, here, t)
        return OnCall(layer.members[n % len(layer.members)], f"layer '{layer.name}'", index)
    return None


def _layer_changes(layer: ScheduleLayer, zone: ZoneInfo, start: datetime, end: datetime) -> Iterator[datetime]:
    """Instants in (start, end) where this layer's answer may change."""
    if start < layer.starts_at < end:
        yield layer.starts_at
    t = max(start, layer.starts_at)
    while t < end:
        _, t = turn(layer, zone, t)
        if t < end:
            yield t
    if layer.restrictions:
        day = start.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date() + timedelta(days=1)
        while day <= last:
            for r in layer.restrictions:
                if WEEKDAYS[day.weekday()] in r.days:
                    yield _boundary(day, r.start, zone)
                    yield _boundary(day if r.start < r.end else day + timedelta(days=1), r.end, zone)
            day += timedelta(days=1)


def _override_changes(overrides: Sequence[ScheduleOverride]) -> Iterator[datetime]:
    for o in overrides:
        yield o.starts_at
        yield o.ends_at


def shifts(schedule: OnCallScheduleChanged, start: datetime, end: datetime) -> list[Shift]:
    """The timeline over [start, end): consecutive stretches of one person from one source (the
    times nobody is on call are left out)."""
    if end <= start:
        return []
    zone = zone_of(schedule)
    points = {start}
    for layer in schedule.layers:
        points.update(_layer_changes(layer, layer_zone(layer, zone), start, end))
    points.update(_override_changes(schedule.overrides))
    ordered = sorted(p for p in points if start <= p < end)
    result: list[Shift] = []
    current: OnCall | None = None
    since = start
    for p in ordered:
        now = who(schedule, p, zone)
        if _same(now, current):
            continue
        if current is not None:
            result.append(Shift(current.person, since, p, current.source, current.layer))
        current, since = now, p
    if current is not None:
        result.append(Shift(current.person, since, end, current.source, current.layer))
    return result


def _same(a: OnCall | None, b: OnCall | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.person.sub, a.source, a.layer) == (b.person.sub, b.source, b.layer)


# The last answer per schedule (by identity: a compiled configuration keeps one object per
# version): the same for any instant before its `until`, which rendering the timeline for every
# incident assigned cost 7.6 % of the assignment stage's CPU.
_LAST_ANSWER: dict[int, tuple[OnCallScheduleChanged, datetime, OnCall]] = {}
_LAST_ANSWER_LIMIT = 256


def on_call(schedule: OnCallScheduleChanged, t: datetime, horizon: timedelta = HORIZON) -> OnCall | None:
    """Who is on call at `t`, and until when their stretch lasts (None: beyond `horizon`)."""
    last = _LAST_ANSWER.get(id(schedule)) if horizon == HORIZON else None
    if last is not None and last[0] is schedule and last[2].until is not None and last[1] <= t < last[2].until:
        return last[2]
    now = who(schedule, t)
    if now is None:
        return None
    first = shifts(schedule, t, t + horizon)[0]
    answer = OnCall(now.person, now.source, now.layer, first.end if first.end < t + horizon else None)
    if horizon == HORIZON and answer.until is not None:
        if len(_LAST_ANSWER) >= _LAST_ANSWER_LIMIT:
            _LAST_ANSWER.clear()
        _LAST_ANSWER[id(schedule)] = (schedule, t, answer)
    return answer


def describe_until(until: datetime | None) -> str:
    return f"until {until.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if until is not None else "until further notice"
