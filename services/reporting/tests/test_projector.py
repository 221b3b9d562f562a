"""The projector against a real PostgreSQL database: every table it writes, batch by batch."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsledger.bus.consumer import Delivery
from opsledger.db import driver_connection
from reporting import queries
from reporting.domain import GENESIS_HASH, LEGACY_CHAIN, PER_SUBJECT_CHAINS, fold_head
from reporting.projector import Projector
from reporting.store import audit_chains, chain_heads, incident_versions, incidents, positions, timeline
from reporting.versions import stored_positions

from . import factory as f

pytestmark = pytest.mark.integration
Sessions = async_sessionmaker[AsyncSession]


async def apply(db: Sessions, batch: list[Delivery], version: int = 1) -> None:
    """What the consumer runner does with a batch of projection `version`, in one transaction."""
    projector = Projector(version)
    async with db() as session, session.begin():
        await projector(session, batch)
        await projector.save_positions(session, f.last_positions(batch))


async def table_rows(db: Sessions, table: sa.Table, version: int = 1, drop: tuple[str, ...] = ()) -> list[Any]:
    async with db() as session:
        rows = (await session.execute(sa.select(table).where(table.c.version == version))).all()
    return sorted((tuple((k, v) for k, v in r._mapping.items() if k not in ("version", *drop)) for r in rows), key=str)


def interleaved(n: int = 3) -> list[Any]:
    lives = [f.lifecycle(uuid.uuid4()) for _ in range(n)]
    return [env for step in zip(*lives, strict=True) for env in step]


async def test_every_known_event_type_lands_in_incidents_history_and_timeline(reporting_db: Sessions) -> None:
    incident = uuid.uuid4()
    events = f.lifecycle(incident)
    await apply(reporting_db, f.deliveries(events))
    async with reporting_db() as session:
        row = await queries.get_incident(session, 1, incident, None)
        entries = await queries.incident_timeline(session, 1, incident)
        history = (
            await session.execute(
                sa.select(incident_versions.c.seq, incident_versions.c.valid_from, incident_versions.c.valid_to)
                .where(incident_versions.c.incident_id == incident)
                .order_by(incident_versions.c.seq)
            )
        ).all()
    assert row is not None
    assert (row["status"], row["priority"], row["category"], row["assignee"], row["team"]) == (
        "closed", "P1", "Application", "bob", "payments-l2",
    )  # fmt: skip
    assert (row["alert_count"], row["reopen_count"], row["escalation_count"], row["sla_state"]) == (2, 1, 1, "warned")
    assert (row["acknowledged_by"], row["escalation_tier"], row["resolution_code"]) == ("alice", 1, "fixed")
    assert [e["event_type"] for e in entries] == [e.event_type for e in events]
    assert [e["producer"] for e in entries] == [e.producer for e in events]
    assert entries[1]["causation_id"] == events[0].event_id, "triage's decision names its cause"
    assert all(e["decode_status"] == "ok" for e in entries), "every stage's events are read typed"
    assert entries[0]["payload"]["title"] == "HighErrorRate on checkout"
    assert [h.seq for h in history] == list(range(1, len(events) + 1))
    assert all(h.valid_to == nxt.valid_from for h, nxt in itertools.pairwise(history))
    assert history[-1].valid_to is None


async def test_batch_boundaries_do_not_change_the_read_model(reporting_db: Sessions) -> None:
    """One big batch and one event per batch (how a failed batch is retried) give the same rows,
    the same history and the same hash chain."""
    events = f.deliveries(interleaved())
    await apply(reporting_db, events, version=1)
    for d in events:
        await apply(reporting_db, [d], version=2)
    for table in (incidents, incident_versions, timeline, positions, chain_heads, audit_chains):
        assert await table_rows(reporting_db, table, 1) == await table_rows(reporting_db, table, 2), table.name
    async with reporting_db() as session:
        assert (await queries.verify_chain(session, 2))["ok"]
    assert await stored_positions(reporting_db, 1) == {("t.incidents", 0): len(events) - 1}


async def test_every_batch_is_planned_for_the_tables_as_they_are(reporting_db: Sessions) -> None:
    """Under PostgreSQL's default plan_cache_mode (auto) a statement settles on a generic plan after
    five executions. Settled while a fresh version was nearly empty, a batch's lookups by incident
    kept scanning the whole version as it grew (160 ms to 1 s a batch on a fresh `make up` at 200
    alerts/s). Reporting's connections plan every execution for its parameters and tables."""
    for d in f.deliveries(interleaved(4))[:12]:  # one event a batch, as a live consumer often gets them
        await apply(reporting_db, [d])
    async with reporting_db() as session:  # the same pooled connection: nothing else holds one
        conn = await driver_connection(session)
        plans = await conn.fetchrow(
            "SELECT count(*) AS statements, coalesce(sum(generic_plans), 0) AS generic FROM pg_prepared_statements"
            " WHERE cardinality(parameter_types) > 0"  # one without parameters has nothing to plan for
        )
    assert plans["statements"] >= 5, "the projector's statements are prepared on this connection"
    assert plans["generic"] == 0


