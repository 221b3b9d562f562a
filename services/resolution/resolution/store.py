"""Tables of the resolution service (its own database) and the queries the stage runs on them."""

from __future__ import annotations

import uuid
from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from opsledger.uow import UnitOfWork
from resolution.domain import Incident

metadata = sa.MetaData()

# The incidents this service has heard of; the stage's own state grows from here.
known_incidents = sa.Table(
    "known_incidents",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
)


async def load(uow: UnitOfWork, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Incident]:
    """The incidents among `ids` this service knows, locked (in id order) for the transaction."""
    query = (
        sa.select(known_incidents)
        .where(known_incidents.c.incident_id.in_(ids))
        .order_by(known_incidents.c.incident_id)
        .with_for_update()
    )
    return {row.incident_id: Incident(row.logged_at, row.title) for row in await uow.session.execute(query)}


async def save(uow: UnitOfWork, changed: dict[uuid.UUID, Incident]) -> None:
    """Write the incidents a unit of work changed, in one statement."""
    if not changed:
        return
    stmt = pg_insert(known_incidents)
    await uow.session.execute(
        stmt.on_conflict_do_update(
            index_elements=["incident_id"], set_={"logged_at": stmt.excluded.logged_at, "title": stmt.excluded.title}
        ),
        [{"incident_id": k, "logged_at": v.logged_at, "title": v.title} for k, v in changed.items()],
    )


async def no_context(uow: UnitOfWork) -> None:
    """Decisions here need no configuration yet."""
