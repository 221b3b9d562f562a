"""Events produced by the assignment service (teams, on-call, routing, escalation, acknowledgement,
tasks). People are referenced by their token's `sub`; times are UTC."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, time
from typing import Annotated, Self

from pydantic import Field, model_validator

from opsledger.events.common import PersonRef, SlaTargetKind, Weekday
from opsledger.events.registry import EventPayload, Stream, event

Id = Annotated[str, Field(min_length=1, max_length=200)]
REASON_LENGTH = 2000


class AssignmentBasis(enum.StrEnum):
    """What led to an assignment."""

    ROUTING = "routing"  # the routing rules chose the team, the policy's first tier the person
    ESCALATION = "escalation"  # the next tier after an IncidentEscalated
    MANUAL = "manual"  # a manager reassigned it
    REOPEN = "reopen"  # a reopened incident goes back to its last team


class AssigneeChoice(enum.StrEnum):
    """How the person was picked within the team or tier."""

    ON_CALL = "on_call"  # on call in the tier's schedule
    NAMED_PERSON = "named_person"  # the tier names the person
    TEAM_MANAGER = "team_manager"
    LEAST_LOADED = "least_loaded"  # nobody on call: the member with the fewest open incidents
    ROUND_ROBIN = "round_robin"  # a tie among the least loaded
    MANUAL = "manual"
    NOBODY = "nobody"  # assigned to the team only: nobody could be reached


@event("IncidentAssigned", 1, Stream.INCIDENTS)
class IncidentAssigned(EventPayload):
    """The incident was given to a team and (usually) a person, with the rule and tier that chose
    them and a plain-language reason."""

    team_id: Id
    team_name: str | None = Field(default=None, max_length=200)
    assignee: PersonRef | None = None  # None: the team as a whole (nobody reachable)
    escalation_policy_id: str | None = Field(default=None, max_length=200)
    tier: int | None = Field(default=None, ge=0)  # index into the policy's tiers
    repeat: int = Field(default=0, ge=0)  # pass through the policy (a policy may repeat N times)
    routing_rule_id: str | None = Field(default=None, max_length=200)  # None: the default team
    basis: AssignmentBasis = AssignmentBasis.ROUTING
    chosen_by: AssigneeChoice | None = None
    reason: str = Field(min_length=1, max_length=REASON_LENGTH)  # "on call in Platform primary until 09:00 UTC"


class AcknowledgementChannel(enum.StrEnum):
    """Where an acknowledgement came from."""

    API = "api"  # a person, through assignment's API
    INTEGRATION = "integration"  # the alert source (intake's AlertAcknowledged)


@event("IncidentAcknowledged", 1, Stream.INCIDENTS)
class IncidentAcknowledged(EventPayload):
    """Someone took the incident on: a person through the API, or the alert source's integration."""

    via: AcknowledgementChannel
    by: PersonRef | None = None  # the person; required when via is api
    integration_id: str | None = Field(default=None, max_length=200)  # via integration
    assignee: PersonRef | None = None  # who was assigned at the time (may differ from `by`)
    tier: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _who(self) -> Self:
        if self.via is AcknowledgementChannel.API and self.by is None:
            raise ValueError("field 'by': an acknowledgement through the api names the person")
        return self


class EscalationCause(enum.StrEnum):
    """Why an incident moved to the next tier."""

    ACK_TIMEOUT = "ack_timeout"  # the tier's acknowledgement timer fired
    SLA_WARNING = "sla_warning"
    SLA_BREACHED = "sla_breached"
    MANUAL = "manual"  # a manager escalated it


@event("IncidentEscalated", 1, Stream.INCIDENTS)
class IncidentEscalated(EventPayload):
    """The incident moved from one tier of its escalation policy to another (an IncidentAssigned
    follows with the new assignee)."""

    escalation_policy_id: str | None = Field(default=None, max_length=200)
    from_tier: int = Field(ge=0)
    to_tier: int = Field(ge=0)
    repeat: int = Field(default=0, ge=0)  # the policy pass the target tier belongs to
    cause: EscalationCause
    sla_target: SlaTargetKind | None = None  # for sla_warning / sla_breached
    reason: str = Field(min_length=1, max_length=REASON_LENGTH)
    # For timer-caused escalations: when the timer fell due and when it fired. An ack_timeout's
    # timer is assignment's; for SLA causes these are copied from the SLA event.
    due_at: datetime | None = None
    fired_at: datetime | None = None

    @model_validator(mode="after")
    def _timer(self) -> Self:
        if self.cause is EscalationCause.ACK_TIMEOUT and (self.due_at is None or self.fired_at is None):
            raise ValueError("fields 'due_at', 'fired_at': an ack_timeout escalation carries its timer's times")
        return self


