"""Clock arithmetic, pure: one target's clock counts the business time of its calendar from
`counted_from`, except while paused (on hold, or between a resolution and a reopen), and until it
stops. Every instant (a threshold's, the due time) is found by walking the clock's counting
segments, so paused time is excluded exactly, in the calendar's business time."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from opsledger.calendar import BusinessCalendar
from opsledger.events.common import SlaTargetKind
from sla.policy import calendar_of

Pause = tuple[datetime, datetime | None]  # [start, end); end None: still paused


class ClockState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    WARNED = "warned"
    BREACHED = "breached"
    MET = "met"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Clock:
    """One target's clock, under the policy version and rule it was started with."""

    target: SlaTargetKind
    priority: str
    policy_version: int
    rule: int  # the rule's index in that version
    target_seconds: int
    calendar: str  # CalendarSpec JSON
    warning_percents: tuple[int, ...]
    counted_from: datetime
    pauses: tuple[Pause, ...] = ()
    warned: tuple[int, ...] = ()  # thresholds announced (carried over a re-targeting)
    breached: bool = False  # announced (carried over a re-targeting)
    stopped_at: datetime | None = None  # met (response: acknowledged; resolution: resolved)
    cancelled: bool = False
    retargeted: bool = False

    # ------------------------------------------------------------------ facts

    @property
    def cal(self) -> BusinessCalendar:
        return calendar_of(self.calendar)

    @property
    def business_hours(self) -> bool:
        return not self.cal.is_24x7

    @property
    def target_time(self) -> timedelta:
        return timedelta(seconds=self.target_seconds)

    @property
    def paused(self) -> bool:
        return bool(self.pauses) and self.pauses[-1][1] is None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None or self.cancelled

    @property
    def counting(self) -> bool:
        """Counting now: started, not paused, stopped or cancelled."""
        return not self.stopped and not self.paused

    def state(self) -> ClockState:
        if self.cancelled:
            return ClockState.CANCELLED
        if self.breached:
            return ClockState.BREACHED
        if self.stopped_at is not None:
            return ClockState.MET
        if self.paused:
            return ClockState.PAUSED
        return ClockState.WARNED if self.warned else ClockState.RUNNING

    # ------------------------------------------------------------------ arithmetic

    def segments(self, now: datetime | None = None) -> Iterator[tuple[datetime, datetime | None]]:
        """The intervals in which the clock counts, in order; the last may be open (None). `now`
        ends an open pause and a running clock there (for reading the clock at `now`)."""
        start = self.counted_from
        for p_start, p_end in self.pauses:
            if p_start > start:
                yield start, p_start
            if p_end is None:
                if now is None:
                    return
                p_end = max(now, p_start)
            start = max(start, p_end)
        end = self.stopped_at if self.stopped_at is not None else now
        if end is None or end > start:
            yield start, end

    def elapsed(self, at: datetime) -> timedelta:
        """Business time counted by `at`, pauses excluded."""
        cal, total = self.cal, timedelta(0)
        for s, e in self.segments(now=at):
            if s >= at:
                break
            total += cal.business_time_between(s, at if e is None else min(e, at))
        return total

    def paused_time(self, at: datetime) -> timedelta:
        """Business time excluded by pauses up to `at` (a pause still open counts to `at`)."""
        cal, total = self.cal, timedelta(0)
        for p_start, p_end in self.pauses:
            s = max(p_start, self.counted_from)
            e = min(at, p_end) if p_end is not None else at
            total += cal.business_time_between(s, e)
        return total

    def instant_at(self, business: timedelta, now: datetime | None = None) -> datetime | None:
        """When the clock has counted `business`, given its pauses (and stops ignored: they end a
        clock, they do not move its due time). None while paused before reaching it, unless `now`
        is given (the pause then reads as ending at `now`)."""
        cal, remaining = self.cal, business
        clock = self if self.stopped_at is None else replace(self, stopped_at=None)
        for s, e in clock.segments(now=None):
            if e is None:
                return cal.add_business_time(s, remaining)
            span = cal.business_time_between(s, e)
            if remaining <= span:
                return cal.add_business_time(s, remaining)
            remaining -= span
        if now is None:
            return None
        # Paused: as if it resumed at `now`.
        last = clock.pauses[-1][0]
        return cal.add_business_time(max(now, last), remaining)

    def due_at(self, now: datetime | None = None) -> datetime | None:
        return self.instant_at(self.target_time, now)

    def threshold_time(self, percent: int) -> timedelta:
        # Exact: target seconds x percent / 100, in microseconds.
        return timedelta(microseconds=self.target_seconds * percent * 10_000)

    def threshold_at(self, percent: int, now: datetime | None = None) -> datetime | None:
        return self.instant_at(self.threshold_time(percent), now)

    # ------------------------------------------------------------------ changes

    def pause(self, at: datetime) -> Clock:
        return replace(self, pauses=(*self.pauses, (max(at, self.counted_from), None)))

    def resume(self, at: datetime) -> Clock:
        start, _ = self.pauses[-1]
        return replace(self, pauses=(*self.pauses[:-1], (start, max(at, start))))

    def last_pause_time(self) -> timedelta:
        start, end = self.pauses[-1]
        assert end is not None
        return self.cal.business_time_between(start, end)


@dataclass(frozen=True)
class Hold:
    """An incident's hold, as it applies to clocks started later."""

    start: datetime
    end: datetime | None = None


def pauses_of(holds: tuple[Hold, ...]) -> tuple[Pause, ...]:
    return tuple((h.start, h.end) for h in holds)


@dataclass(frozen=True)
class Reading:
    """A clock read at an instant (for GET /v1/incidents/{id}/sla)."""

    clock: Clock
    at: datetime
    due_at: datetime | None
    elapsed: timedelta
    remaining: timedelta
    paused: timedelta
    state: ClockState


def read(clock: Clock, at: datetime) -> Reading:
    end = min(at, clock.stopped_at) if clock.stopped_at is not None else at
    elapsed = clock.elapsed(end)
    return Reading(
        clock=clock,
        at=at,
        due_at=clock.due_at(now=at),
        elapsed=elapsed,
        remaining=max(clock.target_time - elapsed, timedelta(0)),
        paused=clock.paused_time(end),
        state=clock.state(),
    )
