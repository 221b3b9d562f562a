"""Value types used by several services' events."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class Severity(enum.StrEnum):
    """OpsLedger's one severity scale; every source format is mapped onto it by intake."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class ImpactLevel(enum.StrEnum):
    """Business impact as a reporter states it."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Person(BaseModel):
    """A reporter as they named themselves (no verified identity: see PersonRef for people by `sub`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class Link(BaseModel):
    """A link that came with an alert or report (runbook, dashboard, source)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    href: str = Field(max_length=2048)
    text: str | None = Field(default=None, max_length=500)


class PersonRef(BaseModel):
    """A person, by the `sub` of their token (as an actor: `user:<sub>`), with the name and email
    known when the event was written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sub: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class SlaTargetKind(enum.StrEnum):
    """The two SLA targets: response (until acknowledged) and resolution (until resolved)."""

    RESPONSE = "response"
    RESOLUTION = "resolution"


class Weekday(enum.StrEnum):
    """A day of the week, in the local time of a schedule or calendar."""

    MONDAY = "mon"
    TUESDAY = "tue"
    WEDNESDAY = "wed"
    THURSDAY = "thu"
    FRIDAY = "fri"
    SATURDAY = "sat"
    SUNDAY = "sun"
