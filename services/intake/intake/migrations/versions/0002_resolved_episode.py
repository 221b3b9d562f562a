"""alert_state.resolved_episode: the start of the last episode the source said resolved, so a late
firing re-send of it (an Alertmanager HA pair's second notification) is ignored.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("alert_state", sa.Column("resolved_episode", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("alert_state", "resolved_episode")
