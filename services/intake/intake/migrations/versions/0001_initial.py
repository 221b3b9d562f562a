"""Backbone tables (outbox, inbox) and the intake service's tables.

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
        "integrations",
        sa.Column("integration_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("key_prefix", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "alert_state",
        sa.Column("scope", sa.Text, primary_key=True),
        sa.Column("dedup_key", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("incident_id", pg.UUID(as_uuid=True)),
        sa.Column("occurrence_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_seen", sa.DateTime(timezone=True)),
        sa.Column("last_seen", sa.DateTime(timezone=True)),
        sa.Column("transitions", pg.ARRAY(sa.DateTime(timezone=True)), nullable=False, server_default="{}"),
        sa.Column("flapping_since", sa.DateTime(timezone=True)),
    )
    op.create_index("alert_state_incident", "alert_state", ["incident_id"])
    op.create_table(
        "logged_incidents",
        sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("scope", sa.Text),
        sa.Column("dedup_key", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("logged_incidents")
    op.drop_table("alert_state")
    op.drop_table("integrations")
    drop_backbone(op)