class HoldReason(enum.StrEnum):
    """Why work on an incident waits (the SLA stage pauses its clocks meanwhile)."""

    AWAITING_VENDOR = "awaiting_vendor"
    AWAITING_CUSTOMER = "awaiting_customer"
    AWAITING_CHANGE_WINDOW = "awaiting_change_window"
    OTHER = "other"


@event("IncidentPutOnHold", 1, Stream.INCIDENTS)
class IncidentPutOnHold(EventPayload):
    """Work on the incident waits for something outside the team; SLA clocks pause."""

    reason: HoldReason
    note: str | None = Field(default=None, max_length=REASON_LENGTH)
    until: datetime | None = None  # when the wait is expected to end, if known


@event("IncidentResumed", 1, Stream.INCIDENTS)
class IncidentResumed(EventPayload):
    """Work on an incident on hold goes on; SLA clocks resume."""

    reason: HoldReason  # the reason of the hold that ends
    note: str | None = Field(default=None, max_length=REASON_LENGTH)


class TaskPriority(enum.StrEnum):
    """A task's priority; lists order by it, urgent first."""

    URGENT = "urgent"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class TaskStatus(enum.StrEnum):
    """A task's state: open and in_progress are open; done and cancelled are final."""

    OPEN = "open"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


class TaskOrigin(enum.StrEnum):
    """Where a task came from."""

    MANUAL = "manual"
    REVIEW_ACTION_ITEM = "review_action_item"  # an action item of a PostIncidentReviewCompleted


@event("TaskCreated", 1, Stream.INCIDENTS)
class TaskCreated(EventPayload):
    """A piece of work was split off the incident (status open)."""

    task_id: uuid.UUID
    title: str = Field(min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=10000)
    assignee: PersonRef | None = None  # a TaskAssigned follows when the service picks one
    priority: TaskPriority = TaskPriority.MEDIUM
    due_at: datetime | None = None
    required_skills: list[str] = Field(default_factory=list, max_length=20)
    origin: TaskOrigin = TaskOrigin.MANUAL
    review_event_id: uuid.UUID | None = None  # the PostIncidentReviewCompleted it comes from
    action_item_id: str | None = Field(default=None, max_length=200)


@event("TaskAssigned", 1, Stream.INCIDENTS)
class TaskAssigned(EventPayload):
    """A task was given to a person, with how they were chosen."""

    task_id: uuid.UUID
    assignee: PersonRef
    previous_assignee: PersonRef | None = None
    chosen_by: AssigneeChoice
    reason: str = Field(min_length=1, max_length=REASON_LENGTH)


@event("TaskStatusChanged", 1, Stream.INCIDENTS)
class TaskStatusChanged(EventPayload):
    """A task moved from one status to another."""

    task_id: uuid.UUID
    status: TaskStatus
    previous_status: TaskStatus
    note: str | None = Field(default=None, max_length=REASON_LENGTH)


@event("TaskOverdue", 1, Stream.INCIDENTS)
class TaskOverdue(EventPayload):
    """A task's due time passed while it was still open (the reminder, fired by a durable timer)."""

    task_id: uuid.UUID
    assignee: PersonRef | None = None
    due_at: datetime
    fired_at: datetime


# --- configuration (Stream.CONFIG, keyed by the object's id) -------------------------------------


class TeamMember(EventPayload):
    """A member of a team, with the skills tasks can ask for."""

    person: PersonRef
    skills: list[str] = Field(default_factory=list, max_length=50)


@event("TeamChanged", 1, Stream.CONFIG)
class TeamChanged(EventPayload):
    """A team's full definition at a new version."""

    team_id: Id
    version: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    members: list[TeamMember] = Field(default_factory=list, max_length=1000)
    manager: PersonRef | None = None
    escalation_policy_id: str | None = Field(default=None, max_length=200)  # the team's default
    comment: str | None = Field(default=None, max_length=REASON_LENGTH)


class TimeRestriction(EventPayload):
    """A layer covers only these local times (e.g. weekdays 09:00-17:00); end before start wraps
    past midnight."""

    days: list[Weekday] = Field(min_length=1, max_length=7)
    start: time
    end: time