async def test_a_batch_redelivered_at_the_same_offsets_changes_nothing(reporting_db: Sessions) -> None:
    """What a consumer re-reads after a rebalance (same offsets) is skipped by the positions stored
    with the rows, even without the inbox in front (the projector is called directly here)."""
    events = f.deliveries(interleaved())
    await apply(reporting_db, events[:30])
    snapshot = {t.name: await table_rows(reporting_db, t) for t in (incidents, incident_versions, timeline, positions)}
    await apply(reporting_db, events[10:30])
    assert {t.name: await table_rows(reporting_db, t) for t in (incidents, incident_versions, timeline, positions)} == (
        snapshot
    )
    await apply(reporting_db, events[20:])  # overlaps: only the new tail is applied
    async with reporting_db() as session:
        report = await queries.verify_chain(session, 1)
        row = await queries.get_incident(session, 1, events[0].envelope.incident_id, None)  # type: ignore[arg-type]
    assert report["ok"] and report["entries_checked"] == len(events)
    assert row is not None and row["event_count"] == len(events) // 3


async def test_as_of_returns_the_state_at_several_instants(reporting_db: Sessions) -> None:
    incident = uuid.uuid4()
    await apply(reporting_db, f.deliveries(f.lifecycle(incident)))
    expected = {
        -5: None,  # not logged yet
        0: ("open", None, None),
        0.15: ("open", None, "Application"),
        1: ("open", "P3", "Application"),
        2.5: ("open", "P1", "Application"),
        4: ("assigned", "P1", "Application"),
        10: ("acknowledged", "P1", "Application"),
        45: ("resolved", "P1", "Application"),
        55: ("open", "P1", "Application"),
        500: ("closed", "P1", "Application"),
    }
    async with reporting_db() as session:
        for minute, want in expected.items():
            row = await queries.get_incident(session, 1, incident, f.at(minute))
            got = None if row is None else (row["status"], row["priority"], row["category"])
            assert got == want, f"as_of minute {minute}"
            page, _ = await queries.list_incidents(
                session, 1, queries.IncidentFilter(), "-logged_at", 10, None, f.at(minute)
            )
            assert [r["incident_id"] for r in page] == ([] if want is None else [incident])
        # History rows before the warning leave the SLA lists to the column default; later ones carry them.
        warned = {
            m: (await queries.get_incident(session, 1, incident, f.at(m)) or {}).get("sla_warned") for m in (10, 45)
        }
        assert warned == {10: [], 45: ["resolution"]}


async def test_config_events_and_unknown_events_are_in_the_audit_trail(reporting_db: Sessions) -> None:
    from opsledger.events import new_event
    from opsledger.events.triage import PriorityMatrixChanged

    change = new_event(
        PriorityMatrixChanged(version=2, matrix={"1/1": "P1"}, comment="tighter"),
        producer="triage", actor="admin", subject="priority-matrix",
    )  # fmt: skip
    incident, broken = uuid.uuid4(), uuid.uuid4()
    newer = f.foreign("IncidentLogged", incident, 1, {"anything": "goes"}, version=7, producer="intake")
    # A known type at a known version whose payload does not match its schema.
    invalid = f.foreign("IncidentLogged", broken, 2, {"title": 5}, version=2, producer="intake")
    await apply(reporting_db, f.deliveries([change, newer, invalid]))
    rows = await table_rows(reporting_db, timeline)
    by_type = {dict(r)["subject"]: dict(r) for r in rows}
    assert by_type["priority-matrix"]["actor"] == "admin" and by_type["priority-matrix"]["incident_id"] is None
    assert by_type[str(incident)]["decode_status"] == "newer_version"
    assert by_type[str(broken)]["decode_status"] == "invalid_payload"
    assert orjson.loads(by_type[str(broken)]["payload"]) == {"title": 5}, "kept as it was on the log"
    async with reporting_db() as session:
        row = await queries.get_incident(session, 1, incident, None)
    assert row is not None and row["status"] == "unknown" and row["event_count"] == 1


