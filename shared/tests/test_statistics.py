"""Planner statistics kept up with a young database (opsledger.statistics), on the real PostgreSQL:
a table is analysed once it holds enough rows and has doubled since its statistics, and a plan
cached while it was empty stops reading it whole."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from opsledger import statistics
from opsledger.db import make_engine
from opsledger.settings import ServiceSettings
from opsledger.statistics import MIN_ROWS, analyze_lagging, keep_statistics
from opsledger.testing import TestInfra, eventually

pytestmark = pytest.mark.integration
# Out of autovacuum's reach: an analysis of its own between two steps would change what they see.
MARKS = "CREATE TABLE marks (id BIGINT PRIMARY KEY, payload TEXT, sent BOOLEAN) WITH (autovacuum_enabled = false)"


async def fill(conn: asyncpg.Connection, rows: range) -> None:
    """Insert `rows` and have the session's counts reach the statistics at once, not within a second."""
    await conn.execute(
        "INSERT INTO marks (id, payload) SELECT n, repeat('x', 200) FROM unnest($1::bigint[]) AS n", rows
    )
    await conn.execute("SELECT pg_stat_force_next_flush()")


async def test_a_table_is_analysed_once_big_enough_and_again_once_doubled(make_database: Callable[..., Any]) -> None:
    url = await make_database()
    engine = make_engine(ServiceSettings(database_url=url))
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.execute(MARKS)
        await conn.execute("CREATE TABLE settings_like (id INT PRIMARY KEY)")
        await conn.execute("INSERT INTO settings_like SELECT generate_series(1, 10)")
        await fill(conn, range(1, MIN_ROWS // 2))
        # Below MIN_ROWS: left to autovacuum (a one-row lease table changes all the time).
        assert await analyze_lagging(engine) == []

        await fill(conn, range(MIN_ROWS // 2, MIN_ROWS + 100))
        assert await eventually(lambda: analyze_lagging(engine), what="the grown table analysed") == ["public.marks"]
        assert await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'marks'") == MIN_ROWS + 99
        assert await analyze_lagging(engine) == [], "its statistics are fresh"

        await fill(conn, range(MIN_ROWS + 100, 2 * MIN_ROWS))
        assert await analyze_lagging(engine) == [], "grown by less than it held"
        await fill(conn, range(2 * MIN_ROWS, 3 * MIN_ROWS))
        assert await eventually(lambda: analyze_lagging(engine), what="the doubled table analysed") == ["public.marks"]
    finally:
        await conn.close()
        await engine.dispose()


async def test_a_generic_plan_made_on_an_empty_table_is_replaced_once_it_is_analysed(
    make_database: Callable[..., Any],
) -> None:
    """As the relay's "mark sent" statement: prepared while the table was a page long, it went on
    reading the whole table as it grew, until its statistics changed."""
    url = await make_database()
    engine = make_engine(ServiceSettings(database_url=url))
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        await conn.execute(MARKS)
        await fill(conn, range(1, 20))
        await conn.execute("ANALYZE marks")  # as autovacuum finds an outbox a minute after start
        await conn.execute("PREPARE mark(bigint[]) AS UPDATE marks SET sent = true WHERE id = ANY($1)")

        async def plan() -> str:
            return "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE mark('{5,6,7}')"))

        assert "Seq Scan" in await plan(), "planned for a table a page long"
        await fill(conn, range(20, 20 * MIN_ROWS))
        assert "Seq Scan" in await plan(), "and kept so while the table grew"

        await eventually(lambda: analyze_lagging(engine), what="the grown table analysed")
        assert "Index Scan" in await plan() and "Seq Scan" not in await plan()
    finally:
        await conn.close()
        await engine.dispose()


async def test_a_database_out_of_reach_is_reported_once_and_its_return_once(
    infra: TestInfra,
    make_database: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The keeper looks every few milliseconds here at a database that does not exist yet: a warning
    for its first failed look, nothing for the many after it, one line once it can look again."""
    looks: list[bool] = []

    async def counted(engine: Any) -> list[str]:
        try:
            tables = await analyze_lagging(engine)
        except Exception:
            looks.append(False)
            raise
        looks.append(True)
        return tables

    monkeypatch.setattr(statistics, "analyze_lagging", counted)
    name = infra.unique("db_later_")
    engine = make_engine(ServiceSettings(database_url=infra.database_url(name)))
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger=statistics.__name__)
    keeper = asyncio.create_task(keep_statistics(engine, stop, every_seconds=0.01))
    try:

        async def failed_looks() -> bool:
            return looks.count(False) >= 5

        await eventually(failed_looks, what="five failed looks")
        await make_database(name)

        async def looked_again() -> bool:
            return bool(looks) and looks[-1]

        await eventually(looked_again, what="a look at the database once it exists")
    finally:
        stop.set()
        await keeper
        await engine.dispose()
    reports = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == statistics.__name__]
    assert [level for level, _ in reports] == [logging.WARNING, logging.INFO], reports
    assert "again" in reports[1][1]
