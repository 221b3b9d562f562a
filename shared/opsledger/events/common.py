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
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class Link(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    href: str = Field(max_length=2048)
    text: str | None = Field(default=None, max_length=500)
