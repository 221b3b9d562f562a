"""Applies batches of events to one projection version: incidents, their history, the
hash-chained timeline and the log positions, all in the consumer's transaction, with a handful
of round trips per batch whatever its size (COPY for the append-only tables)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from opsledger.bus.consumer import Delivery
from opsledger.db import driver_connection
from reporting.domain import (
    GENESIS_HASH,
    LEGACY_CHAIN,
    PER_SUBJECT_CHAINS,
    STATE_FIELDS,
    IncidentState,
    canonical_event,
    canonical_payload,
    chain_hash,
    decode_status,
    evolve,
    fold_head,
    state_from_row,
)
from reporting.store import INCIDENT_COLUMNS, TIMELINE_COLUMNS, VERSION_COLUMNS

assert list(STATE_FIELDS) == INCIDENT_COLUMNS, "IncidentState fields must follow the incidents columns"


@dataclass
class _Pending:
    """What one batch will write, accumulated in memory first."""

    timeline: list[tuple[Any, ...]] = field(default_factory=list)
    history: list[list[Any]] = field(default_factory=list)  # valid_to filled in later in the batch
    history_no_sla: list[list[Any]] = field(default_factory=list)  # the same, in HISTORY_NO_SLA
    open_history: dict[uuid.UUID, list[Any]] = field(default_factory=dict)  # incident -> its last row
    close_stored: dict[uuid.UUID, tuple[int, datetime]] = field(default_factory=dict)  # seq, valid_to


# Most history rows have no SLA target warned or breached: they leave those two lists to the
# column's default (empty), as asyncpg takes about a microsecond to encode an empty array.
_SLA_LISTS = slice(VERSION_COLUMNS.index("sla_warned"), VERSION_COLUMNS.index("sla_breached") + 1)
assert VERSION_COLUMNS[_SLA_LISTS] == ["sla_warned", "sla_breached"]
HISTORY_NO_SLA = VERSION_COLUMNS[: _SLA_LISTS.start] + VERSION_COLUMNS[_SLA_LISTS.stop :]

# How many incidents (and chains) a projector keeps in memory between batches: about 1.5 kB each.
# 10,000 is the last 50 s of a 200 alerts/s storm, where an incident's events fall; twice that put
# reporting past 200 MB of RSS after the pipeline bench.
WARM_LIMIT = 10_000


@dataclass
class Warm:
    """What a projector's last batches left in the database, kept in memory so the next batch
    need not read it back: the incidents' states and the chains' heads. Valid only while the
    version's head is at `seq`, which this projector wrote: any other writer (another replica,
    a rolled-back transaction, a batch that failed halfway) leaves the head elsewhere, and then
    everything is read from the database again."""

    seq: int = -1
    states: dict[uuid.UUID, IncidentState] = field(default_factory=dict)
    chains: dict[str, str] = field(default_factory=dict)

    def keep(self, states: dict[uuid.UUID, IncidentState], chains: dict[str, str], seq: int) -> None:
        _refresh(self.states, states)
        _refresh(self.chains, chains)
        self.seq = seq


K = TypeVar("K")
V = TypeVar("V")


def _refresh(cache: dict[K, V], fresh: dict[K, V]) -> None:
    """Put `fresh` last in `cache` (most recently used), then drop the oldest beyond WARM_LIMIT."""
    for key, value in fresh.items():
        cache.pop(key, None)
        cache[key] = value
    for key in list(itertools.islice(cache, max(0, len(cache) - WARM_LIMIT))):
        del cache[key]


class Projector:
    """The batch handler of one projection version (ConsumerSpec.batch_handler), and the writer of
    its log positions (ConsumerSpec.save_positions): both run in the batch's transaction."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.warm = Warm()

    async def __call__(self, session: AsyncSession, deliveries: list[Delivery]) -> None:
        if deliveries:
            await apply_batch(await driver_connection(session), self.version, deliveries, self.warm)

    async def save_positions(self, session: AsyncSession, last: dict[tuple[str, int], int]) -> None:
        """Every record of the batch counts, applied or not (a duplicate the inbox absorbed, a
        dead letter): otherwise a partition ending in such records would be re-read on restart."""
        await (await driver_connection(session)).executemany(
            'INSERT INTO positions (version, topic, partition, "offset") VALUES ($1, $2, $3, $4)'
            " ON CONFLICT (version, topic, partition)"
            ' DO UPDATE SET "offset" = GREATEST(positions."offset", EXCLUDED."offset")',
            [(self.version, t, p, o) for (t, p), o in last.items()],
        )


