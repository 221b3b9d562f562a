"""Event envelope, registry and every service's event schemas (importing this loads them all)."""

from opsledger.events import assignment, intake, resolution, sla, triage  # noqa: F401  (registers the schemas)
from opsledger.events.envelope import Envelope, derived_event_id, utcnow
from opsledger.events.registry import (
    EventPayload,
    InvalidPayload,
    Stream,
    UnknownEventType,
    UnsupportedSchemaVersion,
    event,
    new_event,
    registry,
    upcaster,
)

__all__ = [
    "Envelope",
    "EventPayload",
    "InvalidPayload",
    "Stream",
    "UnknownEventType",
    "UnsupportedSchemaVersion",
    "derived_event_id",
    "event",
    "new_event",
    "registry",
    "upcaster",
    "utcnow",
]
