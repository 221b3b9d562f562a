"""Backbone tables (outbox, inbox) and the reporting service's projection tables.

Frozen: the DDL below is exactly what `reporting.store`'s metadata created when this revision
was written (it used to call `metadata.create_all`, which let every later change of store.py
silently change what 0001 creates). Table changes go into new revisions. The backbone tables
stay with `opsledger.migrations`, which owns them for every service.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

from opsledger.migrations import create_backbone, drop_backbone

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The incident state columns, shared by the current-state table and the history table.
INCIDENT_COLUMNS = """
    incident_id UUID NOT NULL,
    status TEXT NOT NULL,
    title TEXT,
    priority TEXT,
    major BOOLEAN NOT NULL,
    category TEXT,
    subcategory TEXT,
    team TEXT,
    assignee TEXT,
    sla_state TEXT,
    source TEXT,
    integration_id TEXT,
    dedup_key TEXT,
    service TEXT,
    environment TEXT,
    severity TEXT,
    alert_state TEXT,
    occurred_at TIMESTAMP WITH TIME ZONE,
    logged_at TIMESTAMP WITH TIME ZONE,
    acknowledged_at TIMESTAMP WITH TIME ZONE,
    resolved_at TIMESTAMP WITH TIME ZONE,
    closed_at TIMESTAMP WITH TIME ZONE,
    alert_count INTEGER NOT NULL,
    reopen_count INTEGER NOT NULL,
    escalation_count INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    last_event_type TEXT,
    last_event_at TIMESTAMP WITH TIME ZONE,
    sla_warned TEXT[] DEFAULT '{}' NOT NULL,
    sla_breached TEXT[] DEFAULT '{}' NOT NULL,
    source_acknowledged_at TIMESTAMP WITH TIME ZONE"""

EPOCH = "'1970-01-01 00:00:00+00'::timestamptz"

# In dependency order. SERIAL on chain_heads.version and projection_state.id is what create_all
# made of a lone integer primary key; kept, so that this revision's schema is unchanged.
STATEMENTS = (
    """CREATE TABLE chain_heads (
    version SERIAL NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (version)
)""",
    f"""CREATE TABLE incident_versions (
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    valid_from TIMESTAMP WITH TIME ZONE NOT NULL,
    valid_to TIMESTAMP WITH TIME ZONE,
    event_id UUID NOT NULL,{INCIDENT_COLUMNS},
    PRIMARY KEY (version, incident_id, seq)
)""",
    "CREATE INDEX incident_versions_valid ON incident_versions USING gist (tstzrange(valid_from, valid_to, '[)'))",
    f"""CREATE TABLE incidents (
    version INTEGER NOT NULL,{INCIDENT_COLUMNS},
    PRIMARY KEY (version, incident_id)
)""",
    "CREATE INDEX incidents_dedup ON incidents (version, dedup_key)",
    "CREATE INDEX incidents_logged ON incidents (version, logged_at, incident_id)",
    "CREATE INDEX incidents_service ON incidents (version, service)",
    f"CREATE INDEX incidents_sort_last_event_at ON incidents (version, coalesce(last_event_at, {EPOCH}), incident_id)",
    f"CREATE INDEX incidents_sort_logged_at ON incidents (version, coalesce(logged_at, {EPOCH}), incident_id)",
    f"CREATE INDEX incidents_sort_occurred_at ON incidents (version, coalesce(occurred_at, {EPOCH}), incident_id)",
    "CREATE INDEX incidents_sort_priority ON incidents (version, coalesce(priority, 'P9'), incident_id)",
    "CREATE INDEX incidents_status ON incidents (version, status)",
    "CREATE INDEX incidents_team ON incidents (version, team)",
    """CREATE TABLE positions (
    version INTEGER NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    PRIMARY KEY (version, topic, partition)
)""",
    """CREATE TABLE projection_state (
    id SERIAL NOT NULL,
    active_version INTEGER NOT NULL,
    rebuild_version INTEGER,
    rebuild_status TEXT,
    rebuild_started_at TIMESTAMP WITH TIME ZONE,
    rebuild_finished_at TIMESTAMP WITH TIME ZONE,
    rebuild_detail TEXT,
    PRIMARY KEY (id),
    CONSTRAINT projection_state_single_row CHECK (id = 1)
)""",
    """CREATE TABLE timeline (
    version INTEGER NOT NULL,
    seq BIGINT NOT NULL,
    event_id UUID NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    decode_status TEXT NOT NULL,
    incident_id UUID,
    subject TEXT NOT NULL,
    occurred_at TIMESTAMP WITH TIME ZONE NOT NULL,
    producer TEXT NOT NULL,
    actor TEXT NOT NULL,
    correlation_id TEXT,
    causation_id UUID,
    payload TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (version, seq)
)""",
    "CREATE INDEX timeline_incident ON timeline (version, incident_id, seq)",
    "INSERT INTO projection_state (id, active_version) VALUES (1, 1)",
)

TABLES = ("timeline", "projection_state", "positions", "incidents", "incident_versions", "chain_heads")


def upgrade() -> None:
    create_backbone(op)
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TABLE IF EXISTS {table}")
    drop_backbone(op)
