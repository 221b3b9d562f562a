"""What the typed events of the assignment, SLA and resolution stages say about an incident: team
and assignee names, who acknowledged, the escalation tier, the hold reason, the resolution code,
each SLA target's state and due time, the review, and task counts; an index for "my incidents".

Incidents projected before this revision get the columns' defaults; the events behind them are on
the log, so a rebuild (POST /v1/admin/rebuild) fills them in. Events of those stages written before
their schemas were registered do not match the schemas and are shown, not applied.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "team_name text",
    "assignee_name text",
    "acknowledged_by text",
    "escalation_tier integer",
    "on_hold_reason text",
    "resolution_code text",
    "sla_response_state text",
    "sla_response_due_at timestamptz",
    "sla_resolution_state text",
    "sla_resolution_due_at timestamptz",
    "reviewed_at timestamptz",
    "task_count integer NOT NULL DEFAULT 0",
    "open_task_count integer NOT NULL DEFAULT 0",
)


def upgrade() -> None:
    for table in ("incidents", "incident_versions"):
        op.execute(f"ALTER TABLE {table} " + ", ".join(f"ADD COLUMN {column}" for column in COLUMNS))
    op.execute("CREATE INDEX incidents_assignee ON incidents (version, assignee)")


def downgrade() -> None:
    op.execute("DROP INDEX incidents_assignee")
    for table in ("incidents", "incident_versions"):
        op.execute(f"ALTER TABLE {table} " + ", ".join(f"DROP COLUMN {c.split()[0]}" for c in COLUMNS))
