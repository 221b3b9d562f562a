"""SLA clocks (each known incident's state), the consumed history a what-if replays, and policy
versions.

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
    # Incidents heard of before clocks existed get a state of what was known of them.
    op.add_column("known_incidents", sa.Column("priority", sa.Text))
    op.add_column("known_incidents", sa.Column("state", pg.JSONB))
    op.add_column("known_incidents", sa.Column("updated_at", sa.DateTime(timezone=True)))
    op.execute(
        "UPDATE known_incidents SET updated_at = logged_at,"
        " state = jsonb_build_object('logged_at', to_jsonb(logged_at), 'title', title)"
    )
    op.alter_column("known_incidents", "state", nullable=False)
    op.alter_column("known_incidents", "updated_at", nullable=False)
    op.create_index("known_incidents_logged_at", "known_incidents", ["logged_at"])
    op.create_table(
        "sla_inputs",
        sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("envelope", pg.JSONB, nullable=False),
    )
    op.create_table(
        "sla_policies",
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("body", pg.JSONB, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sla_policies")
    op.drop_table("sla_inputs")
    op.drop_index("known_incidents_logged_at", table_name="known_incidents")
    op.drop_column("known_incidents", "updated_at")
    op.drop_column("known_incidents", "state")
    op.drop_column("known_incidents", "priority")
