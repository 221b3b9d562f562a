"""Tables of the triage service (its own database) and the queries on them."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.db import driver_fetch, write_rows
from triage import domain

metadata = sa.MetaData()

# One row per incident this service has triaged: the facts it decided on, the automatic
# decision with its explanation, the overrides in force, and what it last announced.
incidents = sa.Table(
    "triage_incidents",
    metadata,
    sa.Column("incident_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("correlation_id", sa.Text),
    sa.Column("facts", pg.JSONB, nullable=False),
    sa.Column("decision", pg.JSONB, nullable=False),
    sa.Column("overrides", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("subcategory", sa.Text),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("triage_incidents_logged_at", incidents.c.logged_at)  # dry runs read the latest incidents

# Every version of every configuration (kind: categories | rules | matrix); the highest
# version of a kind is in force. Rows are never updated: this is the history.
config_versions = sa.Table(
    "config_versions",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("body", pg.JSONB, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

KINDS = ("categories", "rules", "matrix")


# --------------------------------------------------------------------------- configuration


async def current_configs(session: AsyncSession) -> dict[str, sa.Row[Any]]:
    """The version in force of each configuration kind (kinds never saved are absent)."""
    latest = (
        sa.select(config_versions.c.kind, sa.func.max(config_versions.c.version).label("version"))
        .group_by(config_versions.c.kind)
        .subquery()
    )
    rows = (
        await session.execute(
            sa.select(config_versions).join(
                latest, sa.and_(latest.c.kind == config_versions.c.kind, latest.c.version == config_versions.c.version)
            )
        )
    ).all()
    return {r.kind: r for r in rows}


def policy_from(
    rows: dict[str, sa.Row[Any]], criticality: dict[str, int], thresholds: tuple[int, ...]
) -> domain.Policy:
    """Rebuild the policy from stored bodies (they were validated when saved)."""
    tree = domain.DEFAULT_TREE
    if "categories" in rows:
        body = rows["categories"].body
        tree = domain.build_tree(rows["categories"].version, body["categories"], body.get("fallback"))
    rules = domain.DEFAULT_RULES
    if "rules" in rows:
        rules = domain.build_rules(
            rows["rules"].version, domain.parse_rules(rows["rules"].body["rules"]), tree, stored=True
        )
    matrix = domain.DEFAULT_MATRIX
    if "matrix" in rows:
        matrix = domain.build_matrix(rows["matrix"].version, rows["matrix"].body["matrix"])
    return domain.Policy(tree=tree, rules=rules, matrix=matrix, criticality=criticality, count_thresholds=thresholds)


async def versions_in_force(session: AsyncSession) -> dict[str, int]:
    """The version in force of each configuration kind: one index-only query, cheap enough to run
    once per unit of work so a cached policy is never stale."""
    return {kind: version for kind, version in await driver_fetch(session, _VERSIONS_IN_FORCE)}


async def configs_at(session: AsyncSession, versions: dict[str, int]) -> dict[str, sa.Row[Any]]:
    """The stored rows of exactly these versions (kind -> version)."""
    if not versions:
        return {}
    wanted = sa.tuple_(config_versions.c.kind, config_versions.c.version).in_(list(versions.items()))
    rows = (await session.execute(sa.select(config_versions).where(wanted))).all()
    return {r.kind: r for r in rows}


async def lock_config(session: AsyncSession) -> None:
    """Serialise configuration changes (they validate against each other) for this transaction."""
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(0x7472696167)))  # "triag"


async def save_config(
    session: AsyncSession, kind: str, version: int, body: dict[str, Any], actor: str, comment: str | None, at: datetime
) -> bool:
    """Insert a version; False when it already exists (a racing replica seeded it)."""
    result = await session.execute(
        pg.insert(config_versions)
        .values(kind=kind, version=version, body=body, actor=actor, comment=comment, created_at=at)
        .on_conflict_do_nothing()
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def config_history(session: AsyncSession, kind: str, limit: int = 100) -> list[sa.Row[Any]]:
    return list(
        (
            await session.execute(
                sa.select(config_versions)
                .where(config_versions.c.kind == kind)
                .order_by(config_versions.c.version.desc())
                .limit(limit)
            )
        ).all()
    )


# --------------------------------------------------------------------------- incidents


async def load_incident(session: AsyncSession, incident_id: uuid.UUID, lock: bool = False) -> sa.Row[Any] | None:
    query = sa.select(incidents).where(incidents.c.incident_id == incident_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def recent_incidents(session: AsyncSession, limit: int) -> list[sa.Row[Any]]:
    return list((await session.execute(sa.select(incidents).order_by(incidents.c.logged_at.desc()).limit(limit))).all())


def decision_json(decision: domain.Decision) -> dict[str, Any]:
    return asdict(decision)


def overrides_json(overrides: domain.Overrides) -> dict[str, Any]:
    return {k: v for k, v in asdict(overrides).items() if v is not None}


def overrides_from(raw: dict[str, Any] | None) -> domain.Overrides:
    raw = raw or {}
    c, p = raw.get("category"), raw.get("priority")
    return domain.Overrides(
        category=domain.CategoryOverride(**c) if c else None,
        priority=domain.PriorityOverride(**p) if p else None,
    )


def decision_from(raw: Mapping[str, Any]) -> domain.Decision:
    """The decision as `decision_json` stored it (keys a newer release dropped are ignored)."""
    c, p = raw["categorization"], raw["prioritization"]
    c = {k: v for k, v in c.items() if k in _CATEGORIZATION_FIELDS}
    p = {k: v for k, v in p.items() if k in _PRIORITIZATION_FIELDS}
    return domain.Decision(
        categorization=domain.Categorization(**{**c, "matched_rules": tuple(c.get("matched_rules") or ())}),
        prioritization=domain.Prioritization(
            **{**p, "impact_reasons": tuple(p["impact_reasons"]), "urgency_reasons": tuple(p["urgency_reasons"])}
        ),
    )


_CATEGORIZATION_FIELDS = frozenset(f.name for f in fields(domain.Categorization))
_PRIORITIZATION_FIELDS = frozenset(f.name for f in fields(domain.Prioritization))


# The reads of every batch go to the driver as plain statements, prepared once per connection:
# through SQLAlchemy each cost about 110-150 us of Python, through the driver about 70.
class _StateRow(NamedTuple):
    incident_id: uuid.UUID
    logged_at: datetime
    title: str
    correlation_id: str | None
    facts: Any
    decision: Any
    overrides: Any
    category: str
    subcategory: str | None
    priority: str


_LOAD_STATES = (
    f"SELECT {', '.join(_StateRow._fields)} FROM triage_incidents WHERE incident_id = ANY($1::uuid[])"
    " ORDER BY incident_id FOR UPDATE"
)
_VERSIONS_IN_FORCE = "SELECT kind, max(version) AS version FROM config_versions GROUP BY kind"
# A batch's first read in one round trip: the versions in force (as two arrays) on every row, and
# the incidents' states locked in id order (the CTE runs whole, in its order, before the join);
# with no incident found, one row of versions and no state.
_LOAD_STATES_AND_VERSIONS = (
    "WITH v AS (SELECT array_agg(kind) AS kinds, array_agg(version) AS versions"
    f" FROM ({_VERSIONS_IN_FORCE}) AS k),"
    f" s AS MATERIALIZED ({_LOAD_STATES})"
    f" SELECT v.kinds, v.versions, {', '.join('s.' + f for f in _StateRow._fields)} FROM v LEFT JOIN s ON true"
)


def _state_from(row: Any) -> domain.TriageState:
    return domain.TriageState(
        facts=domain.Facts.from_json(row.facts),
        decision=decision_from(row.decision),
        overrides=overrides_from(row.overrides),
        category=row.category,
        subcategory=row.subcategory,
        priority=row.priority,
        logged_at=row.logged_at,
        title=row.title,
        correlation_id=row.correlation_id,
    )


async def load_states(session: AsyncSession, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, domain.TriageState]:
    """The states of these incidents (those triaged), in one query. The rows are locked in id order,
    so a command and a batch on the same incident are serialised and two batches cannot deadlock."""
    if not ids:
        return {}
    rows = [_StateRow(*row) for row in await driver_fetch(session, _LOAD_STATES, sorted(ids))]
    return {row.incident_id: _state_from(row) for row in rows}


async def load_states_and_versions(
    session: AsyncSession, ids: Collection[uuid.UUID]
) -> tuple[dict[uuid.UUID, domain.TriageState], dict[str, int]]:
    """`load_states` and `versions_in_force` in one query: what every batch reads first."""
    rows = await driver_fetch(session, _LOAD_STATES_AND_VERSIONS, sorted(ids))
    kinds, versions = rows[0][0] or [], rows[0][1] or []
    states = [_StateRow(*row[2:]) for row in rows if row[2] is not None]
    return {row.incident_id: _state_from(row) for row in states}, dict(zip(kinds, versions, strict=True))


_MUTABLE = ("facts", "decision", "overrides", "category", "subcategory", "priority", "updated_at")


async def save_states(session: AsyncSession, changed: Mapping[uuid.UUID, domain.TriageState], at: datetime) -> None:
    """Write these states: one statement."""
    rows = [
        {
            "incident_id": incident_id,
            "logged_at": s.logged_at,
            "title": s.title,
            "correlation_id": s.correlation_id,
            "facts": s.facts.as_json(),
            "decision": decision_json(s.decision),
            "overrides": overrides_json(s.overrides),
            "category": s.category,
            "subcategory": s.subcategory,
            "priority": s.priority,
            "updated_at": at,
        }
        for incident_id, s in sorted(changed.items())
    ]
    await write_rows(session, incidents, rows, key=["incident_id"], update=_MUTABLE)