async def apply_batch(
    conn: asyncpg.Connection, version: int, deliveries: Sequence[Delivery], warm: Warm | None = None
) -> None:
    """Apply `deliveries` (in log order) to projection `version` within the caller's transaction.
    `warm`: what this caller's previous batches wrote, if it is still what the database holds."""
    # Lock the version's head first: one writer per version at a time, so no chain can fork.
    await conn.execute(
        "INSERT INTO chain_heads (version, seq, hash, scheme) VALUES ($1, 0, $2, $3) ON CONFLICT DO NOTHING",
        version,
        GENESIS_HASH,
        PER_SUBJECT_CHAINS,
    )
    head = await conn.fetchrow("SELECT seq, hash, scheme FROM chain_heads WHERE version = $1 FOR UPDATE", version)
    seq, top, legacy = int(head["seq"]), str(head["hash"]), head["scheme"] == LEGACY_CHAIN
    # The positions stored with the rows are the authority on what this version has applied. The
    # consumer seeks past them, but only after a rebalance's fetches may have started from the
    # group's offsets (aiokafka runs the assignment listener late), so records at or before them
    # can still arrive; they were applied already. The inbox catches the same event re-sent at a
    # new offset.
    applied = {
        (r["topic"], r["partition"]): r["offset"]
        for r in await conn.fetch('SELECT topic, partition, "offset" FROM positions WHERE version = $1', version)
    }
    if applied:
        deliveries = [d for d in deliveries if d.record.offset > applied.get((d.record.topic, d.record.partition), -1)]
    if not deliveries:
        return
    if warm is None:
        warm = Warm()
    elif warm.seq != seq:  # someone else wrote since (or our last batch did not commit)
        warm.states.clear()
        warm.chains.clear()
    warm.seq = -1  # until this batch is fully applied: its states are changed in place

    states: dict[uuid.UUID, IncidentState] = {}
    chains: dict[str, str] = {}  # the head of each aggregate's chain (PER_SUBJECT_CHAINS)
    missing: list[uuid.UUID] = []
    for incident_id in {d.envelope.incident_id for d in deliveries if d.envelope.incident_id is not None}:
        if (state := warm.states.get(incident_id)) is not None:
            states[incident_id] = state
        else:
            missing.append(incident_id)
    if missing:
        # One index probe per key (LATERAL ... LIMIT 1), whatever the table's statistics say.
        rows = await conn.fetch(
            f"SELECT {', '.join('i.' + c for c in STATE_FIELDS)} FROM unnest($2::uuid[]) AS k(id),"
            " LATERAL (SELECT * FROM incidents WHERE version = $1 AND incident_id = k.id LIMIT 1) AS i",
            version,
            missing,
        )
        states.update((r["incident_id"], state_from_row(r)) for r in rows)
    stored = set(states)
    if not legacy:
        unknown: list[str] = []
        for subject in {d.envelope.subject for d in deliveries}:
            if (link := warm.chains.get(subject)) is not None:
                chains[subject] = link
            else:
                unknown.append(subject)
        if unknown:
            rows = await conn.fetch(
                "SELECT a.subject, a.hash FROM unnest($2::text[]) AS k(subject),"
                " LATERAL (SELECT subject, hash FROM audit_chains WHERE version = $1 AND subject = k.subject LIMIT 1)"
                " AS a",
                version,
                unknown,
            )
            chains.update((r["subject"], r["hash"]) for r in rows)
    chain_seq: dict[str, int] = {}

    pending = _Pending()
    timeline_rows = pending.timeline
    for d in deliveries:
        env = d.envelope
        payload_text = canonical_payload(env.payload)
        canonical = canonical_event(
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
        )
        seq += 1
        if legacy:
            prev = top
            top = digest = chain_hash(prev, canonical)
        else:
            prev = chains.get(env.subject, GENESIS_HASH)
            chains[env.subject] = digest = chain_hash(prev, canonical)
            chain_seq[env.subject] = seq
            top = fold_head(top, digest)
        record = d.record
        timeline_rows.append(
            (
                version,
                seq,
                env.event_id,
                env.event_type,
                env.schema_version,
                "ok" if d.payload is not None else decode_status(env, None, d.decode_error),
                env.incident_id,
                env.subject,
                env.occurred_at,
                env.producer,
                env.actor,
                env.correlation_id,
                env.causation_id,
                payload_text,
                record.topic,
                record.partition,
                record.offset,
                prev,
                digest,
            )
        )
        if env.incident_id is not None:
            _apply_to_incident(pending, states, stored, version, d)

    await conn.copy_records_to_table("timeline", records=timeline_rows, columns=TIMELINE_COLUMNS)
    if pending.close_stored:
        closing = list(pending.close_stored.items())
        # Each row is found by its own primary-key probe (LATERAL ... LIMIT 1 is never flattened
        # into a join) and updated by its ctid, so the plan cannot degrade into reading the whole
        # version, as a plain join did on a fresh (never analysed) table: quadratic over a rebuild.
        await conn.execute(
            "WITH c AS (SELECT t.ctid AS tid, c.valid_to"
            " FROM unnest($2::uuid[], $3::int[], $4::timestamptz[]) AS c(incident_id, seq, valid_to),"
            " LATERAL (SELECT ctid FROM incident_versions"
            " WHERE version = $1 AND incident_id = c.incident_id AND seq = c.seq LIMIT 1) AS t)"
            " UPDATE incident_versions AS iv SET valid_to = c.valid_to FROM c"
            " WHERE iv.ctid = ANY(ARRAY(SELECT tid FROM c)) AND iv.ctid = c.tid",
            version,
            [i for i, _ in closing],
            [s for _, (s, _) in closing],
            [t for _, (_, t) in closing],
        )
    for rows, columns in ((pending.history, VERSION_COLUMNS), (pending.history_no_sla, HISTORY_NO_SLA)):
        if rows:
            await conn.copy_records_to_table("incident_versions", records=rows, columns=columns)
    if states:
        # Replace the touched rows: a delete plus one COPY beats a row-by-row upsert.
        changed = list(states)
        await conn.execute(
            "DELETE FROM incidents WHERE ctid = ANY(ARRAY(SELECT t.ctid FROM unnest($2::uuid[]) AS k(id),"
            " LATERAL (SELECT ctid FROM incidents WHERE version = $1 AND incident_id = k.id LIMIT 1) AS t))",
            version,
            changed,
        )
        await conn.copy_records_to_table(
            "incidents",
            records=[(version, *states[i].__dict__.values()) for i in changed],
            columns=["version", *INCIDENT_COLUMNS],
        )
    if chain_seq:
        await conn.execute(
            "INSERT INTO audit_chains (version, subject, seq, hash)"
            " SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[])"
            " ON CONFLICT (version, subject) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
            version,
            list(chain_seq),
            list(chain_seq.values()),
            [chains[s] for s in chain_seq],
        )
    await conn.execute("UPDATE chain_heads SET seq = $2, hash = $3 WHERE version = $1", version, seq, top)
    warm.keep(states, {s: chains[s] for s in chain_seq}, seq)


