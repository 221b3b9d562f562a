"""alert_state.reopenable_until: the key's incident was resolved downstream and may be reopened
until then, so the key's next trigger goes to it (resolution reopens it) instead of a new incident.

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
    op.add_column("alert_state", sa.Column("reopenable_until", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("alert_state", "reopenable_until")
