"""The outbox keeps each event's type, which the relay sends as the record's `event_type` header:
a consumer that wants only some types skips the others without parsing them. Rows staged before
this have none, and are parsed as before.

Revision ID: backbone_0002
Revises: backbone_0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "backbone_0002"
down_revision: str | None = "backbone_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE outbox ADD COLUMN event_type TEXT")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox DROP COLUMN event_type")
