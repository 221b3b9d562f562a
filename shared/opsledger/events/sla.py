"""Events produced by the SLA service (response and resolution clocks, warnings, breaches). Every
clock event names its target, the target's duration, its due time and the policy version it was
computed under, so "why was this due then?" is answered by the event alone."""

from __future__ import annotations

import enum
from datetime import date, datetime, time
from typing import Annotated, Self

from pydantic import Field, model_validator

from opsledger.events.common import SlaTargetKind, Weekday
from opsledger.events.registry import EventPayload, Stream, event

Priority = Annotated[str, Field(pattern=r"^P[1-5]$")]
Percent = Annotated[int, Field(gt=0, lt=100)]


class SlaClock(EventPayload):
    """What every clock event carries (not an event itself)."""

    target: SlaTargetKind
    target_seconds: int = Field(gt=0)  # the target's duration, in business time of its calendar
    due_at: datetime  # when the target falls due (moves when the clock pauses)
    policy_version: int = Field(ge=1)
    priority: Priority | None = None  # the priority the target is for
    business_hours: bool = False  # False: the target counts 24x7


@event("SlaClockStarted", 1, Stream.INCIDENTS)
class SlaClockStarted(SlaClock):
    """A target's clock started (on prioritization, or re-targeted on a priority change), counted
    from `counted_from` (the incident's logging)."""

    counted_from: datetime
    retargeted: bool = False  # replaces a clock of the same target (an SlaCancelled precedes it)


@event("SlaClockPaused", 1, Stream.INCIDENTS)
class SlaClockPaused(SlaClock):
    """A target's clock stopped counting while the incident is on hold."""

    elapsed_seconds: int = Field(ge=0)  # business time counted so far
    reason: str | None = Field(default=None, max_length=200)  # the hold's reason code


@event("SlaClockResumed", 1, Stream.INCIDENTS)
class SlaClockResumed(SlaClock):
    """A paused (or, after a reopen, stopped) target's clock counts again; `due_at` is the new due time."""

    paused_seconds: int = Field(ge=0)  # business time excluded by this pause
    reopened: bool = False  # resumed because the incident was reopened


@event("SlaWarning", 1, Stream.INCIDENTS)
class SlaWarning(SlaClock):
    """A share of a target's time was used up (fired by a durable timer, once per incident, target
    and threshold). `due_at` is the target's due time; the timer fell due at `threshold_at`."""

    threshold_percent: Percent
    threshold_at: datetime  # the timer's due time
    fired_at: datetime

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.threshold_at > self.due_at:
            raise ValueError("field 'threshold_at': a warning falls due before its target")
        return self


@event("SlaBreached", 1, Stream.INCIDENTS)
class SlaBreached(SlaClock):
    """A target was missed (fired by a durable timer at `due_at`, once per incident and target)."""

    fired_at: datetime


@event("SlaMet", 1, Stream.INCIDENTS)
class SlaMet(SlaClock):
    """A target was met in time (the response target at acknowledgement, resolution at resolution)."""

    met_at: datetime
    elapsed_seconds: int = Field(ge=0)  # business time it took, pauses excluded


class SlaCancelReason(enum.StrEnum):
    """Why a clock stopped without being met or breached."""

    RETARGETED = "retargeted"  # the priority changed; an SlaClockStarted with the new target follows
    NOT_APPLICABLE = "not_applicable"  # e.g. closed without resolution, or no target for the new priority
    OTHER = "other"


@event("SlaCancelled", 1, Stream.INCIDENTS)
class SlaCancelled(SlaClock):
    """A target's clock was withdrawn; a breach already recorded stays in the record."""

    reason: SlaCancelReason
    detail: str | None = Field(default=None, max_length=2000)
    was_breached: bool = False


# --- configuration ------------------------------------------------------------------------------


class WorkingHours(EventPayload):
    """Working time on these weekdays, local to the calendar's time zone."""

    days: list[Weekday] = Field(min_length=1, max_length=7)
    start: time
    end: time


class SlaCalendar(EventPayload):
    """When SLA time counts: always (24x7), or working hours minus holidays in a time zone."""

    twenty_four_seven: bool = True
    time_zone: str = Field(default="UTC", min_length=1, max_length=64)  # IANA
    working_hours: list[WorkingHours] = Field(default_factory=list, max_length=14)
    holidays_country: str | None = Field(default=None, min_length=2, max_length=3)  # `holidays` package
    holidays_subdivision: str | None = Field(default=None, max_length=10)
    extra_holidays: list[date] = Field(default_factory=list, max_length=1000)


class SlaPolicyRule(EventPayload):
    """Targets for one priority, optionally narrowed to a category or service (narrower wins)."""

    priority: Priority
    category: str | None = Field(default=None, max_length=200)
    service: str | None = Field(default=None, max_length=200)
    response_seconds: int = Field(gt=0)
    resolution_seconds: int = Field(gt=0)
    calendar: SlaCalendar = Field(default_factory=SlaCalendar)
    warning_percents: list[Percent] = Field(default_factory=lambda: [50, 75], max_length=10)


@event("SlaPolicyChanged", 1, Stream.CONFIG)
class SlaPolicyChanged(EventPayload):
    """The SLA policy (every priority's targets, calendars, warning thresholds) at a new version."""

    version: int = Field(ge=1)
    rules: list[SlaPolicyRule] = Field(min_length=1, max_length=1000)
    comment: str | None = Field(default=None, max_length=2000)
