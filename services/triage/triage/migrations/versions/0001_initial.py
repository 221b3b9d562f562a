"""Backbone tables (outbox, inbox) and the triage service's tables.

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
        "triage_incidents",
        sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.Column("facts", pg.JSONB, nullable=False),
        sa.Column("decision", pg.JSONB, nullable=False),
        sa.Column("overrides", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("subcategory", sa.Text),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("triage_incidents_logged_at", "triage_incidents", ["logged_at"])
    op.create_table(
        "config_versions",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("body", pg.JSONB, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("config_versions")
    op.drop_table("triage_incidents")
    drop_backbone(op)