def _apply_to_incident(
    pending: _Pending, states: dict[uuid.UUID, IncidentState], stored: set[uuid.UUID], version: int, d: Delivery
) -> None:
    env = d.envelope
    assert env.incident_id is not None
    incident_id = env.incident_id
    after = states.get(incident_id)
    if after is None:
        after = states[incident_id] = IncidentState(incident_id=incident_id)
    # In place: the history row below snapshots the state (every field value is immutable).
    count_before = after.event_count
    evolve(after, env, d.payload)
    # The new state holds from this event's time (never before the previous change: producers'
    # clocks may disagree) until the next change.
    valid_from = after.last_event_at
    assert valid_from is not None
    previous = pending.open_history.get(incident_id)
    if previous is not None:
        previous[3] = valid_from  # valid_to of the row written earlier in this batch
    elif incident_id in stored:
        pending.close_stored[incident_id] = (count_before, valid_from)
    # The state's fields are the incidents columns in order (asserted at import).
    record = [version, after.event_count, valid_from, None, env.event_id, *after.__dict__.values()]
    if after.sla_warned or after.sla_breached:
        pending.history.append(record)
    else:
        del record[_SLA_LISTS]  # after valid_to (index 3), which a later event of the batch sets
        pending.history_no_sla.append(record)
    pending.open_history[incident_id] = record
