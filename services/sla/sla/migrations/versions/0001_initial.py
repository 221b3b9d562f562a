"""Backbone tables (outbox, inbox) and the sla service's first tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from opsledger.migrations import create_backbone, drop_backbone

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_backbone(op)
    op.create_table(
        "known_incidents",
        sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("known_incidents")
    drop_backbone(op)
