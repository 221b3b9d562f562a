"""The backbone every service has: outbox and inbox (created by services' first revisions until
this branch existed, hence IF NOT EXISTS), durable timers, leases (the outbox relay's), and the
inbox index its purge uses.

Revision ID: backbone_0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

from opsledger.migrations import create_backbone

revision: str = "backbone_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("backbone",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_backbone(op)
    op.execute(
        """
        CREATE TABLE timers (
            key TEXT NOT NULL PRIMARY KEY,
            due_at TIMESTAMP WITH TIME ZONE NOT NULL,
            fire_at TIMESTAMP WITH TIME ZONE NOT NULL,
            data JSONB NOT NULL,
            attempts INTEGER DEFAULT '0' NOT NULL,
            last_error TEXT
        )
        """
    )
    op.execute("CREATE INDEX timers_fire_at ON timers (fire_at)")
    op.execute("CREATE INDEX IF NOT EXISTS inbox_processed_at ON inbox (processed_at)")
    op.execute(
        """
        CREATE TABLE leases (
            name TEXT NOT NULL PRIMARY KEY,
            holder UUID NOT NULL,
            expires_at TIMESTAMP WITH TIME ZONE NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE leases")
    op.execute("DROP TABLE timers")
    op.execute("DROP INDEX IF EXISTS inbox_processed_at")
