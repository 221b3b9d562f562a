"""Events produced by the resolution service (resolve, close, reopen, post-incident review, status
updates, subscriptions). People are referenced by their token's `sub`; times are UTC."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Annotated, Self

from pydantic import Field, model_validator

from opsledger.events.common import PersonRef
from opsledger.events.intake import AlertCorrelated
from opsledger.events.registry import EventPayload, Stream, event

Text = Annotated[str, Field(min_length=1, max_length=20000)]
Item = Annotated[str, Field(min_length=1, max_length=2000)]


class ResolutionCode(enum.StrEnum):
    """How an incident was resolved."""

    FIXED = "fixed"
    WORKAROUND = "workaround"
    NO_FAULT_FOUND = "no_fault_found"
    DUPLICATE = "duplicate"  # of `duplicate_of`
    CAUSED_BY_CHANGE = "caused_by_change"
    OTHER = "other"


@event("IncidentResolved", 1, Stream.INCIDENTS)
class IncidentResolved(EventPayload):
    """Service is restored: by a person with a resolution code and root cause, or automatically when
    every correlated alert resolved at its source."""

    code: ResolutionCode
    duplicate_of: uuid.UUID | None = None  # the incident this one duplicates (code duplicate)
    root_cause: Text | None = None
    steps_taken: Text | None = None
    change_ref: str | None = Field(default=None, max_length=200)  # the change behind it (caused_by_change)
    auto: bool = False  # resolved because the source's alerts resolved (AlertResolved)
    resolved_by: PersonRef | None = None  # None when auto

    @model_validator(mode="after")
    def _duplicate(self) -> Self:
        if (self.code is ResolutionCode.DUPLICATE) != (self.duplicate_of is not None):
            raise ValueError("field 'duplicate_of': required with code duplicate, and only then")
        return self


class ClosureCode(enum.StrEnum):
    """How an incident was closed."""

    RESOLVED = "resolved"  # the usual end: resolved, and the fix held
    DUPLICATE = "duplicate"
    FALSE_ALARM = "false_alarm"
    CANCELLED = "cancelled"
    OTHER = "other"


@event("IncidentClosed", 1, Stream.INCIDENTS)
class IncidentClosed(EventPayload):
    """The incident is over for good: by a person, or automatically some time after resolution (a
    durable timer: then with its `due_at` and `fired_at`)."""

    code: ClosureCode
    auto: bool = False
    note: str | None = Field(default=None, max_length=2000)
    closed_by: PersonRef | None = None  # None when auto
    due_at: datetime | None = None
    fired_at: datetime | None = None


class ReopenKind(enum.StrEnum):
    """Who or what reopened an incident."""

    ALERT_REFIRED = "alert_refired"
    PERSON = "person"


class ReopenTrigger(EventPayload):
    """What reopened an incident: its alert firing again at the source, or a person."""

    kind: ReopenKind
    person: PersonRef | None = None  # kind person
    dedup_key: str | None = Field(default=None, max_length=500)  # kind alert_refired

    @model_validator(mode="after")
    def _who(self) -> Self:
        if self.kind is ReopenKind.PERSON and self.person is None:
            raise ValueError("field 'person': a reopen by a person names them")
        return self


@event("IncidentReopened", 1, Stream.INCIDENTS)
class IncidentReopened(EventPayload):
    """A resolved incident is open again (within the reopen window): the fix did not hold."""

    reason: str = Field(min_length=1, max_length=2000)
    by: ReopenTrigger


class ActionItem(EventPayload):
    """Follow-up work a review asks for; the assignment stage turns each into a task."""

    item_id: str = Field(min_length=1, max_length=200)  # unique within the review
    title: str = Field(min_length=1, max_length=300)
    owner: PersonRef
    due: date | None = None


class ReviewTimelineEntry(EventPayload):
    """A step of the incident as the review tells it, pointing at the event behind it."""

    event_id: uuid.UUID
    at: datetime
    text: str = Field(min_length=1, max_length=2000)


@event("CorrelationRefused", 1, Stream.INCIDENTS)
class CorrelationRefused(EventPayload):
    """Intake attached an alert to this incident (AlertCorrelated), which can no longer take it:
    it is closed, or resolved and past its reopen window. Intake learns of a closure from this
    stage's events, so an alert that came in meanwhile was attached all the same; it belongs to a
    new incident, which intake opens on this event."""

    reason: str = Field(min_length=1, max_length=2000)
    alert: AlertCorrelated  # as intake attached it


@event("PostIncidentReviewCompleted", 1, Stream.INCIDENTS)
class PostIncidentReviewCompleted(EventPayload):
    """A manager approved the incident's post-incident review; its action items become tasks."""

    review_id: str = Field(min_length=1, max_length=200)
    summary: Text
    impact: Text  # customer and business impact
    root_cause: Text
    contributing_factors: list[Item] = Field(default_factory=list, max_length=100)
    went_well: list[Item] = Field(default_factory=list, max_length=100)
    to_improve: list[Item] = Field(default_factory=list, max_length=100)
    action_items: list[ActionItem] = Field(default_factory=list, max_length=200)
    timeline: list[ReviewTimelineEntry] = Field(default_factory=list, max_length=1000)
    time_to_acknowledge_seconds: float | None = Field(default=None, ge=0)
    time_to_resolve_seconds: float | None = Field(default=None, ge=0)
    approved_by: PersonRef


class Audience(enum.StrEnum):
    """Who a status update is for."""

    RESPONDERS = "responders"
    STAKEHOLDERS = "stakeholders"


@event("IncidentStatusUpdated", 1, Stream.INCIDENTS)
class IncidentStatusUpdated(EventPayload):
    """Someone told responders or stakeholders where the incident stands."""

    audience: Audience
    message: str = Field(min_length=1, max_length=5000)


# --- configuration ------------------------------------------------------------------------------


class ChannelKind(enum.StrEnum):
    """How a subscription is delivered."""

    EMAIL = "email"
    WEBHOOK = "webhook"  # generic JSON body, HMAC-SHA256 signed
    SLACK_WEBHOOK = "slack_webhook"  # Slack-compatible body


class SubscriptionFilter(EventPayload):
    """Which incident events a subscription hears about; an empty list matches anything."""

    event_types: list[str] = Field(default_factory=list, max_length=100)
    teams: list[str] = Field(default_factory=list, max_length=100)
    services: list[str] = Field(default_factory=list, max_length=100)
    priorities: list[str] = Field(default_factory=list, max_length=5)
    audiences: list[Audience] = Field(default_factory=list, max_length=2)  # for IncidentStatusUpdated
    assignee_only: bool = False  # deliver to the incident's assignee instead of `target` (paging)


@event("SubscriptionChanged", 1, Stream.CONFIG)
class SubscriptionChanged(EventPayload):
    """A subscription's full definition at a new version (created when version is 1). Secrets such
    as a webhook's signing key never travel on the log."""

    subscription_id: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1)
    name: str | None = Field(default=None, max_length=200)
    channel: ChannelKind
    target: str = Field(min_length=1, max_length=2048)  # an email address or a webhook URL
    filters: SubscriptionFilter = Field(default_factory=SubscriptionFilter)
    enabled: bool = True
    comment: str | None = Field(default=None, max_length=2000)


@event("SubscriptionDeleted", 1, Stream.CONFIG)
class SubscriptionDeleted(EventPayload):
    """A subscription was removed; nothing more is delivered for it."""

    subscription_id: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1)  # the version it had when deleted
    reason: str | None = Field(default=None, max_length=2000)
