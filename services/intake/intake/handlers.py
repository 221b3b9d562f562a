"""Event handlers of the intake service: event -> decision -> state (+ new events via outbox)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from intake import domain, store
from intake.settings import Settings
from opsledger.bus.consumer import Handler
from opsledger.events import Envelope, EventPayload

# Events of the resolution stage about an incident's life that change what its dedup keys do
# (matched by name: intake does not depend on those schemas). Resolved: the key keeps the incident,
# and a trigger within the reopen window goes to it (resolution reopens it); closed: forgotten, the
# next trigger opens a new incident (PagerDuty semantics); reopened: the incident is open again.
CLOSING_EVENTS = {"IncidentResolved", "IncidentClosed", "IncidentReopened"}


def on_incident_event(settings: Settings) -> Handler:
    """The handler of the resolution stage's events, with this service's reopen window."""
    window = timedelta(seconds=settings.reopen_window_seconds)

    async def handle(session: AsyncSession, envelope: Envelope, payload: EventPayload | None) -> None:
        incident_id = envelope.incident_id
        if incident_id is None:
            return
        if envelope.event_type == "IncidentResolved":
            at = envelope.occurred_at
            await store.update_incident_states(
                session, incident_id, lambda s: domain.resolved_downstream(s, at=at, reopen_window=window)
            )
        elif envelope.event_type == "IncidentClosed":
            await store.update_incident_states(session, incident_id, domain.closed_downstream)
        elif envelope.event_type == "IncidentReopened":
            await store.update_incident_states(session, incident_id, domain.reopened_downstream)

    return handle
