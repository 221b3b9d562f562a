"""Applies batches of events to one projection version: incidents, their history, the
hash-chained timeline and the log positions, all in the consumer's transaction, with a handful
of round trips per batch whatever its size (COPY for the append-only tables)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.consumer import Delivery
from reporting.domain import (
    GENESIS_HASH,
    STATE_FIELDS,
    IncidentState,
    apply_event,
    canonical_event,
    canonical_payload,
    chain_hash,
    decode_status,
    state_from_row,
)
from reporting.store import INCIDENT_COLUMNS, TIMELINE_COLUMNS, VERSION_COLUMNS

assert list(STATE_FIELDS) == INCIDENT_COLUMNS, "IncidentState fields must follow the incidents columns"


async def raw_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session, inside the session's open transaction."""
    conn = await session.connection()
    fairy = await conn.get_raw_connection()
    driver = fairy.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver


@dataclass
class _Pending:
    """What one batch will write, accumulated in memory first."""

    timeline: list[tuple[Any, ...]] = field(default_factory=list)
    history: list[list[Any]] = field(default_factory=list)  # valid_to filled in later in the batch
    open_history: dict[uuid.UUID, list[Any]] = field(default_factory=dict)  # incident -> its last row
    close_stored: dict[uuid.UUID, tuple[int, datetime]] = field(default_factory=dict)  # seq, valid_to


class Projector:
    """The batch handler of one projection version (ConsumerSpec.batch_handler), and the writer of
    its log positions (ConsumerSpec.save_positions): both run in the batch's transaction."""

    def __init__(self, version: int) -> None:
        self.version = version

    async def __call__(self, session: AsyncSession, deliveries: list[Delivery]) -> None:
        if deliveries:
            await apply_batch(await raw_connection(session), self.version, deliveries)

    async def save_positions(self, session: AsyncSession, last: dict[tuple[str, int], int]) -> None:
        """Every record of the batch counts, applied or not (a duplicate the inbox absorbed, a
        dead letter): otherwise a partition ending in such records would be re-read on restart."""
        await (await raw_connection(session)).executemany(
            'INSERT INTO positions (version, topic, partition, "offset") VALUES ($1, $2, $3, $4)'
            " ON CONFLICT (version, topic, partition)"
            ' DO UPDATE SET "offset" = GREATEST(positions."offset", EXCLUDED."offset")',
            [(self.version, t, p, o) for (t, p), o in last.items()],
        )


async def apply_batch(conn: asyncpg.Connection, version: int, deliveries: Sequence[Delivery]) -> None:
    """Apply `deliveries` (in log order) to projection `version` within the caller's transaction."""
    # Lock the chain head first: appends are serialized, so the chain can never fork.
    await conn.execute(
        "INSERT INTO chain_heads (version, seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING", version, GENESIS_HASH
    )
    head = await conn.fetchrow("SELECT seq, hash FROM chain_heads WHERE version = $1 FOR UPDATE", version)
    seq, prev = int(head["seq"]), str(head["hash"])
    # The positions stored with the rows are the authority on what this version has applied. The
    # consumer seeks past them, but only after a rebalance's fetches may have started from the
    # group's offsets (aiokafka runs the assignment listener late), so records at or before them
    # can still arrive; they were applied already. The inbox catches the same event re-sent at a
    # new offset.
    applied = {
        (r["topic"], r["partition"]): r["offset"]
        for r in await conn.fetch('SELECT topic, partition, "offset" FROM positions WHERE version = $1', version)
    }
    deliveries = [d for d in deliveries if d.position[2] > applied.get(d.position[:2], -1)]
    if not deliveries:
        return

    ids = list({d.envelope.incident_id for d in deliveries if d.envelope.incident_id is not None})
    states: dict[uuid.UUID, IncidentState] = {}
    if ids:
        rows = await conn.fetch(
            f"SELECT {', '.join(STATE_FIELDS)} FROM incidents WHERE version = $1 AND incident_id = ANY($2::uuid[])",
            version,
            ids,
        )
        states = {r["incident_id"]: state_from_row(r) for r in rows}
    stored = set(states)

    pending = _Pending()
    for d in deliveries:
        env = d.envelope
        payload_text = canonical_payload(env.payload)
        digest = chain_hash(
            prev,
            canonical_event(
                event_id=env.event_id,
                event_type=env.event_type,
                schema_version=env.schema_version,
                incident_id=env.incident_id,
                subject=env.subject,
                occurred_at=env.occurred_at,
                producer=env.producer,
                correlation_id=env.correlation_id,
                causation_id=env.causation_id,
                actor=env.actor,
                payload=payload_text,
            ),
        )
        seq += 1
        topic, partition, offset = d.position
        pending.timeline.append(
            (
                version,
                seq,
                env.event_id,
                env.event_type,
                env.schema_version,
                decode_status(env, d.payload, d.decode_error),
                env.incident_id,
                env.subject,
                env.occurred_at,
                env.producer,
                env.actor,
                env.correlation_id,
                env.causation_id,
                payload_text,
                topic,
                partition,
                offset,
                prev,
                digest,
            )
        )
        prev = digest
        if env.incident_id is not None:
            _apply_to_incident(pending, states, stored, version, d)

    await conn.copy_records_to_table("timeline", records=pending.timeline, columns=TIMELINE_COLUMNS)
    if pending.close_stored:
        closing = list(pending.close_stored.items())
        await conn.execute(
            "UPDATE incident_versions AS iv SET valid_to = c.valid_to"
            " FROM unnest($2::uuid[], $3::int[], $4::timestamptz[]) AS c(incident_id, seq, valid_to)"
            " WHERE iv.version = $1 AND iv.incident_id = c.incident_id AND iv.seq = c.seq",
            version,
            [i for i, _ in closing],
            [s for _, (s, _) in closing],
            [t for _, (_, t) in closing],
        )
    if pending.history:
        await conn.copy_records_to_table(
            "incident_versions", records=[tuple(r) for r in pending.history], columns=VERSION_COLUMNS
        )
    if states:
        # Replace the touched rows: a delete plus one COPY beats a row-by-row upsert.
        changed = list(states)
        await conn.execute(
            "DELETE FROM incidents WHERE version = $1 AND incident_id = ANY($2::uuid[])", version, changed
        )
        await conn.copy_records_to_table(
            "incidents",
            records=[(version, *states[i].__dict__.values()) for i in changed],
            columns=["version", *INCIDENT_COLUMNS],
        )
    await conn.execute("UPDATE chain_heads SET seq = $2, hash = $3 WHERE version = $1", version, seq, prev)


def _apply_to_incident(
    pending: _Pending, states: dict[uuid.UUID, IncidentState], stored: set[uuid.UUID], version: int, d: Delivery
) -> None:
    env = d.envelope
    assert env.incident_id is not None
    incident_id = env.incident_id
    before = states.get(incident_id) or IncidentState(incident_id=incident_id)
    after = apply_event(before, env, d.payload)
    states[incident_id] = after
    # The new state holds from this event's time (never before the previous change: producers'
    # clocks may disagree) until the next change.
    valid_from = after.last_event_at
    assert valid_from is not None
    previous = pending.open_history.get(incident_id)
    if previous is not None:
        previous[3] = valid_from  # valid_to of the row written earlier in this batch
    elif incident_id in stored:
        pending.close_stored[incident_id] = (before.event_count, valid_from)
    record = [
        version,
        after.event_count,
        valid_from,
        None,
        env.event_id,
        *(getattr(after, c) for c in INCIDENT_COLUMNS),
    ]
    pending.history.append(record)
    pending.open_history[incident_id] = record
