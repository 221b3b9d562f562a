"""SLA policies, pure: the defaults of a fresh install, validation of a candidate (every fault named
by its field), and the compiled policy the clocks are started under (rule lookup per priority,
category and service; calendars built once per distinct calendar).

A policy's body is what `SlaPolicyChanged` carries: `{"rules": [SlaPolicyRule...]}`. The event's
calendar (`SlaCalendar`) is converted to the platform's `CalendarSpec`; working hours ending at
00:00 end at midnight (24:00), which `datetime.time` cannot write."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from typing import Any

from pydantic import ValidationError

from opsledger.calendar import BusinessCalendar, CalendarSpec, CalendarSpecError
from opsledger.events.common import Weekday
from opsledger.events.sla import SlaCalendar, SlaPolicyRule, WorkingHours

PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
HOUR = 3600
BUSINESS_DAY = 8 * HOUR  # one working day of the default calendar (09:00-17:00)

_DAY_NAMES: dict[Weekday, str] = {
    Weekday.MONDAY: "monday",
    Weekday.TUESDAY: "tuesday",
    Weekday.WEDNESDAY: "wednesday",
    Weekday.THURSDAY: "thursday",
    Weekday.FRIDAY: "friday",
    Weekday.SATURDAY: "saturday",
    Weekday.SUNDAY: "sunday",
}
# CalendarSpec's fields -> the SlaCalendar field an error is reported under.
_CALENDAR_FIELDS = {
    "time_zone": "time_zone",
    "weekly": "working_hours",
    "holidays": "holidays_country",
    "extra_holidays": "extra_holidays",
    "kind": "twenty_four_seven",
}


class PolicyError(ValueError):
    """An invalid policy; `errors` lists (field, message) pairs, fields relative to the body."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"field '{where}': {message}" for where, message in errors))


def default_rules() -> list[SlaPolicyRule]:
    """In force on a fresh install: P1/P2 24x7, P3-P5 in business hours (Mon-Fri 09:00-17:00 UTC)."""
    office = SlaCalendar(
        twenty_four_seven=False,
        time_zone="UTC",
        working_hours=[
            WorkingHours(
                days=[Weekday.MONDAY, Weekday.TUESDAY, Weekday.WEDNESDAY, Weekday.THURSDAY, Weekday.FRIDAY],
                start=time(9, 0),
                end=time(17, 0),
            )
        ],
    )
    always = SlaCalendar()
    return [
        SlaPolicyRule(priority="P1", response_seconds=15 * 60, resolution_seconds=4 * HOUR, calendar=always),
        SlaPolicyRule(priority="P2", response_seconds=30 * 60, resolution_seconds=8 * HOUR, calendar=always),
        SlaPolicyRule(priority="P3", response_seconds=4 * HOUR, resolution_seconds=3 * BUSINESS_DAY, calendar=office),
        SlaPolicyRule(
            priority="P4", response_seconds=BUSINESS_DAY, resolution_seconds=5 * BUSINESS_DAY, calendar=office
        ),
        SlaPolicyRule(
            priority="P5", response_seconds=2 * BUSINESS_DAY, resolution_seconds=10 * BUSINESS_DAY, calendar=office
        ),
    ]


def default_body() -> dict[str, Any]:
    """The defaults as a PUT body (and as stored)."""
    return {"rules": [r.model_dump(mode="json") for r in default_rules()]}


def _hhmm(t: time, end: bool) -> str:
    if end and t == time(0, 0):
        return "24:00"
    return f"{t.hour:02d}:{t.minute:02d}"


def calendar_spec(calendar: SlaCalendar) -> CalendarSpec:
    """The platform calendar of an SLA calendar; raises PolicyError (fields relative to the calendar)."""
    errors: list[tuple[str, str]] = []
    for i, hours in enumerate(calendar.working_hours):
        for name, value in (("start", hours.start), ("end", hours.end)):
            if value.second or value.microsecond:
                errors.append((f"working_hours.{i}.{name}", "working hours are whole minutes (HH:MM)"))
    if calendar.twenty_four_seven:
        if calendar.working_hours:
            errors.append(("working_hours", "a 24x7 calendar has no working hours (set twenty_four_seven false)"))
        if calendar.holidays_country or calendar.extra_holidays:
            errors.append(("holidays_country", "a 24x7 calendar has no holidays (set twenty_four_seven false)"))
        if errors:
            raise PolicyError(errors)
        try:
            return CalendarSpec.parse({"kind": "24x7", "time_zone": calendar.time_zone})
        except CalendarSpecError as exc:
            raise PolicyError([_calendar_field(f, m) for f, m in exc.errors]) from None
    weekly: dict[str, list[dict[str, str]]] = {}
    for hours in calendar.working_hours:
        for day in hours.days:
            weekly.setdefault(_DAY_NAMES[day], []).append(
                {"start": _hhmm(hours.start, False), "end": _hhmm(hours.end, True)}
            )
    if errors:
        raise PolicyError(errors)
    holidays = (
        None
        if calendar.holidays_country is None
        else {"country": calendar.holidays_country, "subdivision": calendar.holidays_subdivision}
    )
    try:
        return CalendarSpec.parse(
            {
                "kind": "business_hours",
                "time_zone": calendar.time_zone,
                "weekly": weekly,
                "holidays": holidays,
                "extra_holidays": list(calendar.extra_holidays),
            }
        )
    except CalendarSpecError as exc:
        raise PolicyError([_calendar_field(f, m) for f, m in exc.errors]) from None


