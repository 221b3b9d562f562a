"""Tables of the intake service (its own database) and the queries of its write path."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from intake.domain import AlertState, Status
from opsledger.db import Executor, driver_connection

metadata = sa.MetaData()

integrations = sa.Table(
    "integrations",
    metadata,
    sa.Column("integration_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    # sha256 of the key: the key itself is shown once and never stored.
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("key_prefix", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("disabled_at", sa.DateTime(timezone=True)),
)

# One row per (integration, dedup key): the open incident (or the last one) and the flapping
# history. The primary key is what serialises concurrent posts of the same alert.
alert_state = sa.Table(
    "alert_state",
    metadata,
    sa.Column("scope", sa.Text, primary_key=True),  # integration id
    sa.Column("dedup_key", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("incident_id", pg.UUID(as_uuid=True)),
    sa.Column("occurrence_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_seen", sa.DateTime(timezone=True)),
    sa.Column("last_seen", sa.DateTime(timezone=True)),
    sa.Column("transitions", pg.ARRAY(sa.DateTime(timezone=True)), nullable=False, server_default="{}"),
    sa.Column("flapping_since", sa.DateTime(timezone=True)),
    sa.Column("resolved_episode", sa.DateTime(timezone=True)),
    # The incident was resolved downstream and may be reopened until then (a trigger reopens it).
    sa.Column("reopenable_until", sa.DateTime(timezone=True)),
)
sa.Index("alert_state_incident", alert_state.c.incident_id)

# Every incident intake opened (alerts and reports).
logged_incidents = sa.Table(
    "logged_incidents",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("scope", sa.Text),
    sa.Column("dedup_key", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
)


# The write path's statements run on the driver connection (asyncpg prepares each once per
# connection): SQLAlchemy's per-statement work was a fifth of intake's CPU under load.
_STATE_COLUMNS = (
    "status, incident_id, occurrence_count, first_seen, last_seen, transitions, flapping_since,"
    " resolved_episode, reopenable_until"
)
# One statement for any number of keys. A no-op update takes the row lock and makes RETURNING give
# existing rows too; rows are inserted, hence locked, in the order of the (sorted) array.
_LOCK_STATES = (
    "INSERT INTO alert_state (scope, dedup_key, status) SELECT $1, key, $2 FROM unnest($3::text[]) AS key"
    f" ON CONFLICT (scope, dedup_key) DO UPDATE SET scope = EXCLUDED.scope RETURNING dedup_key, {_STATE_COLUMNS}"
)
# Every changed state of a request batch in one statement: executemany ran an UPDATE per key, which
# was half of PostgreSQL's work for an Alertmanager body. Each row is found by its own primary-key
# probe (LATERAL ... LIMIT 1) and updated by its ctid: a plain join on the keys was planned as a scan
# of the integration's every row. A state's transitions (an array per row) travel as an array
# literal, since arrays of arrays cannot be unnested into rows.
_SAVE_STATES = (
    "WITH u AS (SELECT * FROM unnest($2::text[], $3::text[], $4::uuid[], $5::int[], $6::timestamptz[],"
    " $7::timestamptz[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[])"
    " AS u(dedup_key, status, incident_id, occurrence_count, first_seen, last_seen, transitions, flapping_since,"
    " resolved_episode, reopenable_until)),"
    " t AS (SELECT a.tid, u.* FROM u, LATERAL (SELECT ctid AS tid FROM alert_state"
    " WHERE scope = $1 AND dedup_key = u.dedup_key LIMIT 1) AS a)"
    " UPDATE alert_state AS a SET status = t.status, incident_id = t.incident_id,"
    " occurrence_count = t.occurrence_count, first_seen = t.first_seen, last_seen = t.last_seen,"
    " transitions = t.transitions::timestamptz[], flapping_since = t.flapping_since,"
    " resolved_episode = t.resolved_episode, reopenable_until = t.reopenable_until"
    " FROM t WHERE a.ctid = ANY(ARRAY(SELECT tid FROM t)) AND a.ctid = t.tid"
)
_RECORD_INCIDENTS = (
    "INSERT INTO logged_incidents (incident_id, source, scope, dedup_key, title, logged_at)"
    " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])"
    " ON CONFLICT DO NOTHING"
)


def _state(row: Mapping[str, Any]) -> AlertState:
    return AlertState(
        status=Status(row["status"]),
        incident_id=row["incident_id"],
        occurrence_count=row["occurrence_count"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        transitions=tuple(row["transitions"] or ()),
        flapping_since=row["flapping_since"],
        resolved_episode=row["resolved_episode"],
        reopenable_until=row["reopenable_until"],
    )


async def lock_states(conn: asyncpg.Connection, scope: str, keys: Sequence[str]) -> dict[str, AlertState]:
    """Load and row-lock the state of each key, creating missing rows (one round trip). Keys are
    locked in sorted order, so two requests sharing keys cannot deadlock."""
    rows = await conn.fetch(_LOCK_STATES, scope, Status.INACTIVE.value, sorted(set(keys)))
    return {r["dedup_key"]: _state(r) for r in rows}


async def save_states(conn: Executor, scope: str, states: dict[str, AlertState]) -> None:
    """Write the states of keys locked by `lock_states` in this transaction (one statement)."""
    if not states:
        return
    rows = list(states.values())
    await conn.execute(
        _SAVE_STATES,
        scope,
        list(states),
        [s.status.value for s in rows],
        [s.incident_id for s in rows],
        [s.occurrence_count for s in rows],
        [s.first_seen for s in rows],
        [s.last_seen for s in rows],
        [_array_literal(s.transitions) for s in rows],
        [s.flapping_since for s in rows],
        [s.resolved_episode for s in rows],
        [s.reopenable_until for s in rows],
    )


def _array_literal(instants: Sequence[datetime]) -> str:
    """A timestamptz[] as PostgreSQL reads it from text: ISO 8601 needs no quoting or escaping."""
    return "{" + ",".join(instant.isoformat() for instant in instants) + "}"


@dataclass(frozen=True)
class LoggedIncident:
    incident_id: uuid.UUID
    source: str
    scope: str | None
    dedup_key: str
    title: str
    logged_at: datetime


async def record_incidents(conn: Executor, incidents: Sequence[LoggedIncident]) -> None:
    if incidents:
        await conn.execute(
            _RECORD_INCIDENTS,
            [i.incident_id for i in incidents],
            [i.source for i in incidents],
            [i.scope for i in incidents],
            [i.dedup_key for i in incidents],
            [i.title for i in incidents],
            [i.logged_at for i in incidents],
        )


async def update_incident_states(
    session: AsyncSession, incident_id: uuid.UUID, change: Callable[[AlertState], AlertState]
) -> None:
    """Apply a downstream event's `change` to the state of every key whose incident it is (locked)."""
    conn = await driver_connection(session)
    rows = await conn.fetch(
        f"SELECT scope, dedup_key, {_STATE_COLUMNS} FROM alert_state WHERE incident_id = $1"
        " ORDER BY scope, dedup_key FOR UPDATE",
        incident_id,
    )
    by_scope: dict[str, dict[str, AlertState]] = {}
    for r in rows:
        state = _state(r)
        new = change(state)
        if new != state:
            by_scope.setdefault(r["scope"], {})[r["dedup_key"]] = new
    for scope, states in by_scope.items():
        await save_states(conn, scope, states)
