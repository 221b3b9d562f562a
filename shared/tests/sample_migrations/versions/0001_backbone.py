"""Backbone tables only (for the service start-up tests).

Revision ID: 0001
Revises:
"""

from alembic import op

from opsledger.migrations import create_backbone, drop_backbone

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_backbone(op)


def downgrade() -> None:
    drop_backbone(op)