def _calendar_field(where: str, message: str) -> tuple[str, str]:
    head, _, _ = where.partition(".")
    if where == "holidays.subdivision":
        return "holidays_subdivision", message
    return _CALENDAR_FIELDS.get(head, head or "calendar"), message


@functools.lru_cache(maxsize=256)
def calendar_of(spec_json: str) -> BusinessCalendar:
    """The calendar of a stored spec, built once per distinct spec (it caches its days)."""
    return CalendarSpec.from_json(spec_json).build()


@dataclass(frozen=True)
class Rule:
    """One compiled rule: targets and the calendar they count in."""

    index: int
    priority: str
    category: str | None
    service: str | None
    response_seconds: int
    resolution_seconds: int
    calendar: str  # CalendarSpec JSON
    warning_percents: tuple[int, ...]

    @property
    def business_hours(self) -> bool:
        return not calendar_of(self.calendar).is_24x7

    def specificity(self) -> int:
        return (self.category is not None) + (self.service is not None)

    def matches(self, priority: str, category: str | None, service: str | None) -> bool:
        return (
            self.priority == priority
            and (self.category is None or _same(self.category, category))
            and (self.service is None or _same(self.service, service))
        )


def _same(a: str, b: str | None) -> bool:
    return b is not None and a.casefold() == b.casefold()


@dataclass(frozen=True)
class Policy:
    """A policy version, compiled."""

    version: int
    rules: tuple[Rule, ...]

    def rule_for(self, priority: str, category: str | None, service: str | None) -> Rule | None:
        """The narrowest matching rule (category and service > one of them > neither; ties: first)."""
        best: Rule | None = None
        for rule in self.rules:
            if rule.matches(priority, category, service) and (best is None or rule.specificity() > best.specificity()):
                best = rule
        return best


def parse_rules(raw: Sequence[Mapping[str, Any] | SlaPolicyRule]) -> list[SlaPolicyRule]:
    """Validate raw rules; raises PolicyError naming `rules.<i>.<field>`."""
    rules, errors = [], []
    for i, item in enumerate(raw):
        try:
            rules.append(item if isinstance(item, SlaPolicyRule) else SlaPolicyRule.model_validate(item))
        except ValidationError as exc:
            for e in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(p) for p in ("rules", i, *e["loc"]))
                errors.append((where, e["msg"].removeprefix("Value error, ")))
    if errors:
        raise PolicyError(errors)
    return rules


def build_policy(version: int, raw: Sequence[Mapping[str, Any] | SlaPolicyRule]) -> Policy:
    """Validate and compile; raises PolicyError naming every field at fault."""
    rules = parse_rules(raw)
    errors: list[tuple[str, str]] = []
    compiled: list[Rule] = []
    seen: dict[tuple[str, str | None, str | None], int] = {}
    if not rules:
        raise PolicyError([("rules", "a policy needs a rule for each of P1..P5")])
    for i, rule in enumerate(rules):
        where = f"rules.{i}"
        key = (rule.priority, _fold(rule.category), _fold(rule.service))
        if key in seen:
            errors.append((where, f"the same priority, category and service as rule {seen[key]}"))
        seen.setdefault(key, i)
        if sorted(set(rule.warning_percents)) != list(rule.warning_percents):
            errors.append((f"{where}.warning_percents", "thresholds are distinct and in increasing order"))
        if rule.category is not None and not rule.category.strip():
            errors.append((f"{where}.category", "empty: leave it out to match every category"))
        if rule.service is not None and not rule.service.strip():
            errors.append((f"{where}.service", "empty: leave it out to match every service"))
        try:
            spec = calendar_spec(rule.calendar)
        except PolicyError as exc:
            errors.extend((f"{where}.calendar.{f}", m) for f, m in exc.errors)
            continue
        compiled.append(
            Rule(
                index=i,
                priority=rule.priority,
                category=rule.category,
                service=rule.service,
                response_seconds=rule.response_seconds,
                resolution_seconds=rule.resolution_seconds,
                calendar=spec.as_json(),
                warning_percents=tuple(rule.warning_percents),
            )
        )
    covered = {r.priority for r in rules if r.category is None and r.service is None}
    missing = [p for p in PRIORITIES if p not in covered]
    if missing:
        errors.append(
            ("rules", f"no rule without category and service for {', '.join(missing)}: every priority needs a target")
        )
    if errors:
        raise PolicyError(errors)
    return Policy(version=version, rules=tuple(compiled))


def _fold(text: str | None) -> str | None:
    return None if text is None else text.casefold()


DEFAULT_POLICY = build_policy(1, default_rules())
