"""Each person's open incidents and open tasks are counted on their `people` row, kept current by
every save, instead of being counted over all open incidents for every unit of work (a storm leaves
tens of thousands open: 74 ms a batch at 60,000). A person may have tasks before any incident,
hence a nullable `last_assigned_at`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("people", sa.Column("open_incidents", sa.Integer, nullable=False, server_default="0"))
    op.add_column("people", sa.Column("open_tasks", sa.Integer, nullable=False, server_default="0"))
    op.alter_column("people", "last_assigned_at", nullable=True)
    op.execute(
        "INSERT INTO people (sub, open_incidents)"
        " SELECT assignee_sub, count(*) FROM known_incidents WHERE status = 'open' AND assignee_sub IS NOT NULL"
        " GROUP BY assignee_sub"
        " ON CONFLICT (sub) DO UPDATE SET open_incidents = EXCLUDED.open_incidents"
    )
    op.execute(
        "INSERT INTO people (sub, open_tasks)"
        " SELECT assignee_sub, count(*) FROM tasks WHERE status IN ('open', 'in_progress') AND assignee_sub IS NOT NULL"
        " GROUP BY assignee_sub"
        " ON CONFLICT (sub) DO UPDATE SET open_tasks = EXCLUDED.open_tasks"
    )


def downgrade() -> None:
    op.execute("DELETE FROM people WHERE last_assigned_at IS NULL")
    op.alter_column("people", "last_assigned_at", nullable=False)
    op.drop_column("people", "open_tasks")
    op.drop_column("people", "open_incidents")
