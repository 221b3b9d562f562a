"""Tables of the intake service (its own database) and the queries of its write path."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from intake.domain import AlertState, Status

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


# One statement for any number of keys, compiled once (a multi-row VALUES is recompiled for each
# row count). A no-op update takes the row lock and makes RETURNING give existing rows too; rows
# are inserted, hence locked, in the order of the (sorted) array.
_LOCK_STATES = sa.text(
    "INSERT INTO alert_state (scope, dedup_key, status)"
    " SELECT :scope, key, :inactive FROM unnest(CAST(:keys AS text[])) AS key"
    " ON CONFLICT (scope, dedup_key) DO UPDATE SET scope = EXCLUDED.scope"
    " RETURNING dedup_key, status, incident_id, occurrence_count, first_seen, last_seen, transitions, flapping_since,"
    " resolved_episode, reopenable_until"
)


async def lock_states(session: AsyncSession, scope: str, keys: Sequence[str]) -> dict[str, AlertState]:
    """Load and row-lock the state of each key, creating missing rows (one round trip). Keys are
    locked in sorted order, so two requests sharing keys cannot deadlock."""
    params = {"scope": scope, "keys": sorted(set(keys)), "inactive": Status.INACTIVE.value}
    rows = (await session.execute(_LOCK_STATES, params)).mappings().all()
    return {
        r["dedup_key"]: AlertState(
            status=Status(r["status"]),
            incident_id=r["incident_id"],
            occurrence_count=r["occurrence_count"],
            first_seen=r["first_seen"],
            last_seen=r["last_seen"],
            transitions=tuple(r["transitions"] or ()),
            flapping_since=r["flapping_since"],
            resolved_episode=r["resolved_episode"],
            reopenable_until=r["reopenable_until"],
        )
        for r in rows
    }


async def save_states(session: AsyncSession, scope: str, states: dict[str, AlertState]) -> None:
    if not states:
        return
    stmt = (
        sa.update(alert_state)
        .where(alert_state.c.scope == sa.bindparam("b_scope"), alert_state.c.dedup_key == sa.bindparam("b_key"))
        .values(
            status=sa.bindparam("b_status"),
            incident_id=sa.bindparam("b_incident"),
            occurrence_count=sa.bindparam("b_count"),
            first_seen=sa.bindparam("b_first"),
            last_seen=sa.bindparam("b_last"),
            transitions=sa.bindparam("b_transitions"),
            flapping_since=sa.bindparam("b_flapping"),
            resolved_episode=sa.bindparam("b_episode"),
            reopenable_until=sa.bindparam("b_reopenable"),
        )
    )
    await session.execute(
        stmt,
        [
            {
                "b_scope": scope,
                "b_key": key,
                "b_status": s.status.value,
                "b_incident": s.incident_id,
                "b_count": s.occurrence_count,
                "b_first": s.first_seen,
                "b_last": s.last_seen,
                "b_transitions": list(s.transitions),
                "b_flapping": s.flapping_since,
                "b_episode": s.resolved_episode,
                "b_reopenable": s.reopenable_until,
            }
            for key, s in states.items()
        ],
    )


async def record_incidents(session: AsyncSession, rows: list[dict[str, object]]) -> None:
    if rows:
        await session.execute(pg_insert(logged_incidents).on_conflict_do_nothing(), rows)


async def update_incident_states(
    session: AsyncSession, incident_id: uuid.UUID, change: Callable[[AlertState], AlertState]
) -> None:
    """Apply a downstream event's `change` to the state of every key whose incident it is (locked)."""
    rows = (
        (
            await session.execute(
                sa.select(alert_state)
                .where(alert_state.c.incident_id == incident_id)
                .order_by(alert_state.c.scope, alert_state.c.dedup_key)
                .with_for_update()
            )
        )
        .mappings()
        .all()
    )
    by_scope: dict[str, dict[str, AlertState]] = {}
    for r in rows:
        state = AlertState(
            status=Status(r["status"]),
            incident_id=r["incident_id"],
            occurrence_count=r["occurrence_count"],
            first_seen=r["first_seen"],
            last_seen=r["last_seen"],
            transitions=tuple(r["transitions"] or ()),
            flapping_since=r["flapping_since"],
            resolved_episode=r["resolved_episode"],
            reopenable_until=r["reopenable_until"],
        )
        new = change(state)
        if new != state:
            by_scope.setdefault(r["scope"], {})[r["dedup_key"]] = new
    for scope, states in by_scope.items():
        await save_states(session, scope, states)