async def test_verify_names_the_row_altered_in_the_database(reporting_db: Sessions) -> None:
    events = f.deliveries(interleaved())
    await apply(reporting_db, events)
    async with reporting_db() as session:
        intact = await queries.verify_chain(session, 1)
        assert intact["ok"] and intact["entries_checked"] == len(events)
    async with reporting_db() as session, session.begin():
        await session.execute(sa.text("UPDATE timeline SET actor = 'mallory' WHERE version = 1 AND seq = 17"))
    async with reporting_db() as session:
        report = await queries.verify_chain(session, 1)
    assert not report["ok"] and report["first_mismatch"]["seq"] == 17 and report["entries_checked"] == 16


async def test_list_pages_and_as_of_are_read_through_indexes(reporting_db: Sessions) -> None:
    """Every sort of the incident list is an index range scan (no sort of the whole table), and
    `as_of` finds the history rows valid at that instant through the range index. With sequential
    scans priced out, a plan with a Sort node or a Seq Scan means a query no longer matches its
    index (e.g. a sort constant sent as a bind parameter)."""
    await apply(reporting_db, f.deliveries(interleaved()))
    captured: list[tuple[str, Any]] = []
    engine = reporting_db.kw["bind"]

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        captured.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with reporting_db() as session:
            await session.execute(sa.text("SET enable_seqscan = off"))
            raw = await driver_connection(session)
            cases = [(sort, None) for sort in ("logged_at", "-occurred_at", "last_event_at", "-priority")]
            cases.append(("-logged_at", f.at(10)))
            for sort, as_of in cases:
                captured.clear()
                _, cursor = await queries.list_incidents(session, 1, queries.IncidentFilter(), sort, 1, None, as_of)
                await queries.list_incidents(session, 1, queries.IncidentFilter(), sort, 1, cursor, as_of)
                statement, parameters = captured[-1]  # the second page: the keyset condition too
                plan = "\n".join(r[0] for r in await raw.fetch("EXPLAIN " + statement, *parameters))
                assert "Seq Scan" not in plan, (sort, as_of, plan)
                if as_of is None:
                    assert "Sort" not in plan, (sort, plan)
                else:
                    assert "incident_versions_valid" in plan, plan
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", capture)


async def test_each_incident_has_its_own_chain_and_the_head_chains_them(reporting_db: Sessions) -> None:
    """An entry links to the entry before it of the same incident (its timeline is a chain on its
    own); the version's head folds every entry's hash in, in applied order."""
    events = f.deliveries(interleaved())
    await apply(reporting_db, events[:20])
    await apply(reporting_db, events[20:])
    async with reporting_db() as session:
        report = await queries.verify_chain(session, 1)
        for incident in {d.envelope.incident_id for d in events}:
            entries = await queries.incident_timeline(session, 1, incident)  # type: ignore[arg-type]
            assert entries[0]["prev_hash"] == GENESIS_HASH
            assert [e["prev_hash"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
        rows = (
            await session.execute(sa.select(timeline).where(timeline.c.version == 1).order_by(timeline.c.seq))
        ).all()
        heads = {r.subject: (r.seq, r.hash) for r in await session.execute(sa.select(audit_chains))}
        head = (await session.execute(sa.select(chain_heads))).one()
    top = GENESIS_HASH
    for r in rows:
        top = fold_head(top, r.hash)
    assert report == {"ok": True, "version": 1, "entries_checked": len(events), "head_hash": top}
    assert (head.seq, head.hash, head.scheme) == (len(events), top, PER_SUBJECT_CHAINS)
    assert heads == {r.subject: (r.seq, r.hash) for r in rows}, "each chain's head is its last entry"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("UPDATE timeline SET payload = '{\"forged\": true}' WHERE version = 1 AND seq = 11", "content"),
        ("UPDATE timeline SET occurred_at = occurred_at + interval '1 second'"
         " WHERE version = 1 AND seq = 11", "content"),
        ("UPDATE timeline SET prev_hash = (SELECT hash FROM timeline WHERE version = 1 AND seq = 10)"
         " WHERE version = 1 AND seq = 11", "prev_hash"),
        ("DELETE FROM timeline WHERE version = 1 AND seq = 11", "missing"),
    ],
)  # fmt: skip
async def test_verify_names_the_first_altered_entry_of_any_chain(
    reporting_db: Sessions, change: str, problem: str
) -> None:
    """With a chain per incident, an altered, relinked or deleted entry is still named, by its
    place in the applied order, and nothing after it counts as checked."""
    events = f.deliveries(interleaved())
    await apply(reporting_db, events)
    async with reporting_db() as session, session.begin():
        victim = (await session.execute(sa.select(timeline).where(timeline.c.version == 1, timeline.c.seq == 11))).one()
        await session.execute(sa.text(change))
    async with reporting_db() as session:
        report = await queries.verify_chain(session, 1)
    assert not report["ok"] and report["entries_checked"] == 10
    mismatch = report["first_mismatch"]
    assert problem in mismatch["problem"]
    if problem == "missing":
        assert mismatch["seq"] == 12
    else:
        assert (mismatch["seq"], mismatch["event_id"]) == (11, str(victim.event_id))
        assert mismatch["incident_id"] == str(victim.incident_id)


