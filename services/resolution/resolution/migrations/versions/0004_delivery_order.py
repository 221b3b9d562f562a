"""Deliveries get `seq`, their staging order: the rows of one consumed batch share `created_at`, and
a round of due deliveries was read in primary-key (random) order, so one incident's emails could
go out in an order other than its events'. Rows already there are numbered in table order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False))


def downgrade() -> None:
    op.drop_column("deliveries", "seq")
