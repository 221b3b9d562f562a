"""Assignment state on known_incidents, people's last assignment, tasks, versioned configuration (teams, schedules,
escalation policies, routing) and the record of seeds done.

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
    op.add_column("known_incidents", sa.Column("status", sa.Text))
    op.add_column("known_incidents", sa.Column("team_id", sa.Text))
    op.add_column("known_incidents", sa.Column("assignee_sub", sa.Text))
    op.add_column("known_incidents", sa.Column("assigned_at", sa.DateTime(timezone=True)))
    op.add_column("known_incidents", sa.Column("state", pg.JSONB))
    op.create_index(
        "known_incidents_open_assignee",
        "known_incidents",
        ["assignee_sub"],
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "people",
        sa.Column("sub", sa.Text, primary_key=True),
        sa.Column("last_assigned_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "config_versions",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("object_id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("body", pg.JSONB, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("incident_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("assignee_sub", sa.Text),
        sa.Column("assignee", pg.JSONB),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("required_skills", pg.JSONB, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("review_event_id", pg.UUID(as_uuid=True)),
        sa.Column("action_item_id", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tasks_incident_id", "tasks", ["incident_id"])
    op.create_index("tasks_assignee", "tasks", ["assignee_sub", "status"])
    op.create_table(
        "seeds",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("seeds")
    op.drop_table("tasks")
    op.drop_table("config_versions")
    op.drop_table("people")
    op.drop_index("known_incidents_open_assignee", "known_incidents")
    for column in ("state", "assigned_at", "assignee_sub", "team_id", "status"):
        op.drop_column("known_incidents", column)
