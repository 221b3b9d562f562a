"""SLA targets and the source's acknowledgement on incidents; indexes for the list's sorts and
selective filters; a GiST range index for `as_of`.

Revision 0001 (frozen since as the explicit DDL of the tables as they stood then) already creates
all of this on a fresh database: every statement here is idempotent (IF [NOT] EXISTS) and only
changes a database created by an earlier 0001.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EPOCH = "'1970-01-01 00:00:00+00'::timestamptz"  # reporting.store.EPOCH_SQL, frozen here

COLUMNS = (
    "sla_warned text[] NOT NULL DEFAULT '{}'",
    "sla_breached text[] NOT NULL DEFAULT '{}'",
    "source_acknowledged_at timestamptz",
)

INDEXES = {
    "incidents_sort_logged_at": f"incidents (version, coalesce(logged_at, {EPOCH}), incident_id)",
    "incidents_sort_occurred_at": f"incidents (version, coalesce(occurred_at, {EPOCH}), incident_id)",
    "incidents_sort_last_event_at": f"incidents (version, coalesce(last_event_at, {EPOCH}), incident_id)",
    "incidents_sort_priority": "incidents (version, coalesce(priority, 'P9'), incident_id)",
    "incidents_team": "incidents (version, team)",
    "incidents_service": "incidents (version, service)",
    "incident_versions_valid": "incident_versions USING gist (tstzrange(valid_from, valid_to, '[)'))",
}


def upgrade() -> None:
    for table in ("incidents", "incident_versions"):
        for column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")
    # SLA events applied before this revision set only sla_state; their targets are not known
    # until the projection is rebuilt (POST /v1/admin/rebuild), which reads them from the log.
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")
    # Superseded by incident_versions_valid; no query used the partial index.
    op.execute("DROP INDEX IF EXISTS incident_versions_asof")
    op.execute("DROP INDEX IF EXISTS incident_versions_open")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS incident_versions_asof ON incident_versions (version, valid_from)")
    op.execute(
        "CREATE INDEX IF NOT EXISTS incident_versions_open ON incident_versions (version, incident_id)"
        " WHERE valid_to IS NULL"
    )
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    for table in ("incidents", "incident_versions"):
        for column in COLUMNS:
            op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS {column.split()[0]}")
