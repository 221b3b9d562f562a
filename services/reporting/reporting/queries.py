"""Read queries over the active projection version: incident lists (filters, sorting, keyset
pagination, as_of), detail, timeline, and verification of the audit hash chain."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from reporting.domain import GENESIS_HASH, LEGACY_CHAIN, STATUSES, canonical_event, chain_hash, fold_head
from reporting.store import (
    INCIDENT_COLUMNS,
    SORTS,
    chain_heads,
    incident_versions,
    incidents,
    sort_key,
    timeline,
    valid_range,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # what store.EPOCH_SQL is, for cursors
NO_PRIORITY = "P9"  # store.NO_PRIORITY_SQL
FILTER_FIELDS = ("status", "priority", "category", "team", "service", "source", "dedup_key")
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")


class BadParameter(ValueError):
    """A query parameter is invalid; the API answers 400 naming it."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"parameter '{parameter}': {problem}")
        self.parameter = parameter
        self.problem = problem


def parse_timestamp(parameter: str, value: str | None) -> datetime | None:
    """An ISO 8601 timestamp with a timezone (a trailing Z is fine), or None."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadParameter(parameter, f"{value!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise BadParameter(parameter, f"{value!r} has no timezone (add Z or +00:00)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise BadParameter(parameter, f"{value!r} is out of range in UTC") from None


@dataclass
class IncidentFilter:
    values: dict[str, list[str]] = field(default_factory=dict)  # field -> accepted values
    logged_from: datetime | None = None
    logged_to: datetime | None = None

    @classmethod
    def parse(cls, raw: dict[str, str | None], logged_from: str | None, logged_to: str | None) -> IncidentFilter:
        values: dict[str, list[str]] = {}
        for name, value in raw.items():
            if value is None:
                continue
            items = [v.strip() for v in value.split(",") if v.strip()]
            if not items:
                raise BadParameter(name, "is empty")
            if "\x00" in value:  # PostgreSQL text cannot hold NUL: no value can match, and asyncpg fails
                raise BadParameter(name, "contains a NUL character")
            if name == "status" and (bad := [v for v in items if v not in STATUSES]):
                raise BadParameter(name, f"{bad[0]!r} is not one of {', '.join(STATUSES)}")
            if name == "priority" and (bad := [v for v in items if v not in PRIORITIES]):
                raise BadParameter(name, f"{bad[0]!r} is not one of {', '.join(PRIORITIES)}")
            values[name] = items
        start, end = parse_timestamp("from", logged_from), parse_timestamp("to", logged_to)
        if start and end and start >= end:
            raise BadParameter("from", "must be before 'to'")
        return cls(values, start, end)

    def where(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = [table.c[name].in_(items) for name, items in self.values.items()]
        if self.logged_from is not None:
            clauses.append(table.c.logged_at >= self.logged_from)
        if self.logged_to is not None:
            clauses.append(table.c.logged_at < self.logged_to)
        return clauses


def _sort_value(row: Any, sort: str) -> Any:
    if sort == "priority":
        return row.priority or NO_PRIORITY
    return row._mapping[sort] or EPOCH


def parse_sort(value: str) -> tuple[str, bool]:
    descending = value.startswith("-")
    name = value[1:] if descending else value
    if name not in SORTS:
        options = ", ".join(f"{s}, -{s}" for s in SORTS)
        raise BadParameter("sort", f"{value!r} is not one of {options}")
    return name, descending


def encode_cursor(sort: str, value: Any, incident_id: uuid.UUID) -> str:
    encoded = value.isoformat() if isinstance(value, datetime) else value
    return base64.urlsafe_b64encode(orjson.dumps([sort, encoded, str(incident_id)])).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, uuid.UUID]:
    not_ours = BadParameter("cursor", "is not a cursor this service issued")
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        cursor_sort, value, incident_id = raw
        parsed_id = uuid.UUID(incident_id)
    except (binascii.Error, ValueError, TypeError, AttributeError, orjson.JSONDecodeError):
        raise not_ours from None
    # Every part is checked: a hand-made cursor must not reach the database as a wrong type.
    if not isinstance(cursor_sort, str) or not isinstance(value, str):
        raise not_ours
    if cursor_sort != sort:
        raise BadParameter("cursor", f"was issued for sort {cursor_sort!r}, not {sort!r}")
    if parse_sort(sort)[0] == "priority":  # "-priority" too
        if value not in (*PRIORITIES, NO_PRIORITY):
            raise not_ours
        return value, parsed_id
    try:
        return parse_timestamp("cursor", value) or EPOCH, parsed_id
    except BadParameter:
        raise not_ours from None


def as_of_table(version: int, as_of: datetime | None) -> tuple[sa.Table | sa.Subquery, list[sa.ColumnElement[bool]]]:
    """The table to read incidents from, and the predicates picking `version` (at `as_of`)."""
    if as_of is None:
        return incidents, [incidents.c.version == version]
    iv = incident_versions
    # valid_from <= as_of < valid_to (or no valid_to), as the SP-GiST index on the range answers it.
    return iv, [iv.c.version == version, valid_range(iv).op("@>")(sa.literal(as_of, sa.DateTime(timezone=True)))]


async def list_incidents(
    session: AsyncSession,
    version: int,
    filters: IncidentFilter,
    sort: str,
    limit: int,
    cursor: str | None,
    as_of: datetime | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of incidents and the cursor of the next page (None on the last)."""
    name, descending = parse_sort(sort)
    table, where = as_of_table(version, as_of)
    assert isinstance(table, sa.Table)
    key = sort_key(table, name)
    where += filters.where(table)
    if cursor:
        value, after_id = decode_cursor(cursor, sort)
        position = sa.tuple_(key, table.c.incident_id)
        where.append(position < sa.tuple_(value, after_id) if descending else position > sa.tuple_(value, after_id))
    order = [key.desc(), table.c.incident_id.desc()] if descending else [key.asc(), table.c.incident_id.asc()]
    columns = [table.c[c] for c in INCIDENT_COLUMNS]
    rows = (await session.execute(sa.select(*columns).where(*where).order_by(*order).limit(limit + 1))).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(sort, _sort_value(last, name), last.incident_id)
    return [dict(r._mapping) for r in rows], next_cursor


