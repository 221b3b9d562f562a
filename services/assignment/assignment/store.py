"""Tables of the assignment service (its own database)."""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

# The incidents this service has heard of; the stage's own state grows from here.
known_incidents = sa.Table(
    "known_incidents",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
)