class RotationKind(enum.StrEnum):
    """How often a layer hands off to its next member."""

    DAILY = "daily"
    WEEKLY = "weekly"
    HOURLY = "hourly"  # every `every_hours` hours


class ScheduleLayer(EventPayload):
    """One rotation of a schedule: members take turns from `starts_at` on, handing off at the
    layer's local handoff time. Later layers override earlier ones where they have someone."""

    name: str = Field(min_length=1, max_length=200)
    members: list[PersonRef] = Field(min_length=1, max_length=1000)
    rotation: RotationKind
    every_hours: int | None = Field(default=None, ge=1, le=24 * 28)  # for hourly rotations
    handoff_time: time = time(9, 0)
    starts_at: datetime  # the rotation's anchor: the first member's first shift begins here
    restrictions: list[TimeRestriction] = Field(default_factory=list, max_length=50)
    # The IANA zone of this layer's handoff time and restrictions (a follow-the-sun layer in
    # Asia/Tokyo beside one in Europe/Berlin); None: the schedule's zone.
    time_zone: str | None = Field(default=None, min_length=1, max_length=64)


class ScheduleOverride(EventPayload):
    """This person is on call over [starts_at, ends_at), whatever the layers say."""

    person: PersonRef
    starts_at: datetime
    ends_at: datetime


@event("OnCallScheduleChanged", 1, Stream.CONFIG)
class OnCallScheduleChanged(EventPayload):
    """An on-call schedule's full definition (layers and overrides) at a new version."""

    schedule_id: Id
    version: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    team_id: str | None = Field(default=None, max_length=200)
    time_zone: str = Field(min_length=1, max_length=64)  # IANA, e.g. Europe/Berlin
    layers: list[ScheduleLayer] = Field(min_length=1, max_length=50)
    overrides: list[ScheduleOverride] = Field(default_factory=list, max_length=1000)
    comment: str | None = Field(default=None, max_length=REASON_LENGTH)


class EscalationTargetKind(enum.StrEnum):
    """What an escalation target names."""

    SCHEDULE = "schedule"  # whoever is on call in the schedule
    PERSON = "person"
    TEAM_MANAGER = "team_manager"


class EscalationTarget(EventPayload):
    """Who a tier notifies: a schedule's on-call, a named person, or the team's manager."""

    kind: EscalationTargetKind
    schedule_id: str | None = Field(default=None, max_length=200)
    person: PersonRef | None = None


class EscalationTier(EventPayload):
    """One step of a policy: its targets, and how long they have to acknowledge."""

    targets: list[EscalationTarget] = Field(min_length=1, max_length=20)
    ack_timeout_seconds: int = Field(gt=0, le=7 * 24 * 3600)


@event("EscalationPolicyChanged", 1, Stream.CONFIG)
class EscalationPolicyChanged(EventPayload):
    """An escalation policy's full definition (ordered tiers) at a new version."""

    policy_id: Id
    version: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=200)
    team_id: str | None = Field(default=None, max_length=200)
    tiers: list[EscalationTier] = Field(min_length=1, max_length=20)
    repeat: int = Field(default=0, ge=0, le=10)  # passes through the tiers after the first
    comment: str | None = Field(default=None, max_length=REASON_LENGTH)


class RoutingMatch(EventPayload):
    """What an incident must have for a rule to match; unset fields match anything, lists any of."""

    categories: list[str] = Field(default_factory=list, max_length=100)
    subcategories: list[str] = Field(default_factory=list, max_length=100)
    services: list[str] = Field(default_factory=list, max_length=100)
    environments: list[str] = Field(default_factory=list, max_length=100)
    priorities: list[str] = Field(default_factory=list, max_length=5)
    labels: dict[str, str] = Field(default_factory=dict)  # every label must be equal


class RoutingRule(EventPayload):
    """One routing rule: the first matching rule, in order, names the team."""

    rule_id: Id
    name: str | None = Field(default=None, max_length=200)
    match: RoutingMatch
    team_id: Id
    escalation_policy_id: str | None = Field(default=None, max_length=200)  # None: the team's default


@event("RoutingRulesChanged", 1, Stream.CONFIG)
class RoutingRulesChanged(EventPayload):
    """The routing rules (ordered) and the default team, as a whole, at a new version."""

    version: int = Field(ge=1)
    rules: list[RoutingRule] = Field(default_factory=list, max_length=1000)
    default_team_id: str | None = Field(default=None, max_length=200)
    comment: str | None = Field(default=None, max_length=REASON_LENGTH)
