"""Event handlers of the intake service: event -> decision -> state (+ new events via outbox)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from intake import store
from opsledger.events import Envelope, EventPayload

# Events of later stages (resolution) meaning a person closed the incident. Intake then forgets
# the open incident of its dedup key, so the key's next trigger opens a new incident (PagerDuty
# semantics). Matched by name: intake does not depend on those schemas.
CLOSING_EVENTS = {"IncidentResolved", "IncidentClosed"}


async def on_incident_event(session: AsyncSession, envelope: Envelope, payload: EventPayload | None) -> None:
    if envelope.event_type in CLOSING_EVENTS and envelope.incident_id is not None:
        await store.close_incident(session, envelope.incident_id, envelope.occurred_at)
