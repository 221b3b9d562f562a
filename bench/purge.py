"""Outbox purge benchmark: what one purge by the relay costs against an outbox holding a day of
sent rows (kept for inspection), at several table sizes, with a single statement deleting by
`sent_at` over the whole table measured beside it on the same rows (what the purge was before).

Each size is filled with rows of a typical event's size (1 kB), sent evenly over the past day and
ten seconds, so a purge finds ten seconds of rows past the day, as it does when it runs every few
seconds under steady load. Prints the rows deleted and the milliseconds each way took (the median
of --runs, the table refilled between runs): the purge with all its statements (the inbox's and
the backlog gauge's too), the whole-table statement alone.

    .venv/bin/python bench/purge.py [--rows 100000,1000000] [--runs 3]
Needs PostgreSQL: OPSLEDGER_TEST_POSTGRES (what `make test` starts); creates its own database."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg

from opsledger.bus.outbox import Outbox, OutboxRelay
from opsledger.db import backbone_metadata, make_engine, make_sessionmaker
from opsledger.settings import ServiceSettings
from opsledger.testing import TestInfra

DAY_AND_TEN_SECONDS = 86_410.0
FILL = (
    "INSERT INTO outbox (event_id, topic, key, value, event_type, created_at, sent_at)"
    " SELECT gen_random_uuid(), 'opsledger.incidents', 'k', convert_to(repeat('x', 1000), 'UTF8'), 'IncidentLogged',"
    " at, at FROM (SELECT now() - make_interval(secs => $2 * (1 - g::float8 / $1)) AS at"
    " FROM generate_series(1, $1) AS g) AS s"
)
WHOLE_TABLE = "DELETE FROM outbox WHERE sent_at < now() - interval '1 day'"


async def refill(conn: asyncpg.Connection, rows: int) -> None:
    await conn.execute("TRUNCATE outbox RESTART IDENTITY")
    await conn.execute(FILL, rows, DAY_AND_TEN_SECONDS)
    await conn.execute("VACUUM ANALYZE outbox")  # as a long-lived table is


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    infra = TestInfra.from_env()
    name = infra.unique("bench_purge_")
    url = await infra.create_database(name)
    engine = make_engine(ServiceSettings(database_url=url))
    lines = []
    try:
        async with engine.begin() as conn:
            await conn.run_sync(backbone_metadata.create_all)
        settings = ServiceSettings(database_url=url)
        relay = OutboxRelay(settings, make_sessionmaker(engine), None, Outbox(settings))  # type: ignore[arg-type]
        await relay._maybe_purge()  # the pool's connection opened, not timed below
        conn = await asyncpg.connect(f"{infra.postgres_dsn}/{name}")
        try:
            for rows in (int(r) for r in args.rows.split(",")):
                purge_ms, whole_ms, deleted = [], [], set()
                for _ in range(args.runs):
                    await refill(conn, rows)
                    started = time.perf_counter()
                    status = await conn.execute(WHOLE_TABLE)
                    whole_ms.append((time.perf_counter() - started) * 1000)
                    deleted.add(int(status.split()[-1]))
                    await refill(conn, rows)
                    relay._purge_countdown = 1  # this pass purges
                    before = await conn.fetchval("SELECT count(*) FROM outbox")
                    started = time.perf_counter()
                    await relay._maybe_purge()
                    purge_ms.append((time.perf_counter() - started) * 1000)
                    deleted.add(before - await conn.fetchval("SELECT count(*) FROM outbox"))
                lines.append(
                    f"{rows:>10,} {'/'.join(map(str, sorted(deleted))):>8}"
                    f" {statistics.median(purge_ms):>12.1f} {statistics.median(whole_ms):>14.1f}"
                )
        finally:
            await conn.close()
    finally:
        await engine.dispose()
        await infra.drop_database(name)
    print(f"{'outbox rows':>10} {'deleted':>8} {'purge ms':>12} {'whole-table ms':>14}")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
