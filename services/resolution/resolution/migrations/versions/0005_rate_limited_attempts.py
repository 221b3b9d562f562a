"""Deliveries count their attempts answered 429 (`rate_limited`): those use none of
WEBHOOK_MAX_ATTEMPTS up, so a notification refused by a rate limit through a storm is not given up.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("rate_limited", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("deliveries", "rate_limited")
