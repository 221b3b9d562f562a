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
        # Added by revision 0002 (so at the end, in both tables).
        sa.Column("sla_warned", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("sla_breached", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("source_acknowledged_at", TS),
        # Added by revision 0003: what the assignment, SLA and resolution stages' typed events say.
        sa.Column("team_name", sa.Text),
        sa.Column("assignee_name", sa.Text),
        sa.Column("acknowledged_by", sa.Text),
        sa.Column("escalation_tier", sa.Integer),
        sa.Column("on_hold_reason", sa.Text),
        sa.Column("resolution_code", sa.Text),
        sa.Column("sla_response_state", sa.Text),
        sa.Column("sla_response_due_at", TS),
        sa.Column("sla_resolution_state", sa.Text),
        sa.Column("sla_resolution_due_at", TS),
        sa.Column("reviewed_at", TS),
        sa.Column("task_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("open_task_count", sa.Integer, nullable=False, server_default="0"),
    ]


# Sort keys of the incident list. NULLs sort as these constants so keyset pagination compares
# plain values; they are SQL literals (not bind parameters) so the expression indexes below match
# the queries' ORDER BY and a page is an index range scan, not a sort of the whole table.
EPOCH_SQL = "'1970-01-01 00:00:00+00'::timestamptz"
NO_PRIORITY_SQL = "'P9'"
SORTS = ("logged_at", "occurred_at", "last_event_at", "priority")


def sort_key(table: sa.Table, name: str) -> sa.ColumnElement[object]:
    """The ORDER BY expression of sort `name` on `table` (incidents or incident_versions)."""
    if name == "priority":
        return sa.func.coalesce(table.c.priority, sa.literal_column(NO_PRIORITY_SQL))
    return sa.func.coalesce(table.c[name], sa.literal_column(EPOCH_SQL))


def valid_range(table: sa.Table) -> sa.ColumnElement[object]:
    """[valid_from, valid_to) of a history row, as the SP-GiST index holds it (`as_of` is `@>`)."""
    return sa.func.tstzrange(table.c.valid_from, table.c.valid_to, sa.literal_column("'[)'"))


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

# The head of each version's audit trail: its last entry's seq and, per `scheme` (domain.
# LEGACY_CHAIN, PER_SUBJECT_CHAINS), the last entry's hash or the chain over the per-aggregate
# chains. Locked (FOR UPDATE) by every batch, so two appenders can never fork a chain.
chain_heads = sa.Table(
    "chain_heads",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
    # Revision 0004: versions made before it keep their single chain (1).
    sa.Column("scheme", sa.SmallInteger, nullable=False, server_default="2"),
)

# Revision 0004: the head of each aggregate's chain (PER_SUBJECT_CHAINS), where its next entry
# links to: the subject's last entry (its global seq) and that entry's hash.
audit_chains = sa.Table(
    "audit_chains",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("subject", sa.Text, primary_key=True),
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
# Revision 0002: one index per sort (its keyset), and the selective filters. Low-cardinality
# filters (priority, category, source) ride on the sort index: a page stops after `limit` matches.
for _sort in SORTS:
    sa.Index(f"incidents_sort_{_sort}", incidents.c.version, sort_key(incidents, _sort), incidents.c.incident_id)
sa.Index("incidents_team", incidents.c.version, incidents.c.team)
sa.Index("incidents_service", incidents.c.version, incidents.c.service)
# Revision 0003: a person's incidents ("my incidents").
sa.Index("incidents_assignee", incidents.c.version, incidents.c.assignee)

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
# Revision 0002: the rows valid at `as_of` are found by range containment; a btree on
# valid_from alone had to read every row that started before `as_of` (nearly all of history).
# Revision 0005: SP-GiST, as fast to read and about 7x cheaper to write than GiST.
sa.Index("incident_versions_valid", valid_range(incident_versions), postgresql_using="spgist")

# The timeline and audit trail: every event, in the order applied (seq), hash-chained per
# aggregate (prev_hash: the hash of the same subject's entry before it; see chain_heads).
timeline = sa.Table(
    "timeline",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("event_id", UUID, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("decode_status", sa.Text, nullable=False),  # see domain.decode_status
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
PROJECTION_TABLES = (positions, chain_heads, audit_chains, incidents, incident_versions, timeline)
