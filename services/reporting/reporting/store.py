"""Tables of the reporting service (its own database). Every projection table carries the
projection `version` it belongs to: a rebuild fills a new version beside the live one, and the
single row of `projection_state` says which version queries read."""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

UUID = pg.UUID(as_uuid=True)
TS = sa.DateTime(timezone=True)


def _incident_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    """The incident state columns, shared by the current-state and the history table."""
    return [
        sa.Column("incident_id", UUID, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("title", sa.Text),
        sa.Column("priority", sa.Text),
        sa.Column("major", sa.Boolean, nullable=False),
        sa.Column("category", sa.Text),
        sa.Column("subcategory", sa.Text),
        sa.Column("team", sa.Text),
        sa.Column("assignee", sa.Text),
        sa.Column("sla_state", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("integration_id", sa.Text),
        sa.Column("dedup_key", sa.Text),
        sa.Column("service", sa.Text),
        sa.Column("environment", sa.Text),
        sa.Column("severity", sa.Text),
        sa.Column("alert_state", sa.Text),
        sa.Column("occurred_at", TS),
        sa.Column("logged_at", TS),
        sa.Column("acknowledged_at", TS),
        sa.Column("resolved_at", TS),
        sa.Column("closed_at", TS),
        sa.Column("alert_count", sa.Integer, nullable=False),
        sa.Column("reopen_count", sa.Integer, nullable=False),
        sa.Column("escalation_count", sa.Integer, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("last_event_type", sa.Text),
        sa.Column("last_event_at", TS),
    ]


# One row: which projection version answers queries, and the state of the latest rebuild.
projection_state = sa.Table(
    "projection_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("active_version", sa.Integer, nullable=False),
    sa.Column("rebuild_version", sa.Integer),
    sa.Column("rebuild_status", sa.Text),  # running | switched | failed
    sa.Column("rebuild_started_at", TS),
    sa.Column("rebuild_finished_at", TS),
    sa.Column("rebuild_detail", sa.Text),
    sa.CheckConstraint("id = 1", name="projection_state_single_row"),
)

# The log position each projection version has applied, written in the same transaction as its
# rows: the consumer resumes from here (ConsumerSpec.stored_positions).
positions = sa.Table(
    "positions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
)

# The head of each version's audit hash chain; locked (FOR UPDATE) by every append, so two
# appenders can never fork the chain.
chain_heads = sa.Table(
    "chain_heads",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
)

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    *_incident_columns(),
    sa.PrimaryKeyConstraint("version", "incident_id"),
)
sa.Index("incidents_logged", incidents.c.version, incidents.c.logged_at, incidents.c.incident_id)
sa.Index("incidents_status", incidents.c.version, incidents.c.status)
sa.Index("incidents_dedup", incidents.c.version, incidents.c.dedup_key)

# Every state an incident has been in, valid over [valid_from, valid_to): `as_of=t` is one
# indexed lookup. seq = the incident's event count after the change.
incident_versions = sa.Table(
    "incident_versions",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("valid_from", TS, nullable=False),
    sa.Column("valid_to", TS),
    sa.Column("event_id", UUID, nullable=False),
    *_incident_columns(),
    sa.PrimaryKeyConstraint("version", "incident_id", "seq"),
)
sa.Index("incident_versions_asof", incident_versions.c.version, incident_versions.c.valid_from)
sa.Index(
    "incident_versions_open",
    incident_versions.c.version,
    incident_versions.c.incident_id,
    postgresql_where=incident_versions.c.valid_to.is_(None),
)

# The timeline and audit trail: every event, in the order applied, hash-chained per version.
timeline = sa.Table(
    "timeline",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("event_id", UUID, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("decode_status", sa.Text, nullable=False),  # ok | unknown_type | newer_version
    sa.Column("incident_id", UUID),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("occurred_at", TS, nullable=False),
    sa.Column("producer", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("correlation_id", sa.Text),
    sa.Column("causation_id", UUID),
    # Canonical JSON text (sorted keys), exactly the bytes the hash covers.
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("prev_hash", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("version", "seq"),
)
sa.Index("timeline_incident", timeline.c.version, timeline.c.incident_id, timeline.c.seq)

TIMELINE_COLUMNS = [c.name for c in timeline.columns]
VERSION_COLUMNS = [c.name for c in incident_versions.columns]
INCIDENT_COLUMNS = [c.name for c in incidents.columns if c.name != "version"]
PROJECTION_TABLES = (positions, chain_heads, incidents, incident_versions, timeline)
