"""Event handlers of the assignment service: event -> decision -> state (+ new events via outbox)."""

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from assignment.store import known_incidents
from opsledger.events import Envelope, EventPayload
from opsledger.events.intake import IncidentLogged


async def on_incident_event(session: AsyncSession, envelope: Envelope, payload: EventPayload | None) -> None:
    if isinstance(payload, IncidentLogged) and envelope.incident_id is not None:
        await session.execute(
            pg_insert(known_incidents)
            .values(incident_id=envelope.incident_id, logged_at=envelope.occurred_at, title=payload.title)
            .on_conflict_do_nothing()
        )
