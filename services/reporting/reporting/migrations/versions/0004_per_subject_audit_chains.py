"""Audit hash chains per aggregate: one chain per incident (or configuration object), plus a chain
over those chains in `chain_heads`, so appending an entry needs only its own chain's head.

`chain_heads.scheme` says how a version is chained: versions made before this revision keep their
single chain (1) and are still appended to and verified that way; every new version (a rebuild)
is chained per aggregate (2). `audit_chains` holds each aggregate's head.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE chain_heads ADD COLUMN scheme smallint NOT NULL DEFAULT 1")
    op.execute("ALTER TABLE chain_heads ALTER COLUMN scheme SET DEFAULT 2")
    op.execute(
        "CREATE TABLE audit_chains (version integer NOT NULL, subject text NOT NULL, seq bigint NOT NULL,"
        " hash text NOT NULL, CONSTRAINT audit_chains_pkey PRIMARY KEY (version, subject))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_chains")
    op.execute("ALTER TABLE chain_heads DROP COLUMN scheme")
