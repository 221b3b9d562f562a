"""Registry of event types: payload model per (type, version), the stream each lives on, and
upcasters that lift an old payload to the current version on read (the log is never rewritten)."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from opsledger.events.envelope import Envelope, derived_event_id, utcnow
from opsledger.ids import uuid7


class Stream(enum.StrEnum):
    """Logical streams; the topic name is `<prefix>.<stream>` (see opsledger.bus.topics)."""

    INCIDENTS = "incidents"
    CONFIG = "config"


class EventPayload(BaseModel):
    """Base of every typed event body. Subclasses are registered with @event(...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int]
    stream: ClassVar[Stream]


class UnknownEventType(Exception):
    """The log holds an event type this code does not know (e.g. from a newer producer)."""


class UnsupportedSchemaVersion(Exception):
    """The event's schema version is newer than the newest this code knows."""


class InvalidPayload(Exception):
    """The payload does not match its declared type and version."""


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
P = TypeVar("P", bound=type[EventPayload])


@dataclass
class _TypeEntry:
    versions: dict[int, type[EventPayload]] = field(default_factory=dict)
    upcasters: dict[int, Upcaster] = field(default_factory=dict)  # from_version -> fn

    @property
    def latest(self) -> int:
        return max(self.versions)


class EventRegistry:
    def __init__(self) -> None:
        self._types: dict[str, _TypeEntry] = {}

    def register(self, name: str, version: int, stream: Stream) -> Callable[[P], P]:
        def decorate(model: P) -> P:
            entry = self._types.setdefault(name, _TypeEntry())
            if version in entry.versions:
                raise ValueError(f"event {name} v{version} registered twice")
            model.event_type, model.schema_version, model.stream = name, version, stream
            entry.versions[version] = model
            return model

        return decorate

    def upcaster(self, name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register fn turning a `name` payload of `from_version` into `from_version + 1`."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._types.setdefault(name, _TypeEntry()).upcasters[from_version] = fn
            return fn

        return decorate

    def knows(self, name: str) -> bool:
        return name in self._types and bool(self._types[name].versions)

    def model(self, name: str, version: int | None = None) -> type[EventPayload]:
        entry = self._types.get(name)
        if entry is None or not entry.versions:
            raise UnknownEventType(name)
        return entry.versions[version if version is not None else entry.latest]

    def types(self) -> dict[str, type[EventPayload]]:
        """Every known event type, at its latest version."""
        return {name: e.versions[e.latest] for name, e in sorted(self._types.items()) if e.versions}

    def all_versions(self) -> list[type[EventPayload]]:
        return [m for _, e in sorted(self._types.items()) for _, m in sorted(e.versions.items())]

    def decode(self, envelope: Envelope) -> EventPayload:
        """The envelope's payload as the latest model of its type, upcast as needed."""
        entry = self._types.get(envelope.event_type)
        if entry is None or not entry.versions:
            raise UnknownEventType(envelope.event_type)
        version, body = envelope.schema_version, envelope.payload
        if version > entry.latest:
            raise UnsupportedSchemaVersion(
                f"{envelope.event_type} v{version} is newer than v{entry.latest}, the newest known"
            )
        while version < entry.latest:
            step = entry.upcasters.get(version)
            if step is None:
                raise UnsupportedSchemaVersion(f"{envelope.event_type}: no upcaster from v{version} to v{version + 1}")
            body, version = step(dict(body)), version + 1
        try:
            return entry.versions[version].model_validate(body)
        except ValidationError as exc:
            raise InvalidPayload(f"{envelope.event_type} v{version}: {exc}") from exc


registry = EventRegistry()
event = registry.register
upcaster = registry.upcaster


def new_event(
    payload: EventPayload,
    *,
    producer: str,
    actor: str,
    incident_id: uuid.UUID | None = None,
    subject: str | None = None,
    correlation_id: str | None = None,
    cause: Envelope | None = None,
    ordinal: int = 0,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Wrap a payload in an envelope. An event reacting to `cause` inherits its correlation id
    and gets a deterministic id (so re-deriving it during a rebuild yields the same event)."""
    if event_id is None:
        event_id = derived_event_id(cause.event_id, payload.event_type, ordinal) if cause is not None else uuid7()
    if subject is None:
        if incident_id is None:
            raise ValueError("an event needs an incident_id or a subject")
        subject = str(incident_id)
    return Envelope(
        event_id=event_id,
        event_type=payload.event_type,
        schema_version=payload.schema_version,
        incident_id=incident_id,
        subject=subject,
        occurred_at=occurred_at or utcnow(),
        producer=producer,
        correlation_id=correlation_id if correlation_id is not None else (cause.correlation_id if cause else None),
        causation_id=cause.event_id if cause else None,
        actor=actor,
        payload=payload.model_dump(mode="json"),
    )