async def test_verify_notices_an_altered_or_truncated_head(reporting_db: Sessions) -> None:
    events = f.deliveries(interleaved())
    await apply(reporting_db, events)
    async with reporting_db() as session, session.begin():
        await session.execute(sa.text("UPDATE chain_heads SET hash = repeat('1', 64) WHERE version = 1"))
    async with reporting_db() as session:
        report = await queries.verify_chain(session, 1)
    assert not report["ok"] and report["entries_checked"] == len(events)
    assert "head" in report["first_mismatch"]["problem"]
    async with reporting_db() as session, session.begin():
        last = len(events)
        await session.execute(sa.text(f"DELETE FROM timeline WHERE version = 1 AND seq = {last}"))
    async with reporting_db() as session:
        report = await queries.verify_chain(session, 1)
    assert not report["ok"] and report["first_mismatch"]["seq"] == last


async def test_a_version_chained_before_revision_0004_keeps_its_single_chain(reporting_db: Sessions) -> None:
    """A version made before per-incident chains (scheme 1) is appended to and verified as one
    chain through every entry, as it was written."""
    events = f.deliveries(interleaved())
    async with reporting_db() as session, session.begin():
        await session.execute(chain_heads.insert().values(version=1, seq=0, hash=GENESIS_HASH, scheme=LEGACY_CHAIN))
    await apply(reporting_db, events[:15])
    await apply(reporting_db, events[15:])
    async with reporting_db() as session:
        rows = (
            await session.execute(sa.select(timeline).where(timeline.c.version == 1).order_by(timeline.c.seq))
        ).all()
        report = await queries.verify_chain(session, 1)
    assert [r.prev_hash for r in rows] == [GENESIS_HASH, *(r.hash for r in rows[:-1])]
    assert report == {"ok": True, "version": 1, "entries_checked": len(events), "head_hash": rows[-1].hash}
    async with reporting_db() as session, session.begin():
        await session.execute(sa.text("UPDATE timeline SET actor = 'mallory' WHERE version = 1 AND seq = 17"))
    async with reporting_db() as session:
        report = await queries.verify_chain(session, 1)
    assert not report["ok"] and report["first_mismatch"]["seq"] == 17 and report["entries_checked"] == 16


async def test_what_a_projector_keeps_in_memory_never_outlives_the_database(reporting_db: Sessions) -> None:
    """A projector reuses the states and chain heads its last batch wrote only while the version's
    head is where it left it: after another writer's batch, or its own batch rolled back, it reads
    them again. Either way the rows are those of one projector applying everything."""
    events = f.deliveries(interleaved())
    reference = Projector(2)
    async with reporting_db() as session, session.begin():
        await reference(session, events)
        await reference.save_positions(session, f.last_positions(events))

    first, second = Projector(1), Projector(1)

    async def run(projector: Projector, batch: list[Delivery], commit: bool = True) -> None:
        async with reporting_db() as session:
            transaction = await session.begin()
            await projector(session, batch)
            await projector.save_positions(session, f.last_positions(batch))
            await (transaction.commit() if commit else transaction.rollback())

    await run(first, events[:8])
    await run(second, events[8:14])  # another replica's batch: first's memory is stale now
    await run(first, events[14:20])
    await run(first, events[20:26], commit=False)  # rolled back: its memory is ahead of the database
    await run(first, events[20:26])
    await run(first, events[26:])
    for table in (incidents, incident_versions, timeline, positions, chain_heads, audit_chains):
        assert await table_rows(reporting_db, table, 1) == await table_rows(reporting_db, table, 2), table.name
    async with reporting_db() as session:
        assert (await queries.verify_chain(session, 1))["ok"]
