"""The `as_of` index on the history's validity range becomes SP-GiST (was GiST).

Every event adds a history row, and closes the one before it, so this index is written twice per
event. A GiST insert chooses its subtree by penalty at every level and splits pages by a quadratic
pick: about 10.7 us per row on the development machine (a quarter of the projector's time applying
events in log order; about 5 % of the replay bench, where partitions interleave). An SP-GiST insert
walks one path of a quad tree: about 1.5 us. `as_of` reads (`tstzrange @> timestamp`) are as fast
either way (9-38 ms against 10-34 ms for a page of 51 at 300,000 rows), and the index is smaller.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RANGE = "tstzrange(valid_from, valid_to, '[)')"


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS incident_versions_valid")
    op.execute(f"CREATE INDEX incident_versions_valid ON incident_versions USING spgist ({RANGE})")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS incident_versions_valid")
    op.execute(f"CREATE INDEX incident_versions_valid ON incident_versions USING gist ({RANGE})")
