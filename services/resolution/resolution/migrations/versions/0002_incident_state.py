"""The resolution stage's state of each incident (lifecycle, resolution, review, recorded timeline)
replaces the skeleton's `known_incidents`, which held nothing the stage needs to keep.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resolution_incidents",
        sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("priority", sa.Text),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        sa.Column("state", pg.JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_resolution_incidents_status", "resolution_incidents", ["status"])
    op.drop_table("known_incidents")


def downgrade() -> None:
    op.create_table(
        "known_incidents",
        sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
    )
    op.drop_index("ix_resolution_incidents_status", table_name="resolution_incidents")
    op.drop_table("resolution_incidents")