async def get_incident(
    session: AsyncSession, version: int, incident_id: uuid.UUID, as_of: datetime | None
) -> dict[str, Any] | None:
    table, where = as_of_table(version, as_of)
    assert isinstance(table, sa.Table)
    columns = [table.c[c] for c in INCIDENT_COLUMNS]
    row = (await session.execute(sa.select(*columns).where(*where, table.c.incident_id == incident_id))).first()
    return dict(row._mapping) if row else None


async def incident_exists(session: AsyncSession, version: int, incident_id: uuid.UUID) -> bool:
    found = await session.scalar(
        sa.select(sa.literal(1)).where(incidents.c.version == version, incidents.c.incident_id == incident_id)
    )
    return found is not None


def timeline_entry(row: Any) -> dict[str, Any]:
    m = dict(row._mapping)
    m.pop("version", None)
    m["payload"] = orjson.loads(m["payload"])
    m["position"] = {"topic": m.pop("topic"), "partition": m.pop("partition"), "offset": m.pop("offset")}
    return m


async def incident_timeline(session: AsyncSession, version: int, incident_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(
        sa.select(timeline)
        .where(timeline.c.version == version, timeline.c.incident_id == incident_id)
        .order_by(timeline.c.seq)
    )
    return [timeline_entry(r) for r in rows]


async def verify_chain(session: AsyncSession, version: int, page: int = 5000) -> dict[str, Any]:
    """Recompute every entry's hash from its stored columns, in applied order; name the first
    entry whose stored hash, previous-hash link or sequence number does not match. Per aggregate
    chains (PER_SUBJECT_CHAINS): an entry links to its subject's entry before it, and the version's
    head is recomputed as the chain over those chains; the legacy scheme is one chain through all."""
    head = (await session.execute(sa.select(chain_heads).where(chain_heads.c.version == version))).first()
    head_seq = int(head.seq) if head else 0
    legacy = head is not None and head.scheme == LEGACY_CHAIN
    # The running head of the version and, per aggregate, of its chain (a hash of 64 characters
    # per incident: a few MB per hundred thousand incidents).
    top, expected_seq, checked = GENESIS_HASH, 1, 0
    chains: dict[str, str] = {}
    while True:
        rows = (
            await session.execute(
                sa.select(timeline)
                .where(timeline.c.version == version, timeline.c.seq >= expected_seq, timeline.c.seq <= head_seq)
                .order_by(timeline.c.seq)
                .limit(page)
            )
        ).all()
        if not rows:
            break
        for r in rows:
            problem = None
            link = top if legacy else chains.get(r.subject, GENESIS_HASH)
            if r.seq != expected_seq:
                problem = f"entry {expected_seq} is missing (next entry is {r.seq})"
            elif r.prev_hash != link:
                problem = (
                    "prev_hash does not match the hash of the entry before it"
                    if legacy
                    else "prev_hash does not match the hash of the entry before it in its chain (same subject)"
                )
            else:
                computed = chain_hash(
                    link,
                    canonical_event(
                        event_id=r.event_id,
                        event_type=r.event_type,
                        schema_version=r.schema_version,
                        incident_id=r.incident_id,
                        subject=r.subject,
                        occurred_at=r.occurred_at,
                        producer=r.producer,
                        correlation_id=r.correlation_id,
                        causation_id=r.causation_id,
                        actor=r.actor,
                        payload=r.payload,
                    ),
                )
                if computed != r.hash:
                    problem = "content does not match its hash (the entry was altered)"
            if problem:
                return {
                    "ok": False,
                    "version": version,
                    "entries_checked": checked,
                    "first_mismatch": {
                        "seq": r.seq,
                        "event_id": str(r.event_id),
                        "event_type": r.event_type,
                        "incident_id": str(r.incident_id) if r.incident_id else None,
                        "problem": problem,
                    },
                }
            if legacy:
                top = r.hash
            else:
                chains[r.subject] = r.hash
                top = fold_head(top, r.hash)
            expected_seq, checked = expected_seq + 1, checked + 1
    if checked != head_seq or (head is not None and head.hash != top):
        problem = (
            f"the chain head says {head_seq} entries"
            if checked != head_seq
            else "the chain head's hash does not match the entries (the head was altered)"
        )
        return {
            "ok": False,
            "version": version,
            "entries_checked": checked,
            "first_mismatch": {"seq": checked + 1 if checked != head_seq else head_seq, "problem": problem},
        }
    return {"ok": True, "version": version, "entries_checked": checked, "head_hash": top}
