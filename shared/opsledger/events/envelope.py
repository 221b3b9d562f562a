"""The one envelope every OpsLedger event travels in (maps onto CloudEvents)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Namespace for deterministic ids of derived events (uuid5).
DERIVED_EVENT_NAMESPACE = uuid.UUID("6f1c2a52-4f0e-4c1b-9a57-0c1e3f5b7d21")


def utcnow() -> datetime:
    return datetime.now(UTC)


def derived_event_id(cause_id: uuid.UUID | str, event_type: str, ordinal: int = 0) -> uuid.UUID:
    """Id of an event derived from another: the same on every re-derivation, so a rebuild never
    publishes a second copy."""
    return uuid.uuid5(DERIVED_EVENT_NAMESPACE, f"{cause_id}:{event_type}:{ordinal}")


class Envelope(BaseModel):
    """Metadata + payload. `subject` is the aggregate id and the Kafka key: the incident id for
    lifecycle events, the configuration object's id for configuration events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID
    event_type: str = Field(min_length=1, max_length=200)
    schema_version: int = Field(ge=1)
    incident_id: uuid.UUID | None = None
    subject: str = Field(min_length=1, max_length=200)
    occurred_at: datetime
    producer: str = Field(min_length=1, max_length=100)
    correlation_id: str | None = None
    causation_id: uuid.UUID | None = None
    actor: str = Field(min_length=1, max_length=300)
    payload: dict[str, Any]

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone")
        return value.astimezone(UTC)

    @property
    def key(self) -> bytes:
        return self.subject.encode()

    def to_bytes(self) -> bytes:
        # pydantic-core writes the JSON in one pass (no intermediate dict): half the time of
        # model_dump + orjson, the same bytes.
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        # pydantic-core parses and validates in one pass (no intermediate Python dict).
        return cls.model_validate_json(raw)

    def cloudevent(self) -> dict[str, Any]:
        """The same event as a CloudEvents 1.0 structured-mode JSON object."""
        return {
            "specversion": "1.0",
            "id": str(self.event_id),
            "type": f"opsledger.{self.event_type}.v{self.schema_version}",
            "source": f"opsledger/{self.producer}",
            "subject": self.subject,
            "time": self.occurred_at.isoformat(),
            "datacontenttype": "application/json",
            "data": self.payload,
        }
