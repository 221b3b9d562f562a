"""Id benchmark: what random (v4) and time-ordered (v7, opsledger.ids) ids cost a table keyed by
them, as the per-incident tables and the inboxes are. For each size, a table with a UUID primary
key and a 300-byte column is filled to that many rows, checkpointed (as the server does every few
minutes), then takes --inserts more rows in statements of --batch (one group commit's worth), each
committed. Prints the rows inserted per second, the WAL written per row (full-page images of the
pages first touched after the checkpoint are most of the difference) and the index's size.

    .venv/bin/python bench/ids.py [--rows 200000,2000000] [--inserts 50000] [--batch 20]
Needs PostgreSQL: OPSLEDGER_TEST_POSTGRES (what `make test` starts); creates its own database."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable

import asyncpg

from opsledger.ids import uuid7
from opsledger.testing import TestInfra

PAD = "x" * 300
KINDS: dict[str, Callable[[], uuid.UUID]] = {"uuid4 (random)": uuid.uuid4, "uuid7 (time-ordered)": uuid7}


async def measure(conn: asyncpg.Connection, mint: Callable[[], uuid.UUID], rows: int, inserts: int, batch: int) -> str:
    await conn.execute("DROP TABLE IF EXISTS keyed; CREATE TABLE keyed (id uuid PRIMARY KEY, v text NOT NULL)")
    for start in range(0, rows, 10_000):
        fill = [(mint(), PAD) for _ in range(min(10_000, rows - start))]
        await conn.copy_records_to_table("keyed", records=fill)
    await conn.execute("CHECKPOINT")
    wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
    started = time.perf_counter()
    for _ in range(0, inserts, batch):
        await conn.execute("INSERT INTO keyed SELECT unnest($1::uuid[]), $2", [mint() for _ in range(batch)], PAD)
    seconds = time.perf_counter() - started
    wal = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", wal_before)
    index_mb = await conn.fetchval("SELECT pg_relation_size('keyed_pkey')") / 1e6
    return f"{inserts / seconds:>10,.0f} {wal / inserts:>12,.0f} {index_mb:>10.0f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="200000,2000000")
    parser.add_argument("--inserts", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    infra = TestInfra.from_env()
    name = infra.unique("bench_ids_")
    await infra.create_database(name)
    lines = []
    try:
        conn = await asyncpg.connect(f"{infra.postgres_dsn}/{name}")
        try:
            for rows in (int(r) for r in args.rows.split(",")):
                for kind, mint in KINDS.items():
                    lines.append(f"{kind:<22} {rows:>10,} {await measure(conn, mint, rows, args.inserts, args.batch)}")
        finally:
            await conn.close()
    finally:
        await infra.drop_database(name)
    print(f"{'ids':<22} {'rows':>10} {'inserts/s':>10} {'WAL B/row':>12} {'index MB':>10}")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
