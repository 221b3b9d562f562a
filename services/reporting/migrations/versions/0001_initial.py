"""Backbone tables (outbox, inbox) and the reporting service's projection tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

from opsledger.migrations import create_backbone, drop_backbone
from reporting import store

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_backbone(op)
    # Nothing is released yet, so the first revision is the current table definitions; from the
    # first release on, later revisions spell out their changes with op.* calls.
    store.metadata.create_all(op.get_bind())
    op.bulk_insert(store.projection_state, [{"id": 1, "active_version": 1}])


def downgrade() -> None:
    store.metadata.drop_all(op.get_bind())
    drop_backbone(op)
