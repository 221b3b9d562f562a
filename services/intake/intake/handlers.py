"""Event handlers of the intake service: event -> decision -> state (+ new events via outbox)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from intake import domain, ingest, store
from opsledger.bus.consumer import Handler
from opsledger.db import after_commit, driver_connection
from opsledger.events import Envelope, EventPayload
from opsledger.events.resolution import CorrelationRefused

if TYPE_CHECKING:
    from intake.runtime import IntakeRuntime

# The resolution stage's events that change what an incident's dedup keys do. Resolved: the key
# keeps the incident, and a trigger within the reopen window goes to it (resolution reopens it);
# closed: forgotten, the next trigger opens a new incident (PagerDuty semantics); reopened: the
# incident is open again. The first three are matched by name (their schemas do not matter here).
CLOSING_EVENTS = {"IncidentResolved", "IncidentClosed", "IncidentReopened"}
# An alert attached to an incident that could no longer take it (closed before intake knew): it
# opens a new incident, as it would have had intake known.
REFUSED = "CorrelationRefused"


def on_incident_event(runtime: IntakeRuntime) -> Handler:
    """The handler of the resolution stage's events, with this service's reopen window."""
    window = timedelta(seconds=runtime.settings.reopen_window_seconds)

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
        elif envelope.event_type == REFUSED and isinstance(payload, CorrelationRefused):
            conn = await driver_connection(session)
            now, policy = runtime.clock.now(), runtime.flap_policy
            if await ingest.open_for_refused(conn, runtime.outbox, envelope, payload, now=now, policy=policy):
                after_commit(session, runtime.outbox.wake)

    return handle
