"""db.write_rows and db.driver_fetch against the real PostgreSQL: many rows in one statement
through unnest, read back as SQLAlchemy would have written them; driver statements that belong to
the session's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import create_async_engine

from opsledger.db import combined_writes, driver_fetch, execute_write, make_sessionmaker, write_rows

pytestmark = pytest.mark.integration

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("thing_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("seen_at", sa.DateTime(timezone=True)),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("body", pg.JSONB),  # None is JSON null, as SQLAlchemy writes it
    sa.Column("extra", pg.JSONB(none_as_null=True)),  # None is SQL NULL
    sa.Column("tags", pg.ARRAY(sa.Text)),
)


async def test_rows_are_upserted_in_one_statement_and_read_back_as_written(make_database: Callable[..., Any]) -> None:
    engine = create_async_engine(await make_database())
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    sessions = make_sessionmaker(engine)
    a, b = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 11, 30, 9, 15, 0, 123456, tzinfo=UTC)
    first = [
        {"thing_id": a, "name": "a", "seen_at": at, "count": 1, "body": {"k": [1, "x"], "7": None}, "extra": None},
        {"thing_id": b, "name": "b", "seen_at": None, "count": 2, "body": None, "extra": {"e": True}},
    ]
    async with sessions() as session, session.begin():
        await write_rows(session, things, first, key=["thing_id"])
    again = [{"thing_id": a, "name": "a2", "seen_at": None, "count": 5, "body": [], "extra": "s"}]
    async with sessions() as session, session.begin():
        await write_rows(session, things, again, key=["thing_id"])  # no update: the row stays
        await write_rows(
            session, things, again, key=["thing_id"], update=["name"], constants={"count": "things.count + 10"}
        )
    async with engine.connect() as conn:
        rows = {r.thing_id: r for r in (await conn.execute(sa.select(things))).all()}
        nulls = dict((await conn.execute(sa.text("SELECT name, body IS NULL FROM things"))).all())
    await engine.dispose()
    assert rows[a].name == "a2" and rows[a].count == 11, "updated columns and constants; the rest kept"
    assert rows[a].seen_at == at and rows[a].body == {"k": [1, "x"], "7": None} and rows[a].extra is None
    assert rows[b].seen_at is None and rows[b].body is None and rows[b].extra == {"e": True}
    assert nulls == {"a2": False, "b": False}, "None in a plain JSON column is JSON null, as SQLAlchemy writes it"


async def test_an_array_column_is_refused_before_anything_is_sent(make_database: Callable[..., Any]) -> None:
    engine = create_async_engine(await make_database())
    try:
        async with make_sessionmaker(engine)() as session:
            with pytest.raises(ValueError, match=r"things\.tags"):
                await write_rows(session, things, [{"thing_id": uuid.uuid4(), "tags": ["x"]}])
    finally:
        await engine.dispose()


async def test_driver_fetch_runs_in_the_sessions_transaction_first_or_not(make_database: Callable[..., Any]) -> None:
    """The first statement goes through SQLAlchemy (which begins the transaction with it), later
    ones straight to the driver: both roll back with the session, and both commit with it."""
    engine = create_async_engine(await make_database())
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE marks (n int PRIMARY KEY)"))
    sessions = make_sessionmaker(engine)
    insert = "INSERT INTO marks (n) SELECT unnest($1::int[]) RETURNING n"
    async with sessions() as session:
        async with session.begin():
            assert [r[0] for r in await driver_fetch(session, insert, [1, 2])] == [1, 2]
            assert [r[0] for r in await driver_fetch(session, insert, [3])] == [3]
            await session.rollback()
        async with session.begin():
            await driver_fetch(session, insert, [4])
            await driver_fetch(session, insert, [5])
    async with engine.connect() as conn:
        kept = list((await conn.execute(sa.text("SELECT n FROM marks ORDER BY n"))).scalars())
    await engine.dispose()
    assert kept == [4, 5]


async def test_held_writes_go_as_one_statement_until_a_table_repeats_or_a_read_comes(
    make_database: Callable[..., Any],
) -> None:
    """Each row notes the statement that wrote it (statement_timestamp() differs between two)."""
    engine = create_async_engine(await make_database())
    async with engine.begin() as conn:
        for table in ("notes", "pins"):
            columns = "n int, s text, at timestamptz DEFAULT statement_timestamp()"
            await conn.execute(sa.text(f"CREATE TABLE {table} ({columns})"))
    sessions = make_sessionmaker(engine)
    note, pin = "INSERT INTO notes (n, s) VALUES ($1, $2)", "INSERT INTO pins (s, n) VALUES ($1, $2)"
    async with sessions() as session, session.begin():
        await driver_fetch(session, "SELECT 1")
        async with combined_writes(session):
            await execute_write(session, note, 1, "a")
            await execute_write(session, pin, "b", 2)  # its $1 and $2 follow the note's
            await execute_write(session, note, 3, "c")  # notes again: the two above go first
            await execute_write(session, pin, "d", 4)
            seen = [r[0] for r in await driver_fetch(session, "SELECT n FROM notes UNION ALL SELECT n FROM pins")]
            async with combined_writes(session):  # nested: the outer block's
                await execute_write(session, note, 5, "e")
            # A WITH query that writes cannot sit inside another: it goes in turn, after what is held.
            two_writes = "WITH x AS (DELETE FROM pins WHERE n = $1) DELETE FROM notes WHERE n = $2"
            await execute_write(session, two_writes, 0, 0)
            await execute_write(session, pin, "f", 6)  # both sent when the outer block ends
        with pytest.raises(RuntimeError):
            async with combined_writes(session):
                await execute_write(session, note, 7, "g")
                raise RuntimeError("the unit fails")
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT n, s, at FROM notes UNION ALL SELECT n, s, at FROM pins"))).all()
    await engine.dispose()
    assert sorted(seen) == [1, 2, 3, 4], "a read sends what is held first"
    written = {n: (s, at) for n, s, at in rows}
    assert {n: s for n, (s, _) in written.items()} == {1: "a", 2: "b", 3: "c", 4: "d", 5: "e", 6: "f"}, (
        "each parameter lands where its own statement put it; a block that raised sends nothing"
    )
    statement = {n: at for n, (_, at) in written.items()}
    assert statement[1] == statement[2] != statement[3] == statement[4] != statement[5] != statement[6]
